/* example_bn.c - the README's minimal C extension: one float32 spatial BatchNorm training step
 * (forward_train then backward) on device pointers and a stream handed over as ints. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "cybn.h"

/* workspace_size(N, C, S) -> bytes of device scratch train_step needs (0: none) */
static PyObject *workspace_size(PyObject *self, PyObject *args)
{
    long long N, C, S;
    uint64_t bytes = 0;
    cybn_desc d;
    (void)self;
    if (!PyArg_ParseTuple(args, "LLL", &N, &C, &S))
        return NULL;
    if (cybn_prepare(CYBN_FLOAT32, CYBN_SPATIAL) != CYBN_OK)  /* GIL held; compiles once per process */
        return NULL;
    if (cybn_desc_init(&d, CYBN_SPATIAL, CYBN_FLOAT32, N, C, S, 1e-5f, 0.1f, CYBN_AFFINE) != CYBN_OK ||
        cybn_workspace_size(&d, &bytes) != CYBN_OK)
        return PyErr_Format(PyExc_ValueError, "%s", cybn_last_error());
    return PyLong_FromUnsignedLongLong(bytes);
}

/* train_step(N, C, S, x, y, dy, dx, scale, bias, running_mean, running_var, save_mean, save_invstd,
 *            scale_grad, bias_grad, workspace, workspace_bytes, stream) */
static PyObject *train_step(PyObject *self, PyObject *args)
{
    long long N, C, S;
    unsigned long long x, y, dy, dx, scale, bias, rm, rv, sm, si, sg, bg, ws, ws_bytes, stream;
    cybn_desc d;
    int st;
    (void)self;
    if (!PyArg_ParseTuple(args, "LLLKKKKKKKKKKKKKKK", &N, &C, &S, &x, &y, &dy, &dx, &scale, &bias, &rm, &rv,
                          &sm, &si, &sg, &bg, &ws, &ws_bytes, &stream))
        return NULL;
    if (cybn_prepare(CYBN_FLOAT32, CYBN_SPATIAL) != CYBN_OK)
        return NULL;
    st = cybn_desc_init(&d, CYBN_SPATIAL, CYBN_FLOAT32, N, C, S, 1e-5f, 0.1f, CYBN_AFFINE);
    d.workspace = ws;
    d.workspace_bytes = ws_bytes;
    Py_BEGIN_ALLOW_THREADS  /* the BatchNorm calls need no GIL */
    if (st == CYBN_OK)
        st = cybn_forward_train(&d, x, y, scale, bias, rm, rv, sm, si, (void *)(uintptr_t)stream);
    if (st == CYBN_OK)
        st = cybn_backward(&d, x, dy, dx, scale, sm, si, sg, bg, (void *)(uintptr_t)stream);
    Py_END_ALLOW_THREADS
    if (st != CYBN_OK)
        return PyErr_Format(PyExc_RuntimeError, "BatchNorm failed (%d): %s", st, cybn_last_error());
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"workspace_size", workspace_size, METH_VARARGS, NULL},
    {"train_step", train_step, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "example_bn", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_example_bn(void)
{
    if (cybn_import() < 0)  /* ImportError if cybn is missing or has another C API version */
        return NULL;
    return PyModule_Create(&module);
}
