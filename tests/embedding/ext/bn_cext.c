/* A tiny C (and C++: the same file is also built with c++) extension that uses cybn's BatchNorm through
 * the C API only: cybn.h + the capsule cybn._C_API. Its buffers, stream and context calls go through the
 * CUDA driver API itself, resolved with dlsym from the libcuda.so.1 cybn already loaded (RTLD_NOLOAD),
 * so the extension uses whichever driver cybn chose (the software GPU here) and needs no link-time
 * libcuda. cuda.h comes from the nvidia-cuda-runtime wheel, only for the types and prototypes.
 *
 * BN_CEXT_NAME sets the module name (the version-mismatch test builds it against an older header). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <cuda.h>
#include "cybn.h"

#ifndef BN_CEXT_NAME
#define BN_CEXT_NAME bn_cext
#endif
#define STR2(x) #x
#define STR(x) STR2(x)
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

#include "cext_driver.h"

/* The buffers of one run: device copies of the inputs, outputs, statistics and gradients. */
enum { X, SCALE, BIAS, RM, RV, DY, Y, SM, SI, DX, SG, BG, YI, DXI, SGI, BGI, WS, NBUF };
/* Outputs, and the running statistics the training forward updated. */
static const int out_ids[] = {Y, SM, SI, DX, SG, BG, YI, DXI, SGI, BGI, RM, RV};
static const char *const out_names[] = {"y", "save_mean", "save_invstd", "dx", "scale_grad", "bias_grad",
                                        "y_infer", "dx_infer", "scale_grad_infer", "bias_grad_infer",
                                        "running_mean", "running_var"};
#define NOUT ((int)(sizeof(out_ids) / sizeof(out_ids[0])))

/* run(mode, dtype, N, C, S, epsilon, factor, affine, x, scale, bias, running_mean, running_var, dy)
 * (buffers: bytes-like host data) -> dict of bytes: forward_train, backward, then forward_infer and
 * backward_infer with the updated running statistics, all on a stream of its own, GIL released. */
static PyObject *run(PyObject *self, PyObject *args)
{
    int mode, dtype, affine, st = CYBN_OK, i;
    long long N, C, S;
    float eps, factor;
    Py_buffer in[6];
    cext_run run;
    CUstream stream;
    CUdeviceptr buf[NBUF];
    size_t bytes[NBUF];
    uint64_t ws_bytes = 0;
    cybn_desc d;
    CUresult r = CUDA_SUCCESS;
    const char *failed = NULL;
    PyObject *result = NULL;
    (void)self;
    memset(in, 0, sizeof(in));
    memset(buf, 0, sizeof(buf));
    memset(&run, 0, sizeof(run));
    if (!PyArg_ParseTuple(args, "iiLLLffpy*y*y*y*y*y*", &mode, &dtype, &N, &C, &S, &eps, &factor, &affine,
                          &in[0], &in[1], &in[2], &in[3], &in[4], &in[5]))
        return NULL;
    if (cybn_prepare(dtype, mode) != CYBN_OK || load_driver() < 0)
        goto release;
    st = cybn_desc_init(&d, mode, dtype, N, C, S, eps, factor, affine ? CYBN_AFFINE : 0);
    if (st == CYBN_OK)
        st = cybn_workspace_size(&d, &ws_bytes);
    if (st != CYBN_OK) {
        bn_fail("desc_init/workspace_size", st);
        goto release;
    }
    {
        size_t data = (size_t)(N * C * S) * (dtype == CYBN_FLOAT16 ? 2 : 4);
        size_t stats = (size_t)(mode == CYBN_SPATIAL ? C : C * S) * 4;
        for (i = 0; i < NBUF; i++)
            bytes[i] = (i == X || i == DY || i == Y || i == DX || i == YI || i == DXI) ? data : stats;
        bytes[WS] = (size_t)ws_bytes;
        for (i = 0; i < 6; i++) {
            if ((size_t)in[i].len != bytes[i]) {
                PyErr_Format(PyExc_ValueError, "input %d has %zd bytes, expected %zu", i, in[i].len, bytes[i]);
                goto release;
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    /* The primary context (cybn's) current on this thread, then a stream and buffers of our own. */
    failed = cext_begin(&run, buf, bytes, NBUF, in, 6, &r);
    stream = run.stream;
    /* The workspace is scratch with no required content: fill it with garbage to prove it. */
    if (!failed && bytes[WS] && (r = drv.MemsetD8Async(buf[WS], 0xA5, bytes[WS], stream)) != CUDA_SUCCESS)
        failed = "cuMemsetD8Async";
    if (!failed) {
        d.workspace = buf[WS];
        d.workspace_bytes = bytes[WS];
        st = cybn_forward_train(&d, buf[X], buf[Y], buf[SCALE], buf[BIAS], buf[RM], buf[RV], buf[SM], buf[SI], stream);
        if (st == CYBN_OK)
            st = cybn_backward(&d, buf[X], buf[DY], buf[DX], buf[SCALE], buf[SM], buf[SI], buf[SG], buf[BG], stream);
        if (st == CYBN_OK)
            st = cybn_forward_infer(&d, buf[X], buf[YI], buf[SCALE], buf[BIAS], buf[RM], buf[RV], stream);
        if (st == CYBN_OK)
            st = cybn_backward_infer(&d, buf[X], buf[DY], buf[DXI], buf[SCALE], buf[RM], buf[RV], buf[SGI],
                                     buf[BGI], stream);
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        cuda_fail(failed, r);
        goto cleanup;
    }
    if (st != CYBN_OK) {
        bn_fail("BatchNorm", st);
        goto cleanup;
    }
    result = cext_results(&run, buf, bytes, out_ids, out_names, NOUT);
cleanup:
    cext_end(&run, buf, NBUF);
release:
    for (i = 0; i < 6; i++)
        if (in[i].obj) PyBuffer_Release(&in[i]);
    return result;
}

/* call(op, (mode, dtype, flags, N, C, S, epsilon, factor, workspace, workspace_bytes, reserved_value
 *           [, scale_grad_alpha, scale_grad_beta, bias_grad_alpha, bias_grad_beta]),
 *      (pointers...), stream, own_context) -> (status, last_error)
 * The descriptor is written field by field (no desc_init), so tests can hand cybn impossible ones.
 * own_context: run the call with a fresh non-primary context current (one nothing was prepared for). */
static PyObject *call(PyObject *self, PyObject *args)
{
    const char *op;
    PyObject *fields, *ptrs;
    unsigned long long stream, p[9] = {0};
    int own_context, st, n, i;
    uint64_t nbytes = 0;
    cybn_desc d;
    CUcontext saved = NULL, fresh = NULL;
    CUdevice dev;
    (void)self;
    if (!PyArg_ParseTuple(args, "sO!O!Kp", &op, &PyTuple_Type, &fields, &PyTuple_Type, &ptrs, &stream, &own_context))
        return NULL;
    memset(&d, 0, sizeof(d));
    if (!PyArg_ParseTuple(fields, "iiiLLLffKKK|ffff", &d.mode, &d.dtype, &d.flags, &d.N, &d.C, &d.S, &d.epsilon,
                          &d.factor, &d.workspace, &d.workspace_bytes, &d.reserved[3], &d.scale_grad_alpha,
                          &d.scale_grad_beta, &d.bias_grad_alpha, &d.bias_grad_beta))
        return NULL;
    n = (int)PyTuple_GET_SIZE(ptrs);
    if (n > 9)
        return PyErr_Format(PyExc_ValueError, "at most 9 pointers");
    for (i = 0; i < n; i++) {
        p[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(ptrs, i));
        if (PyErr_Occurred())
            return NULL;
    }
    if (own_context) {
        CUresult r;
        if (load_driver() < 0)
            return NULL;
        if ((r = drv.CtxGetCurrent(&saved)) != CUDA_SUCCESS) return cuda_fail("cuCtxGetCurrent", r);
        if ((r = drv.DeviceGet(&dev, 0)) != CUDA_SUCCESS) return cuda_fail("cuDeviceGet", r);
        if ((r = drv.CtxCreate(&fresh, 0, dev)) != CUDA_SUCCESS) return cuda_fail("cuCtxCreate", r);
    }
    Py_BEGIN_ALLOW_THREADS
    if (!strcmp(op, "forward_train"))
        st = cybn_forward_train(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], (void *)(uintptr_t)stream);
    else if (!strcmp(op, "forward_infer"))
        st = cybn_forward_infer(&d, p[0], p[1], p[2], p[3], p[4], p[5], (void *)(uintptr_t)stream);
    else if (!strcmp(op, "backward"))
        st = cybn_backward(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], (void *)(uintptr_t)stream);
    else if (!strcmp(op, "backward_infer"))
        st = cybn_backward_infer(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], (void *)(uintptr_t)stream);
    else if (!strcmp(op, "workspace_size"))
        st = cybn_workspace_size(&d, &nbytes);
    else if (!strcmp(op, "workspace_size_null"))
        st = cybn_workspace_size(&d, NULL);
    else
        st = 1000;
    Py_END_ALLOW_THREADS
    if (own_context) {
        drv.CtxDestroy(fresh);
        drv.CtxSetCurrent(saved);
    }
    if (st == 1000)
        return PyErr_Format(PyExc_ValueError, "unknown op %s", op);
    if (!strcmp(op, "workspace_size"))
        return Py_BuildValue("isK", st, cybn_last_error(), (unsigned long long)nbytes);
    return Py_BuildValue("is", st, cybn_last_error());
}

/* desc_init(mode, dtype, N, C, S, epsilon, factor, flags) -> (status, last_error, fields or None,
 * unchanged): fields of the filled descriptor; unchanged: whether a failed call left it untouched. */
static PyObject *desc_init(PyObject *self, PyObject *args)
{
    int mode, dtype, flags, st;
    long long N, C, S;
    float eps, factor;
    cybn_desc d, before;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiLLLffi", &mode, &dtype, &N, &C, &S, &eps, &factor, &flags))
        return NULL;
    memset(&d, 0xA5, sizeof(d));
    before = d;
    st = cybn_desc_init(&d, mode, dtype, N, C, S, eps, factor, flags);
    if (st != CYBN_OK)
        return Py_BuildValue("isOO", st, cybn_last_error(), Py_None,
                             memcmp(&d, &before, sizeof(d)) == 0 ? Py_True : Py_False);
    {
        int zero = d.layout == 0 && d.workspace == 0 && d.workspace_bytes == 0 && d.activation == 0 &&
                   d.activation_alpha == 0.0f;
        for (int i = 0; i < 5; i++) zero = zero && d.reserved[i] == 0;
        /* version 2's parameter-gradient coefficients default to overwrite (alpha 1, beta 0) */
        zero = zero && d.scale_grad_alpha == 1.0f && d.scale_grad_beta == 0.0f && d.bias_grad_alpha == 1.0f &&
               d.bias_grad_beta == 0.0f;
        return Py_BuildValue("is(iiiLLLff)O", st, cybn_last_error(), d.mode, d.dtype, d.flags, (long long)d.N,
                             (long long)d.C, (long long)d.S, d.epsilon, d.factor, zero ? Py_True : Py_False);
    }
}

static PyObject *desc_init_null(PyObject *self, PyObject *unused)
{
    int st = cybn_desc_init(NULL, CYBN_SPATIAL, CYBN_FLOAT32, 1, 1, 1, 1e-5f, 0.1f, 0);
    (void)self; (void)unused;
    return Py_BuildValue("is", st, cybn_last_error());
}

static PyObject *prepare(PyObject *self, PyObject *args)
{
    int dtype, mode;
    (void)self;
    if (!PyArg_ParseTuple(args, "ii", &dtype, &mode))
        return NULL;
    if (cybn_prepare(dtype, mode) != CYBN_OK)
        return NULL;  /* the exception cybn set */
    Py_RETURN_NONE;
}

static PyObject *info(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    return Py_BuildValue("{s:I,s:I,s:i,s:n,s:n}", "version", cybn_api_table->version, "size", cybn_api_table->size,
                         "header_version", (int)CYBN_C_API_VERSION, "header_size", (Py_ssize_t)sizeof(cybn_api),
                         "desc_size", (Py_ssize_t)sizeof(cybn_desc));
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS, "forward_train, backward, forward_infer, backward_infer on own buffers/stream"},
    {"call", call, METH_VARARGS, "one raw call with a hand-written descriptor"},
    {"desc_init", desc_init, METH_VARARGS, "cybn_desc_init"},
    {"desc_init_null", desc_init_null, METH_NOARGS, "cybn_desc_init(NULL, ...)"},
    {"prepare", prepare, METH_VARARGS, "cybn_prepare"},
    {"info", info, METH_NOARGS, "table and header versions and sizes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, STR(BN_CEXT_NAME), NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC CAT(PyInit_, BN_CEXT_NAME)(void)
{
    if (cybn_import() < 0)
        return NULL;
    return PyModule_Create(&module);
}
