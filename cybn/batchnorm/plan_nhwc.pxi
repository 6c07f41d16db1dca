# Row-major (M, K) data: channels-last (NHWC) part of the core, and every per-activation call, whose (N, F)
# rows (F = C * S, either layout) are the same thing with M = N rows and K = F "channels". Their kernels
# (kernels/batchnorm_nhwc.cu), block shape and 16-byte rule. Included by batchnorm.pyx: the cores, the split
# rule (_split), the replay cache, the workspace and the argument lists are shared with NCHW; only the
# kernels and the block shape differ. A block is (BX, BY): BX threads over the channels, W each (W = one
# 16-byte unit when vec, else 1), BY row lanes (a power of two: column_reduce's tree); the grid's P CTAs
# per column split the M rows.

cdef enum:
    NHWC_MAX_BX = 32        # threads across the channels: 32 x 16 bytes = 512 contiguous bytes per row
    NHWC_MIN_SPAN = 32      # a narrowed CTA still reads >= 32 contiguous bytes per row: whole DRAM sectors


cdef inline bint _is_rows(const bn_desc* d) noexcept nogil:
    """The descriptor runs the row-major kernels (batchnorm_nhwc.cu): channels last, or per-activation."""
    return d.layout == BN_LAYOUT_NHWC or d.mode == BN_PER_ACTIVATION


cdef inline long long _rows_k(const bn_desc* d) noexcept nogil:
    """Statistics = the row length K the row-major kernels see as C (per-activation: F = C * S)."""
    return d.C * d.S if d.mode == BN_PER_ACTIVATION else d.C


cdef inline long long _rows_s(const bn_desc* d) noexcept nogil:
    """The kernels' S argument (their M = N * S rows): 1 per-activation (M = N), else d.S."""
    return 1 if d.mode == BN_PER_ACTIVATION else d.S


_NHWC_KERNEL_NAMES = ("bn_nhwc_fwd_train", "bn_nhwc_normalize", "bn_nhwc_bwd", "bn_nhwc_bwd_dx")


def nhwc_kernel_expressions(dtype=None, epi=0):
    """The name expressions of one NVRTC program of batchnorm_nhwc.cu, split as batchnorm.cu's are: the base
    program (dtype None, or float32/float16 with EPI 0) holds `<float, 0>` and `<__half, 0>`; every other
    (dtype, EPI) is a program of its own, compiled on first use."""
    if dtype is None or (dtype in _BASE_DTYPES and epi == 0):
        return [f"{k}<{t}, 0>" for t in ("float", "__half") for k in _NHWC_KERNEL_NAMES]
    return [f"{k}<{_CTYPES[dtype]}, {epi}>" for k in _NHWC_KERNEL_NAMES]


cdef inline long long _nhwc_width(const bn_desc* d, int vec) noexcept nogil:
    """Channels per thread: one 16-byte unit (vec) or one element."""
    if not vec:
        return 1
    return 16 // _elem_bytes(d.dtype)


cdef void _nhwc_block(const bn_desc* d, int kernel, int vec, bn_plan* p, long long* cols, long long* per_thread,
                      long long* unit_bytes) noexcept nogil:
    """Block (BX, BY) and grid columns of a row-major plan; per_thread = rows a thread walks (unsplit),
    unit_bytes = bytes it loads per row and array. Columns before row splits: while the columns do not
    cover the SMs, narrower CTAs are candidates too (BX halved while BX x unit stays >= NHWC_MIN_SPAN bytes,
    BY doubled: still 256 threads, no more row lanes than rows). Of the candidates, with their split
    (_split) and the occupancy calculator's slots, the plan ranks first those covering every SM (a fused one
    at least 2/3 of them), then whole
    waves, then fused (one launch: x read once and replayed from the cache, no memset), then more SMs
    covered, then the fewest CTAs per column (a split reads each column's per-channel values once per
    CTA), then the widest: a tensor too small to cover the SMs stays one fused launch."""
    cdef long long W = _nhwc_width(d, vec), M = d.N * _rows_s(d), ub = 16 if vec else _elem_bytes(d.dtype)
    cdef long long units = _cdiv(_rows_k(d), W), M2 = _pow2_at_least(M)
    cdef long long BX = min(_pow2_at_least(units), <long long>NHWC_MAX_BX)
    cdef long long BY = TARGET_THREADS // BX, c, P, slots, ctas, cover, whole, sms = max(d.sm_count, 1)
    cdef long long key[5]
    cdef long long best[5]
    cdef long long best_bx = BX
    cdef int i
    best[0] = -1
    if d.force_group > 0:  # row lanes: a power of two
        BY = min(_pow2_at_least(d.force_group + 1) // 2, TARGET_THREADS // BX)
    elif d.force_split > 0:  # a test's forced split: the widest block, whatever the occupancy
        BY = min(BY, M2)
    else:
        while True:
            BY = min(TARGET_THREADS // BX, M2)
            c = _cdiv(units, BX)
            slots = _slots(d, kernel, BX * BY, p)
            P = _split(d, kernel, c, _cdiv(M, BY) * ub, slots)
            ctas = c * P
            cover = min(ctas, sms)
            whole = 1 if (P == 1 or ctas > _cdiv(ctas, slots) * slots - c) else 0
            # A fused reduction on 2/3 of the SMs or more counts as covering them: the split that would cover the
            # rest re-reads x (and dy), 3/2 of a forward's bytes and 5/3 of a backward's.
            key[0] = 1 if cover == sms or (P == 1 and 3 * cover >= 2 * sms and
                                          (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD)) else 0
            key[1] = whole
            key[2] = 1 if P == 1 else 0
            key[3] = cover
            key[4] = -P
            for i in range(5):  # lexicographic: the first candidate wins ties (the widest)
                if key[i] != best[i]:
                    break
            if i < 5 and key[i] > best[i] or best[0] < 0:
                best_bx = BX
                for i in range(5):
                    best[i] = key[i]
            if not (BX * ub >= 2 * NHWC_MIN_SPAN and c < d.sm_count and BY * 2 <= M2):
                break
            BX //= 2
        BX = best_bx
        BY = min(TARGET_THREADS // BX, M2)
    p.block[0] = <unsigned int>BX
    p.block[1] = <unsigned int>BY
    cols[0] = _cdiv(units, BX)
    per_thread[0] = _cdiv(M, BY)
    unit_bytes[0] = ub


cdef inline int _nhwc_vec_ok(const bn_desc* d, cydriver.CUdeviceptr a, cydriver.CUdeviceptr b,
                             cydriver.CUdeviceptr c) noexcept nogil:
    """16-byte units when every row starts 16-byte aligned: K a multiple of the unit, pointers aligned."""
    return 1 if _rows_k(d) % _nhwc_width(d, 1) == 0 and _aligned(a) and _aligned(b) and _aligned(c) else 0
