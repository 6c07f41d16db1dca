# distutils: language = c++
"""example_bn_cy.pyx - the README's minimal Cython extension: one float32 spatial BatchNorm training
step (forward_train then backward) on cybn GPUArrays, the BatchNorm calls without the GIL."""
import numpy as np
import cybn
from libc.stdint cimport uint64_t
from cuda.bindings cimport cydriver
from cybn.capi cimport (cybn_desc, prepare, desc_init, workspace_size, forward_train, backward, last_error,
                        CYBN_OK, CYBN_SPATIAL, CYBN_FLOAT32, CYBN_AFFINE)


def train_step(x, dy, scale, bias, running_mean, running_var, stream):
    """x, dy: float32 (N, C, H, W) GPUArrays; the rest (C,) float32; stream: a cybn.Stream.
    Returns (y, save_mean, save_invstd, dx, scale_grad, bias_grad), queued on `stream`; updates
    running_mean/running_var."""
    N, C, H, W = x.shape
    prepare(CYBN_FLOAT32, CYBN_SPATIAL)  # with the GIL; compiles/loads once
    cdef cybn_desc d
    cdef uint64_t ws_bytes = 0
    cdef int st = desc_init(&d, CYBN_SPATIAL, CYBN_FLOAT32, N, C, H * W, 1e-5, 0.1, CYBN_AFFINE)
    if st == CYBN_OK:
        st = workspace_size(&d, &ws_bytes)
    if st != CYBN_OK:
        raise ValueError(last_error().decode())
    with cybn.stream(stream):
        y, dx = cybn.empty_like(x), cybn.empty_like(x)
        sm, si, sg, bg = (cybn.empty((C,), np.float32) for _ in range(4))
        if ws_bytes:
            d.workspace, d.workspace_bytes = _workspace(stream, ws_bytes), ws_bytes
    cdef cydriver.CUstream s = <cydriver.CUstream><size_t>stream.handle
    cdef cydriver.CUdeviceptr px = x.ptr, py = y.ptr, pdy = dy.ptr, pdx = dx.ptr, psc = scale.ptr
    cdef cydriver.CUdeviceptr pb = bias.ptr, prm = running_mean.ptr, prv = running_var.ptr
    cdef cydriver.CUdeviceptr psm = sm.ptr, psi = si.ptr, psg = sg.ptr, pbg = bg.ptr
    with nogil:
        st = forward_train(&d, px, py, psc, pb, prm, prv, psm, psi, s)
        if st == CYBN_OK:
            st = backward(&d, px, pdy, pdx, psc, psm, psi, psg, pbg, s)
    if st != CYBN_OK:
        raise RuntimeError(last_error().decode())
    return y, sm, si, dx, sg, bg


_workspaces = {}  # stream handle -> scratch (no required content), kept for the stream


def _workspace(stream, nbytes):
    ws = _workspaces.get(stream.handle)
    if ws is None or ws.nbytes < nbytes:
        ws = _workspaces[stream.handle] = cybn.empty((nbytes,), np.uint8)
    return ws.ptr
