/* cext_driver.h: the CUDA driver entry points the test extensions call themselves (bn_cext.c, bn_cext_v3.c),
 * resolved with dlsym from the libcuda.so.1 cybn already loaded (RTLD_NOLOAD), their error helpers, and the
 * set-up and tear-down of one run (context, stream, buffers, results) they share.
 * Static: each extension gets its own copy. Include after Python.h, cuda.h and cybn.h. */
#ifndef CEXT_DRIVER_H
#define CEXT_DRIVER_H
#include <dlfcn.h>
#include <string.h>

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

/* One run: cybn's primary context current on this thread, a stream of the extension's own, device buffers. */
typedef struct {
    CUdevice dev;
    int retained;
    CUstream stream;
} cext_run;

/* static inline: an extension that includes this header but uses none of these still builds under -Werror. */
/* Without the GIL: the context and a non-blocking stream, buf[i] of bytes[i] (0: none, left 0), the first nin
 * filled from in[i] on the stream. Returns the failing driver call's name (its CUresult in *r), or NULL. */
static inline const char *cext_begin(cext_run *run, CUdeviceptr *buf, const size_t *bytes, int nbuf, const Py_buffer *in,
                              int nin, CUresult *r)
{
    CUcontext ctx;
    int i;
    memset(run, 0, sizeof(*run));
    if ((*r = drv.DeviceGet(&run->dev, 0)) != CUDA_SUCCESS) return "cuDeviceGet";
    if ((*r = drv.PrimaryCtxRetain(&ctx, run->dev)) != CUDA_SUCCESS) return "cuDevicePrimaryCtxRetain";
    run->retained = 1;
    if ((*r = drv.CtxSetCurrent(ctx)) != CUDA_SUCCESS) return "cuCtxSetCurrent";
    if ((*r = drv.StreamCreate(&run->stream, CU_STREAM_NON_BLOCKING)) != CUDA_SUCCESS) return "cuStreamCreate";
    for (i = 0; i < nbuf; i++)
        if (bytes[i] && (*r = drv.MemAlloc(&buf[i], bytes[i])) != CUDA_SUCCESS) return "cuMemAlloc";
    for (i = 0; i < nin; i++)
        if (bytes[i] && (*r = drv.MemcpyHtoDAsync(buf[i], in[i].buf, bytes[i], run->stream)) != CUDA_SUCCESS)
            return "cuMemcpyHtoD";
    return NULL;
}

/* {names[k]: the bytes of buf[ids[k]]} for every buffer that exists, copied back on the run's stream; NULL with
 * an exception set on failure. */
static inline PyObject *cext_results(const cext_run *run, const CUdeviceptr *buf, const size_t *bytes, const int *ids,
                              const char *const *names, int n)
{
    CUresult r = CUDA_SUCCESS;
    PyObject *result = PyDict_New();
    int k;
    for (k = 0; result && k < n; k++) {
        PyObject *host;
        if (!bytes[ids[k]])
            continue;
        host = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bytes[ids[k]]);
        if (!host || (r = drv.MemcpyDtoHAsync(PyBytes_AS_STRING(host), buf[ids[k]], bytes[ids[k]], run->stream)) !=
                         CUDA_SUCCESS ||
            (r = drv.StreamSynchronize(run->stream)) != CUDA_SUCCESS || PyDict_SetItemString(result, names[k], host) < 0) {
            if (host && !PyErr_Occurred())
                cuda_fail("cuMemcpyDtoHAsync", r);
            Py_XDECREF(host);
            Py_CLEAR(result);
            break;
        }
        Py_DECREF(host);
    }
    return result;
}

/* Whatever cext_begin reached, undone: synchronise, free the buffers, destroy the stream, release the context. */
static inline void cext_end(cext_run *run, CUdeviceptr *buf, int nbuf)
{
    int i;
    if (run->stream)
        drv.StreamSynchronize(run->stream);
    for (i = 0; i < nbuf; i++)
        if (buf[i]) drv.MemFree(buf[i]);
    if (run->stream)
        drv.StreamDestroy(run->stream);
    if (run->retained)
        drv.PrimaryCtxRelease(run->dev);
}

#endif /* CEXT_DRIVER_H */
