# Channels-last (NHWC) part of the core: its kernels (kernels/batchnorm_nhwc.cu), its block shape and
# its 16-byte rule. Included by batchnorm.pyx: the cores, the split rule (_split), the replay cache, the
# workspace and the argument lists are shared with NCHW; only the kernels and the block shape differ.
# x is (M = N * S, C) row-major; a block is (BX, BY): BX threads over the channels, W each (W = one
# 16-byte unit when vec, else 1), BY row lanes (a power of two: column_reduce's tree); the grid's P CTAs
# per column split the M rows.

cdef enum:
    NHWC_MAX_BX = 32        # threads across the channels: 32 x 16 bytes = 512 contiguous bytes per row


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


cdef void _nhwc_block(const bn_desc* d, int vec, bn_plan* p, long long* cols, long long* per_thread,
                      long long* unit_bytes) noexcept nogil:
    """Block (BX, BY) and grid columns of a channels-last plan; per_thread = rows a thread walks
    (unsplit), unit_bytes = bytes it loads per row and array."""
    cdef long long W = _nhwc_width(d, vec), M = d.N * d.S
    cdef long long units = _cdiv(d.C, W)
    cdef long long BX = min(_pow2_at_least(units), <long long>NHWC_MAX_BX)
    cdef long long BY = TARGET_THREADS // BX
    if d.force_group > 0:  # row lanes: a power of two
        BY = min(_pow2_at_least(d.force_group + 1) // 2, TARGET_THREADS // BX)
    elif BY > _pow2_at_least(M):
        BY = _pow2_at_least(M)
    p.block[0] = <unsigned int>BX
    p.block[1] = <unsigned int>BY
    cols[0] = _cdiv(units, BX)
    per_thread[0] = _cdiv(M, BY)
    unit_bytes[0] = 16 if vec else _elem_bytes(d.dtype)


cdef inline int _nhwc_vec_ok(const bn_desc* d, cydriver.CUdeviceptr a, cydriver.CUdeviceptr b,
                             cydriver.CUdeviceptr c) noexcept nogil:
    """16-byte units when every row starts 16-byte aligned: C a multiple of the unit, pointers aligned."""
    return 1 if d.C % _nhwc_width(d, 1) == 0 and _aligned(a) and _aligned(b) and _aligned(c) else 0
