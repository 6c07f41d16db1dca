# distutils: language = c++
"""A tiny Cython extension that uses cybn's BatchNorm through `cimport cybn.capi` only: prepare() with
the GIL, then every BatchNorm call inside `with nogil:` on raw device pointers and a raw CUstream."""
from libc.stdint cimport uint64_t
from cuda.bindings cimport cydriver
from cybn.capi cimport (cybn_desc, prepare, desc_init, workspace_size, forward_train, backward,
                        forward_infer, backward_infer, last_error, CYBN_OK, CYBN_AFFINE)


def prepare_kernels(int dtype, int mode):
    prepare(dtype, mode)


def workspace_bytes(int mode, int dtype, long long N, long long C, long long S, float eps, float factor,
                    bint affine):
    cdef cybn_desc d
    cdef uint64_t n = 0
    cdef int st = desc_init(&d, mode, dtype, N, C, S, eps, factor, CYBN_AFFINE if affine else 0)
    if st == CYBN_OK:
        st = workspace_size(&d, &n)
    if st != CYBN_OK:
        raise RuntimeError(last_error().decode())
    return n


def run(int mode, int dtype, long long N, long long C, long long S, float eps, float factor, bint affine,
        dict p, size_t workspace, size_t workspace_nbytes, size_t stream):
    """p: name -> device pointer (int). Returns (status, message) of the first failing call, or (0, "")."""
    cdef cybn_desc d
    cdef int st = desc_init(&d, mode, dtype, N, C, S, eps, factor, CYBN_AFFINE if affine else 0)
    if st != CYBN_OK:
        return st, last_error().decode()
    d.workspace = workspace
    d.workspace_bytes = workspace_nbytes
    cdef cydriver.CUstream s = <cydriver.CUstream>stream
    cdef cydriver.CUdeviceptr x = p["x"], y = p["y"], scale = p["scale"], bias = p["bias"]
    cdef cydriver.CUdeviceptr rm = p["running_mean"], rv = p["running_var"], sm = p["save_mean"]
    cdef cydriver.CUdeviceptr si = p["save_invstd"], dy = p["dy"], dx = p["dx"], sg = p["scale_grad"]
    cdef cydriver.CUdeviceptr bg = p["bias_grad"], yi = p["y_infer"], dxi = p["dx_infer"]
    cdef cydriver.CUdeviceptr sgi = p["scale_grad_infer"], bgi = p["bias_grad_infer"]
    with nogil:
        st = forward_train(&d, x, y, scale, bias, rm, rv, sm, si, s)
        if st == CYBN_OK:
            st = backward(&d, x, dy, dx, scale, sm, si, sg, bg, s)
        if st == CYBN_OK:
            st = forward_infer(&d, x, yi, scale, bias, rm, rv, s)
        if st == CYBN_OK:
            st = backward_infer(&d, x, dy, dxi, scale, rm, rv, sgi, bgi, s)
    return st, (last_error().decode() if st != CYBN_OK else "")
