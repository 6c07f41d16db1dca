/* A C extension over cybn.h version 4's SyncBatchNorm split: two "processes" in one, each a slice of one batch
 * (rows [0, n0) and [n0, n0 + n1)), with their own saved and running statistics and gradients. The partials
 * and sums go to the host, where this file combines them itself (Chan's formula, plain sums, rank order) as an
 * embedding pipeline with its own transport would; then the combined entries run on each slice. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cuda.h>
#include "cybn.h"
#include "cext_driver.h"

enum { X, Z, Y, DY, DX, DZ, SCALE, BIAS, PARTS, SUMS, SCRATCH, NSHARED };
enum { RM, RV, SM, SI, SG, BG, NRANK };
#define NPTR (NSHARED + 2 * NRANK)

/* n parameter values at src -> out (float64), after the stream's work */
static int fetch(double *out, CUdeviceptr src, long long n, int f64, CUstream s)
{
    long long i;
    float *f = f64 ? NULL : (float *)malloc((size_t)n * sizeof(float));
    CUresult r;
    if (!f64 && !f)
        return -1;
    r = drv.MemcpyDtoHAsync(f64 ? (void *)out : (void *)f, src, (size_t)n * (f64 ? 8 : 4), s);
    if (r == CUDA_SUCCESS)
        r = drv.StreamSynchronize(s);
    if (!f64) {
        for (i = 0; i < n; i++)
            out[i] = f[i];
        free(f);
    }
    return r == CUDA_SUCCESS ? 0 : -1;
}

/* sync_step(mode, dtype, flags, act, alpha, n0, n1, C, S, eps, factor, keep_y, ptrs, stream) -> None.
 * ptrs: the 11 shared device pointers (x, z, y, dy, dx, dz of the whole batch; scale, bias; partials (4, K),
 * sums (3, K) and scratch (4 * K) of one process at a time) then per process rm, rv, sm, si, sg, bg. z, dz 0
 * without CYBN_RESIDUAL. RuntimeError("<call> returned <status>: <last_error>") on a refused call. */
static PyObject *sync_step(PyObject *self, PyObject *args)
{
    int mode, dtype, flags, act, keep_y, r, st = CYBN_OK, f64;
    long long n[2], C, S, K, M[2], i;
    float alpha, eps, factor;
    PyObject *tuple;
    unsigned long long stream_int;
    CUdeviceptr p[NPTR];
    cybn_desc d[2];
    const char *call = "desc_init";
    double *h, *mean, *var, *sums, *part;
    double total = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiifLLLLffpO!K", &mode, &dtype, &flags, &act, &alpha, &n[0], &n[1], &C, &S, &eps,
                          &factor, &keep_y, &PyTuple_Type, &tuple, &stream_int))
        return NULL;
    if (PyTuple_GET_SIZE(tuple) != NPTR)
        return PyErr_Format(PyExc_ValueError, "ptrs must have %d pointers", NPTR);
    for (i = 0; i < NPTR; i++) {
        p[i] = (CUdeviceptr)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(tuple, i));
        if (PyErr_Occurred())
            return NULL;
    }
    f64 = dtype == CYBN_FLOAT64;
    K = mode == CYBN_SPATIAL ? C : C * S;
    for (r = 0; r < 2; r++) {
        /* desc_init refuses N = 0: a process with no samples sets it afterwards */
        st = cybn_desc_init(&d[r], mode, dtype, n[r] ? n[r] : 1, C, S, eps, factor, flags & ~CYBN_RESIDUAL);
        if (st != CYBN_OK)
            return bn_fail(call, st);
        d[r].N = n[r];
        d[r].flags = flags;
        d[r].activation = act;
        d[r].activation_alpha = alpha;
        M[r] = mode == CYBN_SPATIAL ? n[r] * S : n[r];
    }
    if (cybn_prepare_desc(&d[n[0] ? 0 : 1]) != CYBN_OK || load_driver() < 0)  /* prepare_desc takes N >= 1 */
        return NULL;
    h = (double *)calloc((size_t)K * 12, sizeof(double));
    if (!h)
        return PyErr_NoMemory();
    mean = h, var = h + K, sums = h + 2 * K, part = h + 5 * K;
    {
        CUstream s = (CUstream)(uintptr_t)stream_int;
        size_t esize = dtype == CYBN_FLOAT16 || dtype == CYBN_BFLOAT16 ? 2 : f64 ? 8 : 4;
        size_t row = (size_t)K * (f64 ? 8 : 4);
        Py_BEGIN_ALLOW_THREADS
        /* forward: partials per process, combined here in rank order with Chan's formula (variance form) */
        for (r = 0; r < 2 && st == CYBN_OK; r++) {
            CUdeviceptr off = (CUdeviceptr)((r ? n[0] : 0) * C * S * (long long)esize);
            call = "forward_train_partials";
            st = cybn_forward_train_partials(&d[r], p[X] + off, p[PARTS], s);
            if (st != CYBN_OK || !M[r])
                continue;
            if (fetch(part, p[PARTS], 3 * K, f64, s) < 0) {
                st = -100;
                break;
            }
            for (i = 0; i < K; i++) {
                double mb = part[i] + part[K + i], vb = part[2 * K + i], tot = total + (double)M[r];
                double wa = total / tot, wb = (double)M[r] / tot, dm = mb - mean[i];
                if (total == 0) {
                    mean[i] = mb, var[i] = vb;
                } else {
                    var[i] = wa * var[i] + wb * vb + wa * wb * dm * dm;
                    mean[i] = mean[i] + dm * wb;
                }
            }
            total += (double)M[r];
        }
        for (r = 0; r < 2 && st == CYBN_OK; r++) {
            CUdeviceptr off = (CUdeviceptr)((r ? n[0] : 0) * C * S * (long long)esize);
            CUdeviceptr *q = p + NSHARED + r * NRANK;
            call = "forward_train_combined";
            st = cybn_forward_train_combined(&d[r], p[X] + off, p[Z] ? p[Z] + off : 0, p[Y] + off, p[SCALE],
                                             p[BIAS], q[RM], q[RV], q[SM], q[SI], mean, var, (int64_t)total,
                                             p[SCRATCH], s);
        }
        /* backward: sums per process, summed here in rank order */
        for (r = 0; r < 2 && st == CYBN_OK; r++) {
            CUdeviceptr off = (CUdeviceptr)((r ? n[0] : 0) * C * S * (long long)esize);
            CUdeviceptr *q = p + NSHARED + r * NRANK;
            call = "backward_sums";
            st = cybn_backward_sums(&d[r], p[X] + off, p[Z] ? p[Z] + off : 0, keep_y ? p[Y] + off : 0, p[DY] + off,
                                    p[DZ] ? p[DZ] + off : 0, p[SCALE], p[BIAS], q[SM], q[SI], p[SUMS], s);
            if (st != CYBN_OK || !M[r])
                continue;
            if (fetch(part, p[SUMS], 3 * K, f64, s) < 0) {
                st = -100;
                break;
            }
            for (i = 0; i < 3 * K; i++)
                sums[i] += part[i];
        }
        for (r = 0; r < 2 && st == CYBN_OK; r++) {
            CUdeviceptr off = (CUdeviceptr)((r ? n[0] : 0) * C * S * (long long)esize);
            CUdeviceptr *q = p + NSHARED + r * NRANK;
            call = "backward_combined";
            st = cybn_backward_combined(&d[r], p[X] + off, p[Z] ? p[Z] + off : 0, keep_y ? p[Y] + off : 0,
                                        p[DY] + off, p[DX] + off, p[SCALE], p[BIAS], q[SM], q[SI], sums,
                                        (int64_t)total, q[SG], q[BG], p[SCRATCH], s);
        }
        (void)row;
        Py_END_ALLOW_THREADS
    }
    free(h);
    if (st == -100)
        return cuda_fail("cuMemcpyDtoHAsync (partials or sums to the host)", CUDA_ERROR_UNKNOWN);
    if (st != CYBN_OK)
        return bn_fail(call, st);
    Py_RETURN_NONE;
}

/* refused(which, C, pointers..., stream) -> (status, message) of a refused combined call: which 0 is
 * forward_train_combined with count 1, 1 with a NaN mean, 3 with save_invstd = running_mean; 2 is
 * backward_combined with count 1. */
static PyObject *refused(PyObject *self, PyObject *args)
{
    int which, st;
    long long C;
    unsigned long long x, y, scale, bias, rm, rv, sm, si, scratch, dy, dx, sg, bg, stream;
    double mean[64], var[64], sums[192];
    cybn_desc d;
    (void)self;
    if (!PyArg_ParseTuple(args, "iLKKKKKKKKKKKKKK", &which, &C, &x, &y, &scale, &bias, &rm, &rv, &sm, &si, &scratch,
                          &dy, &dx, &sg, &bg, &stream))
        return NULL;
    if (C > 64)
        return PyErr_Format(PyExc_ValueError, "C <= 64");
    if ((st = cybn_desc_init(&d, CYBN_SPATIAL, CYBN_FLOAT32, 2, C, 3, 1e-5f, 0.5f, CYBN_AFFINE)) != CYBN_OK)
        return bn_fail("desc_init", st);
    if (cybn_prepare_desc(&d) != CYBN_OK)
        return NULL;
    memset(sums, 0, sizeof(sums));
    for (int i = 0; i < C; i++)
        mean[i] = which == 1 ? NAN : 0.5, var[i] = 2.0;
    Py_BEGIN_ALLOW_THREADS
    if (which != 2)  /* 3: save_invstd is running_mean's memory */
        st = cybn_forward_train_combined(&d, x, 0, y, scale, bias, rm, rv, sm, which == 3 ? rm : si, mean, var,
                                         which == 0 ? 1 : 6, scratch, (void *)(uintptr_t)stream);
    else
        st = cybn_backward_combined(&d, x, 0, 0, dy, dx, scale, bias, sm, si, sums, 1, sg, bg, scratch,
                                    (void *)(uintptr_t)stream);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("is", st, cybn_last_error());
}

static PyMethodDef methods[] = {
    {"sync_step", sync_step, METH_VARARGS, "a SyncBatchNorm training step of two slices through the split entries"},
    {"refused", refused, METH_VARARGS, "a refused combined call: (status, message)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bn_cext_sync", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_bn_cext_sync(void)
{
    if (cybn_import() < 0)
        return NULL;
    return PyModule_Create(&module);
}
