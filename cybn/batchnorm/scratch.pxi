# The split plans' scratch inside the caller's workspace: counters, per-CTA partials and the
# second launch's tail (P values per entry from bn_abi.h), its size (bn_workspace_size), its check and
# the counters' arming (when they need a memset). Included by batchnorm.pyx.

cdef inline size_t _round256(size_t n) noexcept nogil:
    return (n + 255) // 256 * 256


cdef inline size_t _partials_bytes(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    cdef size_t stats = <size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S)
    return _round256(stats * <size_t>p.split * (BN_BWD_PART if kernel == BN_K_BWD else BN_FWD_PART) * _param_bytes(d.dtype))


cdef size_t _scratch_bytes(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    """Workspace after the counters: the per-CTA partials, then the second launch's per-statistic tail."""
    cdef size_t stats = <size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S)
    if p.split <= 1:
        return 0
    return _partials_bytes(d, p, kernel) + _round256(stats * (BN_BWD_TAIL if kernel == BN_K_BWD else BN_FWD_TAIL) * _param_bytes(d.dtype))


cdef size_t bn_workspace_size(const bn_desc* d) noexcept nogil:
    """Scratch bytes the worst plan of this descriptor needs (0 when nothing is split). The counters
    (one uint32 per grid column, at most one per statistic) live at its start: see _counter_bytes."""
    cdef bn_plan p
    cdef size_t need = 0, n
    cdef int i, k, v
    for i in range(6):  # forward and backward reductions: element, 16-byte units, SPAN (where it applies)
        k = BN_K_FWD_TRAIN if i % 2 == 0 else BN_K_BWD
        v = i // 2
        if v == 2:
            if d.span_kernels[0] == NULL or not _span_shape(d):
                continue
            v = 3
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


# The counters' contract. A split call needs its _counter_bytes(d) at the workspace's start to be zero
# (armed); its last CTA of each column re-arms its counter (atomicInc wrap, bn_reduce.cuh), so a finished
# call leaves them armed, while its partials and tail overwrite whatever lies past them. The core trusts
# the counters only through d.counters_armed, an extent the workspace's owner keeps beside that one
# allocation and stream (the Python face's workspaces do: workspaces.pxi): it skips the memset when the
# extent covers this call's counters, and afterwards sets it to exactly this call's counter bytes when
# every driver call was accepted, to 0 when any failed. Everything else -- NULL (the C API and Cython
# callers' own memory, whose contents between calls the engine cannot know), a fresh allocation (extent
# 0), an extent smaller than this call's counters (another descriptor's partials lie there), a failed
# call -- gets one memset of the counters on the stream before the first launch.
cdef int _arm_counters(const bn_desc* d, cydriver.CUstream stream) noexcept nogil:
    cdef size_t need = _counter_bytes(d)
    cdef cydriver.CUresult r
    if d.counters_armed != NULL:
        if d.counters_armed[0] >= need:
            d.counters_armed[0] = 0  # unknown until _counters_done says the launches were accepted
            return BN_OK
        d.counters_armed[0] = 0
    r = cydriver.cuMemsetD32Async(d.workspace, 0, need // 4, stream)
    if r != cydriver.CUDA_SUCCESS:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "cuMemsetD32Async failed: %d", <int>r)
        return <int>r
    return BN_OK


cdef inline int _counters_done(const bn_desc* d, int st) noexcept nogil:
    """After a split call's launches: the counters are armed again for the next call when all were accepted."""
    if d.counters_armed != NULL:
        d.counters_armed[0] = _counter_bytes(d) if st == BN_OK else 0
    return st
