/* cext_driver.h: the CUDA driver entry points the test extensions call themselves (bn_cext.c, bn_cext_v3.c),
 * resolved with dlsym from the libcuda.so.1 cybn already loaded (RTLD_NOLOAD), and their error helpers.
 * Static: each extension gets its own copy. Include after Python.h, cuda.h and cybn.h. */
#ifndef CEXT_DRIVER_H
#define CEXT_DRIVER_H
#include <dlfcn.h>

typedef CUresult (*ctx_create_v2_t)(CUcontext *, unsigned int, CUdevice);

static struct {
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*PrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*PrimaryCtxRelease)(CUdevice);
    CUresult (*CtxSetCurrent)(CUcontext);
    CUresult (*CtxGetCurrent)(CUcontext *);
    ctx_create_v2_t CtxCreate;
    CUresult (*CtxDestroy)(CUcontext);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
    CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
    CUresult (*StreamCreate)(CUstream *, unsigned int);
    CUresult (*StreamSynchronize)(CUstream);
    CUresult (*StreamDestroy)(CUstream);
} drv;

/* Resolve the driver entry points (after cybn_prepare, which loaded and initialised the driver). */
static int load_driver(void)
{
    void *h;
    if (drv.StreamDestroy)
        return 0;
    h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        PyErr_Format(PyExc_RuntimeError, "libcuda.so.1 is not loaded: %s", dlerror());
        return -1;
    }
#define SYM(field, name)                                                                   \
    do {                                                                                   \
        *(void **)&drv.field = dlsym(h, name);                                             \
        if (!drv.field) {                                                                  \
            PyErr_Format(PyExc_RuntimeError, "libcuda.so.1 has no %s", name);               \
            return -1;                                                                     \
        }                                                                                  \
    } while (0)
    SYM(DeviceGet, "cuDeviceGet");
    SYM(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    SYM(PrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    SYM(CtxSetCurrent, "cuCtxSetCurrent");
    SYM(CtxGetCurrent, "cuCtxGetCurrent");
    SYM(CtxCreate, "cuCtxCreate_v2");
    SYM(CtxDestroy, "cuCtxDestroy_v2");
    SYM(MemAlloc, "cuMemAlloc_v2");
    SYM(MemFree, "cuMemFree_v2");
    SYM(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
    SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
    SYM(MemsetD8Async, "cuMemsetD8Async");
    SYM(StreamCreate, "cuStreamCreate");
    SYM(StreamSynchronize, "cuStreamSynchronize");
    SYM(StreamDestroy, "cuStreamDestroy_v2");  /* the last one: load_driver's "done" mark */
#undef SYM
    return 0;
}

static PyObject *cuda_fail(const char *call, CUresult r)
{
    PyErr_Format(PyExc_RuntimeError, "%s failed: CUresult %d", call, (int)r);
    return NULL;
}

static PyObject *bn_fail(const char *call, int st)
{
    PyErr_Format(PyExc_RuntimeError, "%s returned %d: %s", call, st, cybn_last_error());
    return NULL;
}

#endif /* CEXT_DRIVER_H */
