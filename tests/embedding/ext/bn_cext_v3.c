/* A C extension over cybn.h version 3: the descriptor's layout, dtype, activation, alpha and flags, and
 * the *_ex entries that take the fused epilogue's arrays (residual z, its gradient dz, the saved output y).
 * Buffers, stream and context through the CUDA driver API itself (cext_driver.h), as bn_cext.c. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <cuda.h>
#include "cybn.h"
#include "cext_driver.h"

enum { X, Z, SCALE, BIAS, RM, RV, DY, Y, SM, SI, DX, DZ, SG, BG, YI, DXI, DZI, SGI, BGI, WS, NBUF };
#define NIN 7
static const int out_ids[] = {Y, SM, SI, DX, DZ, SG, BG, YI, DXI, DZI, SGI, BGI, RM, RV};
static const char *const out_names[] = {"y", "save_mean", "save_invstd", "dx", "dz", "scale_grad", "bias_grad",
                                        "y_infer", "dx_infer", "dz_infer", "scale_grad_infer", "bias_grad_infer",
                                        "running_mean", "running_var"};
#define NOUT ((int)(sizeof(out_ids) / sizeof(out_ids[0])))

static size_t data_size(int dtype)
{
    return dtype == CYBN_FLOAT16 || dtype == CYBN_BFLOAT16 ? 2 : dtype == CYBN_FLOAT64 ? 8 : 4;
}

static int is_data(int i)
{
    return i == X || i == Z || i == DY || i == Y || i == DX || i == DZ || i == YI || i == DXI || i == DZI;
}

/* run_ex(mode, dtype, layout, flags, activation, alpha, N, C, S, epsilon, factor, keep_y, prepare_plain,
 *        x, z, scale, bias, running_mean, running_var, dy) -> dict of bytes.
 * forward_train_ex, backward_ex, forward_infer_ex, backward_infer_ex on a stream of our own, GIL released;
 * the backward gets the forward's y when keep_y, else 0 (act' recomputed). z: b"" without CYBN_RESIDUAL
 * (then z and dz are passed as 0); scale: b"" with CYBN_FIX_GAMMA passes a null scale. prepare_plain:
 * prepare the kernels with version 2's prepare (so that the calls' own checks are what refuses the new
 * fields), else with prepare_desc. A failing call raises
 * RuntimeError("<call> returned <status>: <last_error>"). */
static PyObject *run_ex(PyObject *self, PyObject *args)
{
    int mode, dtype, layout, flags, act, keep_y, plain, st = CYBN_OK, i;
    long long N, C, S;
    float alpha, eps, factor;
    Py_buffer in[NIN];
    cext_run run;
    CUstream stream;
    CUdeviceptr buf[NBUF];
    size_t bytes[NBUF];
    uint64_t ws_bytes = 0;
    cybn_desc d;
    CUresult r = CUDA_SUCCESS;
    const char *failed = NULL, *call = "desc_init";
    PyObject *result = NULL;
    (void)self;
    memset(in, 0, sizeof(in));
    memset(buf, 0, sizeof(buf));
    memset(&run, 0, sizeof(run));
    if (!PyArg_ParseTuple(args, "iiiiifLLLffppy*y*y*y*y*y*y*", &mode, &dtype, &layout, &flags, &act, &alpha, &N, &C,
                          &S, &eps, &factor, &keep_y, &plain, &in[0], &in[1], &in[2], &in[3], &in[4], &in[5], &in[6]))
        return NULL;
    /* desc_init knows version 2's fields; version 3's layout and epilogue are set after it */
    st = cybn_desc_init(&d, mode, dtype, N, C, S, eps, factor, flags & (CYBN_AFFINE | CYBN_ACCUMULATE_GRADS));
    if (st != CYBN_OK) {
        bn_fail(call, st);
        goto release;
    }
    d.flags = flags;
    d.layout = layout;
    d.activation = act;
    d.activation_alpha = alpha;
    if ((plain ? cybn_prepare(dtype, mode) : cybn_prepare_desc(&d)) != CYBN_OK || load_driver() < 0)
        goto release;
    call = "workspace_size";
    if ((st = cybn_workspace_size(&d, &ws_bytes)) != CYBN_OK) {
        bn_fail(call, st);
        goto release;
    }
    {
        size_t data = (size_t)(N * C * S) * data_size(dtype);
        size_t stats = (size_t)(mode == CYBN_SPATIAL ? C : C * S) * (dtype == CYBN_FLOAT64 ? 8 : 4);
        int residual = (flags & CYBN_RESIDUAL) != 0;
        for (i = 0; i < NBUF; i++)
            bytes[i] = is_data(i) ? data : stats;
        if (!residual)
            bytes[Z] = bytes[DZ] = bytes[DZI] = 0;
        if ((flags & CYBN_FIX_GAMMA) && in[SCALE].len == 0)
            bytes[SCALE] = 0;  /* CYBN_FIX_GAMMA: the scale pointer is 0 */
        bytes[WS] = (size_t)ws_bytes;
        for (i = 0; i < NIN; i++) {
            if ((size_t)in[i].len != bytes[i]) {
                PyErr_Format(PyExc_ValueError, "input %d has %zd bytes, expected %zu", i, in[i].len, bytes[i]);
                goto release;
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    failed = cext_begin(&run, buf, bytes, NBUF, in, NIN, &r);
    stream = run.stream;
    if (!failed) {
        d.workspace = buf[WS];
        d.workspace_bytes = bytes[WS];
        call = "forward_train_ex";
        st = cybn_forward_train_ex(&d, buf[X], buf[Z], buf[Y], buf[SCALE], buf[BIAS], buf[RM], buf[RV], buf[SM],
                                   buf[SI], stream);
        if (st == CYBN_OK) {
            call = "backward_ex";
            st = cybn_backward_ex(&d, buf[X], buf[Z], keep_y ? buf[Y] : 0, buf[DY], buf[DX], buf[DZ], buf[SCALE],
                                  buf[BIAS], buf[SM], buf[SI], buf[SG], buf[BG], stream);
        }
        if (st == CYBN_OK) {
            call = "forward_infer_ex";
            st = cybn_forward_infer_ex(&d, buf[X], buf[Z], buf[YI], buf[SCALE], buf[BIAS], buf[RM], buf[RV], stream);
        }
        if (st == CYBN_OK) {
            call = "backward_infer_ex";
            st = cybn_backward_infer_ex(&d, buf[X], buf[Z], keep_y ? buf[YI] : 0, buf[DY], buf[DXI], buf[DZI],
                                        buf[SCALE], buf[BIAS], buf[RM], buf[RV], buf[SGI], buf[BGI], stream);
        }
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        cuda_fail(failed, r);
        goto cleanup;
    }
    if (st != CYBN_OK) {
        bn_fail(call, st);
        goto cleanup;
    }
    result = cext_results(&run, buf, bytes, out_ids, out_names, NOUT);
cleanup:
    cext_end(&run, buf, NBUF);
release:
    for (i = 0; i < NIN; i++)
        if (in[i].obj) PyBuffer_Release(&in[i]);
    return result;
}

/* v2_call(op, mode, dtype, layout, flags, activation) -> (status, last_error): a version 2 entry given a
 * version 3 descriptor, with null pointers (the refusals come before any pointer is looked at). */
static PyObject *v2_call(PyObject *self, PyObject *args)
{
    const char *op;
    int mode, dtype, layout, flags, act, st;
    cybn_desc d;
    (void)self;
    if (!PyArg_ParseTuple(args, "siiiii", &op, &mode, &dtype, &layout, &flags, &act))
        return NULL;
    if ((st = cybn_desc_init(&d, mode, dtype, 4, 3, 2, 1e-5f, 0.1f, CYBN_AFFINE)) != CYBN_OK)
        return Py_BuildValue("is", st, cybn_last_error());
    d.layout = layout;
    d.flags = flags;
    d.activation = act;
    d.activation_alpha = 1.0f;
    if (!strcmp(op, "forward_train"))
        st = cybn_forward_train(&d, 0, 0, 0, 0, 0, 0, 0, 0, NULL);
    else if (!strcmp(op, "forward_infer"))
        st = cybn_forward_infer(&d, 0, 0, 0, 0, 0, 0, NULL);
    else if (!strcmp(op, "backward"))
        st = cybn_backward(&d, 0, 0, 0, 0, 0, 0, 0, 0, NULL);
    else if (!strcmp(op, "backward_infer"))
        st = cybn_backward_infer(&d, 0, 0, 0, 0, 0, 0, 0, 0, NULL);
    else
        return PyErr_Format(PyExc_ValueError, "unknown op %s", op);
    return Py_BuildValue("is", st, cybn_last_error());
}

static PyObject *info(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    return Py_BuildValue("{s:I,s:I,s:i,s:n,s:n,s:n,s:n}", "version", cybn_api_table->version, "size",
                         cybn_api_table->size, "header_version", (int)CYBN_C_API_VERSION, "header_size",
                         (Py_ssize_t)sizeof(cybn_api), "desc_size", (Py_ssize_t)sizeof(cybn_desc),
                         "layout_offset", (Py_ssize_t)offsetof(cybn_desc, layout),
                         "activation_offset", (Py_ssize_t)offsetof(cybn_desc, activation));
}

static PyMethodDef methods[] = {
    {"run_ex", run_ex, METH_VARARGS, "forward_train_ex, backward_ex, forward_infer_ex, backward_infer_ex"},
    {"v2_call", v2_call, METH_VARARGS, "a version 2 entry with a version 3 descriptor"},
    {"info", info, METH_NOARGS, "table and header versions, sizes and field offsets"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bn_cext_v3", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_bn_cext_v3(void)
{
    if (cybn_import() < 0)
        return NULL;
    return PyModule_Create(&module);
}
