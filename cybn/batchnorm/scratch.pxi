# The split plans' scratch inside the caller's workspace: counters, per-CTA partials and the
# second launch's tail (floats per entry from bn_abi.h), its size (bn_workspace_size), its check and
# the counters' zeroing. Included by batchnorm.pyx.

cdef inline size_t _round256(size_t n) noexcept nogil:
    return (n + 255) // 256 * 256


cdef inline size_t _partials_bytes(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    cdef size_t stats = <size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S)
    return _round256(stats * <size_t>p.split * (BN_BWD_PART if kernel == BN_K_BWD else BN_FWD_PART) * 4)


cdef size_t _scratch_bytes(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    """Workspace after the counters: the per-CTA partials, then the second launch's per-statistic tail."""
    cdef size_t stats = <size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S)
    if p.split <= 1:
        return 0
    return _partials_bytes(d, p, kernel) + _round256(stats * (BN_BWD_TAIL if kernel == BN_K_BWD else BN_FWD_TAIL) * 4)


cdef size_t bn_workspace_size(const bn_desc* d) noexcept nogil:
    """Scratch bytes the worst plan of this descriptor needs (0 when nothing is split). The counters
    (one uint32 per grid column, at most one per statistic) live at its start: see _counter_bytes."""
    cdef bn_plan p
    cdef size_t need = 0, n
    cdef int i, k, v
    for i in range(4):  # forward and backward reductions, each with and without 16-byte units
        k = BN_K_FWD_TRAIN if i < 2 else BN_K_BWD
        v = i % 2
        if True:
            bn_make_plan(d, k, v, &p)
            n = _scratch_bytes(d, &p, k)
            if n > 0:
                n += _counter_bytes(d)
            if n > need:
                need = n
    return need


cdef inline size_t _counter_bytes(const bn_desc* d) noexcept nogil:
    return _round256(<size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S) * 4)


cdef int _check_workspace(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    if p.split > 1 and (d.workspace == 0 or d.workspace_bytes < _counter_bytes(d) + _scratch_bytes(d, p, kernel)):
        return _fail(BN_EWORKSPACE, "descriptor: workspace missing or smaller than bn_workspace_size()")
    return BN_OK


cdef int _zero_counters(const bn_desc* d, cydriver.CUstream stream) noexcept nogil:
    """A split plan's per-column counters start at zero. Zeroed on the stream before every split call,
    so the workspace is plain scratch for every face (Python, Cython, C): an earlier call with another
    shape may have left partials where this call's counters lie, and a failed call may have left
    counters part-way. C * 4 bytes by the driver, not a kernel launch."""
    cdef cydriver.CUresult r = cydriver.cuMemsetD32Async(d.workspace, 0, _counter_bytes(d) // 4, stream)
    if r != cydriver.CUDA_SUCCESS:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "cuMemsetD32Async failed: %d", <int>r)
        return <int>r
    return BN_OK
