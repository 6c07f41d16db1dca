# distutils: language = c++
# cython: boundscheck=False, wraparound=False, cdivision=True
"""BatchNorm: the functional layer (forward_train, forward_infer, backward, backward_infer) over a nogil
core (see batchnorm.pxd) that plans and launches the kernels of kernels/batchnorm.cu.

Shapes: x is (N, C, *spatial) in "spatial" mode (one statistic per channel over N * prod(spatial)
values) or (N, C, *rest) in "per_activation" mode (one statistic per (c, *rest) position over the N
rows). x/y/dy/dx float32 or float16; scale, bias, running and saved statistics float32 with one value
per statistic (any shape of that size, e.g. (C,) or (1, C, 1, 1)).

Training forward: batch mean, biased batch variance var_b, invstd = 1/sqrt(var_b + eps),
y = scale * (x - mean) * invstd + bias; running_mean = (1 - factor) * running_mean + factor * mean and
running_var = (1 - factor) * running_var + factor * var_b * M / (M - 1) (M values per statistic; when
M == 1 the unbiased variance is undefined and var_b, i.e. 0, is used: never NaN or inf).

Numerics (kernels/batchnorm.cu, welford.cuh): the batch mean is a float pair hi + lo (save_mean is hi)
and x - mean is formed as (x - hi) - lo everywhere; the backward recovers lo from x itself in its
compensated reduction (no reserve travels beside the saved statistics). Welford's state carries the
variance (M2 / n) on power-of-two-scaled samples, finished in double: no overflow while the variance
fits float32. Parameter gradients take cuDNN's alpha/beta in the backward's own launch.

Workspace: the split plan (several CTAs per channel) needs per-column counters and scratch for the
partial statistics. It is plain scratch: each split call zeroes its counters on the stream first
(an async memset, not a launch), so its earlier content never matters. Allocated on first need per
(device, stream, thread) and kept for the life of the process; one per stream and thread so that no
two calls' launches interleave on one workspace.
"""
import enum
import numbers
import threading

import numpy as np

from libc.stdio cimport snprintf
from libc.string cimport memset
from cuda.bindings cimport cydriver

from cybn.driver.device cimport ensure_context, current_ordinal
from cybn.driver.status cimport check, raise_error
from cybn.driver.stream cimport resolve_stream
from cybn.driver.memory cimport DeviceBuffer
from cybn.driver.function cimport Function
from cybn.array.gpuarray cimport GPUArray

cdef extern from *:
    """
    static __thread char cybn_bn_error[256];
    """
    char cybn_bn_error[256]

cdef enum:
    K_AFFINE = 1        # kernel flags: as the BN_* enum of kernels/batchnorm.cu
    K_VEC = 2
    K_STAT_IS_VAR = 4
    K_SHIFTED = 8
    K_ROWVEC = 16
    K_BIASED_RUNVAR = 32
    SMEM_LIMIT = 48 * 1024   # shared memory per CTA without opt-in
    MAX_SPLIT = 1024         # CTAs per channel at most (bounds the last CTA's combine)
    MIN_WALK = 128           # bytes per thread per array a split keeps: 2 rounds of 4 x 16-byte loads
    MAX_WALK = 4096          # bytes per thread per array a reduction walks before it is split
    TARGET_THREADS = 256


class Mode(enum.Enum):
    """spatial: one statistic per channel; per_activation: one per (c, *rest) position."""
    spatial = "spatial"
    per_activation = "per_activation"


_KERNEL_NAMES = ("bn_fwd_train", "bn_normalize", "bn_bwd", "bn_bwd_dx")
_SIGNATURES = ("PPPPPPPPPPPqqqffii", "PPPPPPPqqqfi", "PPPPPPPPPPPPPqqqfffffii", "PPPPPqqqi")
_CTYPES = ("float", "__half")
_MODE_SUFFIX = ("spatial", "pa")


def kernel_expressions():
    """Every kernel instantiation of batchnorm.cu (name expressions), in one list so it is compiled once."""
    return [f"{k}_{m}<{t}>" for t in _CTYPES for m in _MODE_SUFFIX for k in _KERNEL_NAMES]


def compile_options():
    """NVRTC options of batchnorm.cu: none beyond cybn's defaults (C++17, the kernel directory on the
    include path for welford.cuh, the wheel's CUDA headers)."""
    return ()


# `python -m cybn warmup` and the per-architecture build check compile every registered variant.
from cybn.jit.variants import register_variants
register_variants("batchnorm.cu", [(kernel_expressions(), compile_options())])


# ------------------------------------------------------------------------------------------ the core
cdef const char* bn_last_error() noexcept nogil:
    return cybn_bn_error


cdef int _fail(int status, const char* what) noexcept nogil:
    snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s", what)
    return status


cdef inline long long _cdiv(long long a, long long b) noexcept nogil:
    return (a + b - 1) // b


cdef inline long long _pow2_at_least(long long v) noexcept nogil:
    cdef long long p = 1
    while p < v:
        p *= 2
    return p


cdef inline long long _slots(const bn_desc* d, int kernel, long long threads, bn_plan* p) noexcept nogil:
    """Resident CTAs of this kernel and block size on the whole device (at least one per SM)."""
    cdef long long w = min(max(_cdiv(threads, 32), 1), 32)
    p.ctas_per_sm = d.occ[kernel][w - 1]
    return max(<long long>p.ctas_per_sm, 1) * max(<long long>d.sm_count, 1)


cdef long long _split(const bn_desc* d, int kernel, long long cols, long long walk, long long slots) noexcept nogil:
    """CTAs per column from the bytes each thread walks per array. Reductions (fwd_train, bwd): split
    while the columns fill less than one wave of resident CTAs and each thread keeps MIN_WALK bytes
    (2 rounds of its 4 x 16-byte loads in flight), as many as fit one wave; past MAX_WALK bytes a
    thread's serial walk is bounded, rounded up to whole waves. Element-wise launches (normalize,
    bwd_dx) only fill the device: at most one wave, each thread MIN_WALK bytes at least."""
    cdef long long P = 1, waves
    if cols < slots and walk >= 2 * MIN_WALK:
        P = min(slots // cols, walk // MIN_WALK)
    if (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD) and walk > MAX_WALK * P:
        waves = _cdiv(cols * _cdiv(walk, MAX_WALK), slots)
        P = max(_cdiv(walk, MAX_WALK), waves * slots // cols)
    return min(P, MAX_SPLIT)


cdef int bn_make_plan(const bn_desc* d, int kernel, int vec, bn_plan* p) noexcept nogil:
    """The launch heuristic, a pure function of the descriptor and the device facts prepare() put in
    it (SM count, the occupancy calculator's CTAs per SM per kernel and block size). Spatial: a group
    of G threads (whole warps) per channel, several channels per CTA when channels are small, and P
    CTAs per channel (the split, _split). Per-activation: BX consecutive features (coalesced) times R
    row lanes per CTA, the rows split over P CTAs. The replay cache stays within the shared memory that
    keeps the kernel's occupancy."""
    cdef long long units = 0, per_thread, cols, G, CPB, P, BX, R, slots, slot_bytes, arrays, budget, cap
    cdef long long stats = d.C if d.mode == BN_SPATIAL else d.C * d.S
    memset(p, 0, sizeof(bn_plan))
    p.vec = vec
    arrays = 2 if (kernel == BN_K_BWD or kernel == BN_K_BWD_DX) else 1
    if d.layout == BN_LAYOUT_NHWC:
        _nhwc_block(d, vec, p, &cols, &per_thread, &slot_bytes)
    elif d.mode == BN_SPATIAL:
        units = d.N * (d.S // (8 if d.dtype == BN_FLOAT16 else 4) if vec else d.S)
        slot_bytes = 16 if vec else (2 if d.dtype == BN_FLOAT16 else 4)
        if d.force_group > 0:  # whole warps, at most 1024 threads
            G = min(max(d.force_group // 32, 1) * 32, 1024)
        else:
            G = 32
            while G < TARGET_THREADS and units > G * 4:
                G *= 2
        CPB = TARGET_THREADS // G if G < TARGET_THREADS else 1
        if CPB > stats:
            CPB = stats
        cols = _cdiv(stats, CPB)
        per_thread = _cdiv(units, G)
        p.block[0] = <unsigned int>G
        p.block[1] = <unsigned int>CPB
    else:
        stats = d.C * d.S
        slot_bytes = 2 if d.dtype == BN_FLOAT16 else 4
        BX = _pow2_at_least(stats) if stats < 32 else 32
        R = TARGET_THREADS // BX
        if d.force_group > 0:  # a power of two (the column reduction is a tree), at most 256 threads
            R = min(_pow2_at_least(d.force_group + 1) // 2, TARGET_THREADS // BX)
        elif R > _pow2_at_least(d.N):
            R = _pow2_at_least(d.N)
        cols = _cdiv(stats, BX)
        per_thread = _cdiv(d.N, R)
        p.block[0] = <unsigned int>BX
        p.block[1] = <unsigned int>R
    p.block[2] = 1
    slots = _slots(d, kernel, <long long>p.block[0] * p.block[1], p)
    P = d.force_split if d.force_split > 0 else _split(d, kernel, cols, per_thread * slot_bytes, slots)
    if P > 65535:
        P = 65535
    p.grid[0] = <unsigned int>cols
    p.grid[1] = <unsigned int>P
    p.grid[2] = 1
    p.split = <int>P
    # The replay cache: only the fused one-launch paths (P == 1) read x (and dy) twice.
    if P == 1 and (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD):
        slot_bytes = 16 if (d.mode == BN_SPATIAL and vec) else 4
        budget = SMEM_LIMIT - <long long>d.static_shared[kernel]
        if p.ctas_per_sm > 0:
            budget = min(budget, <long long>d.smem_budget[kernel][min(_cdiv(<long long>p.block[0] * p.block[1], 32), 32) - 1])
        cap = budget // (<long long>p.block[0] * p.block[1] * slot_bytes * arrays)
        if d.force_cache >= 0:
            p.cache_units = <int>min(<long long>d.force_cache, cap)
        else:
            p.cache_units = <int>min(per_thread, cap)
        if p.cache_units < 0:
            p.cache_units = 0
        p.shared_bytes = <unsigned int>(p.cache_units * p.block[0] * p.block[1] * slot_bytes * arrays)
    return BN_OK


cdef inline size_t _round256(size_t n) noexcept nogil:
    return (n + 255) // 256 * 256


cdef enum:
    FWD_PART = 5    # floats per (statistic, CTA) partial: Welford n, mean, variance, compensated sum (2)
    FWD_TAIL = 4    # floats per statistic for the second launch: the mean (hi, lo), scale * invstd, pad
    BWD_PART = 6    # the backward's compensated sums (dy, dy * (x - hi), x - hi), 2 floats each
    BWD_TAIL = 4    # dx constants (a, dbias / M, k, lo) for the second launch


cdef inline size_t _partials_bytes(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    cdef size_t stats = <size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S)
    return _round256(stats * <size_t>p.split * (BWD_PART if kernel == BN_K_BWD else FWD_PART) * 4)


cdef size_t _scratch_bytes(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    """Workspace after the counters: the per-CTA partials, then the second launch's per-statistic tail."""
    cdef size_t stats = <size_t>(d.C if d.mode == BN_SPATIAL else d.C * d.S)
    if p.split <= 1:
        return 0
    return _partials_bytes(d, p, kernel) + _round256(stats * (BWD_TAIL if kernel == BN_K_BWD else FWD_TAIL) * 4)


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


cdef int bn_check_desc(const bn_desc* d) noexcept nogil:
    cdef long long stats
    if d.mode != BN_SPATIAL and d.mode != BN_PER_ACTIVATION:
        return _fail(BN_EINVAL, "descriptor: unknown mode")
    if d.dtype != BN_FLOAT32 and d.dtype != BN_FLOAT16:
        return _fail(BN_EINVAL, "descriptor: unknown dtype")
    if d.layout != BN_LAYOUT_NCHW and not (d.layout == BN_LAYOUT_NHWC and d.mode == BN_SPATIAL):
        return _fail(BN_EINVAL, "descriptor: unknown layout (NHWC is for spatial mode; per-activation is (N, F) "
                     "rows in either layout)")
    if d.N < 1 or d.C < 1 or d.S < 1:
        return _fail(BN_EINVAL, "descriptor: N, C and S must be positive")
    if d.N > (1LL << 62) // (2 if d.dtype == BN_FLOAT16 else 4) // d.C // d.S:
        return _fail(BN_EINVAL, "descriptor: N * C * S overflows 64 bits (as bytes: more than 2^62)")
    stats = d.C if d.mode == BN_SPATIAL else d.C * d.S
    if stats > (1LL << 31) - 1:
        return _fail(BN_EINVAL, "descriptor: more than 2^31 - 1 statistics")
    if not (d.epsilon > 0 and d.epsilon <= 3.4028234663852886e38):
        return _fail(BN_EINVAL, "descriptor: epsilon must be > 0 and finite")
    if not (d.factor >= 0 and d.factor <= 1):
        return _fail(BN_EINVAL, "descriptor: factor must be in [0, 1]")
    return BN_OK


cdef int _validate(const bn_desc* d, int kernel) noexcept nogil:
    cdef int st = bn_check_desc(d)
    if st != BN_OK:
        return st
    if d.kernels[kernel] == NULL:
        return _fail(BN_ENOTPREPARED, "descriptor: kernels not prepared (call prepare(dtype, mode))")
    return BN_OK


cdef inline bint _aligned(cydriver.CUdeviceptr p) noexcept nogil:
    return p % 16 == 0


cdef int _check_workspace(const bn_desc* d, const bn_plan* p, int kernel) noexcept nogil:
    if p.split > 1 and (d.workspace == 0 or d.workspace_bytes < _counter_bytes(d) + _scratch_bytes(d, p, kernel)):
        return _fail(BN_EWORKSPACE, "descriptor: workspace missing or smaller than bn_workspace_size()")
    return BN_OK


cdef struct _span:  # one argument's device bytes, for the aliasing check
    const char* name
    cydriver.CUdeviceptr p
    unsigned long long n


cdef int _no_overlap(_span* outs, int nouts, _span* ins, int nins, const bn_desc* d,
                     int in_place) noexcept nogil:
    """Every output against every input, every other output and the workspace, and the workspace against the
    inputs; partial overlaps too. in_place: outs[0] may be exactly ins[0] (or ins[1] when in_place == 2)."""
    cdef int i, j
    cdef _span* a
    cdef _span* b
    cdef _span ws
    ws.name = "workspace"; ws.p = d.workspace; ws.n = d.workspace_bytes if d.workspace else 0
    for i in range(nouts + 1):
        a = &outs[i] if i < nouts else &ws
        if a.p == 0 or a.n == 0:
            continue
        for j in range(nouts + nins):
            b = &outs[j] if j < nouts else &ins[j - nouts]
            if (j < nouts and j <= i and i < nouts) or b.p == 0 or b.n == 0:
                continue
            if not (a.p < b.p + b.n and b.p < a.p + a.n):
                continue
            if i == 0 and j >= nouts and j - nouts < in_place and a.p == b.p and a.n == b.n:
                continue
            if i == 0 and in_place == 2:  # say which in-place form is allowed
                snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s shares memory with %s: outputs and the "
                         "workspace must not overlap other arguments (%s may be exactly %s or %s)", a.name, b.name,
                         a.name, ins[0].name, ins[1].name)
            elif i == 0 and in_place:
                snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s shares memory with %s: outputs and the "
                         "workspace must not overlap other arguments (%s may be exactly %s)", a.name, b.name,
                         a.name, ins[0].name)
            else:
                snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s shares memory with %s: outputs and the "
                         "workspace must not overlap other arguments", a.name, b.name)
            return BN_EINVAL
    return BN_OK


cdef inline void _set_span(_span* s, const char* name, cydriver.CUdeviceptr p, unsigned long long n) noexcept nogil:
    s.name = name; s.p = p; s.n = n


cdef inline unsigned long long _data_bytes(const bn_desc* d) noexcept nogil:
    return <unsigned long long>d.N * d.C * d.S * (2 if d.dtype == BN_FLOAT16 else 4)


cdef inline unsigned long long _stat_bytes(const bn_desc* d) noexcept nogil:
    return <unsigned long long>(d.C if d.mode == BN_SPATIAL else d.C * d.S) * 4


cdef int _check_limits(const bn_plan* p) noexcept nogil:
    """Launch limits every GPU has, checked for every launch of a call before the first one is enqueued."""
    if (p.grid[0] < 1 or p.grid[0] > <unsigned int>2147483647 or p.grid[1] < 1 or p.grid[1] > 65535 or p.grid[2] < 1
            or p.grid[2] > 65535 or p.block[0] * p.block[1] * p.block[2] > 1024 or p.block[2] > 64):
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "launch plan grid (%u, %u, %u) block (%u, %u, %u) exceeds "
                 "the device's launch limits", p.grid[0], p.grid[1], p.grid[2], p.block[0], p.block[1], p.block[2])
        return BN_EINVAL
    return BN_OK


cdef int _launch(const bn_desc* d, int kernel, const bn_plan* p, cydriver.CUstream stream, void** args) noexcept nogil:
    cdef cydriver.CUresult r = cydriver.cuLaunchKernel(
        d.kernels[kernel], p.grid[0], p.grid[1], p.grid[2], p.block[0], p.block[1], p.block[2],
        p.shared_bytes, stream, args, NULL)
    if r != cydriver.CUDA_SUCCESS:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "cuLaunchKernel failed: %d", <int>r)
        return <int>r
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


cdef inline int _vec_ok(const bn_desc* d, cydriver.CUdeviceptr a, cydriver.CUdeviceptr b,
                        cydriver.CUdeviceptr c) noexcept nogil:
    """16-byte units: 1 when every row is 16-byte aligned (S a multiple of the vector width, pointers
    aligned); 2 (ROWVEC) when N == 1 and the pointers agree modulo 16, so each channel is one row
    whose aligned middle is vectorised between a scalar head and tail; else 0 (element loads)."""
    cdef long long V = 8 if d.dtype == BN_FLOAT16 else 4
    if d.layout == BN_LAYOUT_NHWC:
        return _nhwc_vec_ok(d, a, b, c)
    if d.mode != BN_SPATIAL:
        return 0
    if d.S % V == 0 and _aligned(a) and _aligned(b) and _aligned(c):
        return 1
    if d.N == 1 and d.S >= 2 * V and a % 16 == b % 16 and a % 16 == c % 16:
        return 2
    return 0


include "plan_nhwc.pxi"


cdef inline int _vec_flags(int vec) noexcept nogil:
    return 0 if vec == 0 else (K_VEC if vec == 1 else K_VEC | K_ROWVEC)


cdef int bn_forward_train_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                               cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                               cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                               cydriver.CUstream stream) noexcept nogil:
    cdef int st = _validate(d, BN_K_FWD_TRAIN)
    if st != BN_OK:
        return st
    st = _validate(d, BN_K_NORMALIZE)
    if st != BN_OK:
        return st
    if x == 0 or y == 0 or running_mean == 0 or running_var == 0 or save_mean == 0 or save_invstd == 0:
        return _fail(BN_EINVAL, "forward_train: null x, y, running or saved statistics pointer")
    if (d.flags & BN_DESC_AFFINE) and (scale == 0 or bias == 0):
        return _fail(BN_EINVAL, "forward_train: affine descriptor with a null scale or bias")
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d), pb = kb if d.flags & BN_DESC_AFFINE else 0
    cdef _span outs[5]
    cdef _span ins[3]
    _set_span(&outs[0], "y", y, xb); _set_span(&outs[1], "running_mean", running_mean, kb)
    _set_span(&outs[2], "running_var", running_var, kb); _set_span(&outs[3], "save_mean", save_mean, kb)
    _set_span(&outs[4], "save_invstd", save_invstd, kb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "scale", scale, pb); _set_span(&ins[2], "bias", bias, pb)
    st = _no_overlap(outs, 5, ins, 3, d, 1)
    if st != BN_OK:
        return st
    cdef bn_plan p, q
    bn_make_plan(d, BN_K_FWD_TRAIN, _vec_ok(d, x, y, x), &p)
    st = _check_workspace(d, &p, BN_K_FWD_TRAIN)
    if st == BN_OK:
        st = _check_limits(&p)
    if st == BN_OK and p.split > 1:  # the second launch too, before the first updates the statistics
        bn_make_plan(d, BN_K_NORMALIZE, p.vec, &q)
        st = _check_limits(&q)
    if st != BN_OK:
        return st
    cdef cydriver.CUdeviceptr counters = d.workspace
    cdef cydriver.CUdeviceptr partials = d.workspace + _counter_bytes(d)
    cdef cydriver.CUdeviceptr shifted = 0
    if p.split > 1:
        shifted = partials + _partials_bytes(d, &p, BN_K_FWD_TRAIN)
        st = _zero_counters(d, stream)
        if st != BN_OK:
            return st
    else:
        counters = partials = 0
    cdef long long N = d.N, C = d.C, S = d.S
    cdef float eps = d.epsilon, factor = d.factor
    cdef int flags = ((K_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec)
                      | (K_BIASED_RUNVAR if d.flags & BN_DESC_BIASED_RUNNING_VAR else 0))
    cdef int cache = p.cache_units
    cdef void* args[18]
    args[0] = &x; args[1] = &y; args[2] = &scale; args[3] = &bias; args[4] = &running_mean
    args[5] = &running_var; args[6] = &save_mean; args[7] = &save_invstd; args[8] = &partials
    args[9] = &counters; args[10] = &shifted; args[11] = &N; args[12] = &C; args[13] = &S
    args[14] = &eps; args[15] = &factor; args[16] = &flags; args[17] = &cache
    st = _launch(d, BN_K_FWD_TRAIN, &p, stream, args)
    if st != BN_OK or p.split == 1:
        return st
    # Second launch of the split plan (q, planned above): normalise with the combined statistics.
    flags = flags | K_SHIFTED
    cdef void* nargs[12]
    nargs[0] = &x; nargs[1] = &y; nargs[2] = &save_mean; nargs[3] = &save_invstd; nargs[4] = &scale
    nargs[5] = &bias; nargs[6] = &shifted; nargs[7] = &N; nargs[8] = &C; nargs[9] = &S; nargs[10] = &eps
    nargs[11] = &flags
    return _launch(d, BN_K_NORMALIZE, &q, stream, nargs)


cdef int bn_forward_infer_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                               cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                               cydriver.CUstream stream) noexcept nogil:
    cdef int st = _validate(d, BN_K_NORMALIZE)
    if st != BN_OK:
        return st
    if x == 0 or y == 0 or running_mean == 0 or running_var == 0:
        return _fail(BN_EINVAL, "forward_infer: null x, y or running statistics pointer")
    if (d.flags & BN_DESC_AFFINE) and (scale == 0 or bias == 0):
        return _fail(BN_EINVAL, "forward_infer: affine descriptor with a null scale or bias")
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d), pb = kb if d.flags & BN_DESC_AFFINE else 0
    cdef _span outs[1]
    cdef _span ins[5]
    _set_span(&outs[0], "y", y, xb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "scale", scale, pb); _set_span(&ins[2], "bias", bias, pb)
    _set_span(&ins[3], "running_mean", running_mean, kb); _set_span(&ins[4], "running_var", running_var, kb)
    st = _no_overlap(outs, 1, ins, 5, d, 1)
    if st != BN_OK:
        return st
    cdef bn_plan p
    bn_make_plan(d, BN_K_NORMALIZE, _vec_ok(d, x, y, x), &p)
    st = _check_limits(&p)
    if st != BN_OK:
        return st
    cdef long long N = d.N, C = d.C, S = d.S
    cdef float eps = d.epsilon
    cdef int flags = (K_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec) | K_STAT_IS_VAR
    cdef cydriver.CUdeviceptr none = 0
    cdef void* args[12]
    args[0] = &x; args[1] = &y; args[2] = &running_mean; args[3] = &running_var; args[4] = &scale
    args[5] = &bias; args[6] = &none; args[7] = &N; args[8] = &C; args[9] = &S; args[10] = &eps
    args[11] = &flags
    return _launch(d, BN_K_NORMALIZE, &p, stream, args)


cdef int bn_backward_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                          cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr mean,
                          cydriver.CUdeviceptr stat, cydriver.CUdeviceptr scale_grad,
                          cydriver.CUdeviceptr bias_grad, cydriver.CUdeviceptr batch_scale_grad,
                          cydriver.CUdeviceptr batch_bias_grad, int frozen, cydriver.CUstream stream) noexcept nogil:
    cdef int st = _validate(d, BN_K_BWD)
    if st != BN_OK:
        return st
    st = _validate(d, BN_K_BWD_DX)
    if st != BN_OK:
        return st
    if x == 0 or dy == 0 or dx == 0 or mean == 0 or stat == 0 or scale_grad == 0 or bias_grad == 0:
        return _fail(BN_EINVAL, "backward: null x, dy, dx, statistics or gradient pointer")
    if (d.flags & BN_DESC_AFFINE) and scale == 0:
        return _fail(BN_EINVAL, "backward: affine descriptor with a null scale")
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d)
    cdef _span outs[5]
    cdef _span ins[5]
    _set_span(&outs[0], "dx", dx, xb); _set_span(&outs[1], "scale_grad", scale_grad, kb)
    _set_span(&outs[2], "bias_grad", bias_grad, kb); _set_span(&outs[3], "batch_scale_grad", batch_scale_grad, kb)
    _set_span(&outs[4], "batch_bias_grad", batch_bias_grad, kb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "dy", dy, xb)
    _set_span(&ins[2], "scale", scale, kb if d.flags & BN_DESC_AFFINE else 0)
    _set_span(&ins[3], "mean", mean, kb); _set_span(&ins[4], "invstd or var", stat, kb)
    st = _no_overlap(outs, 5, ins, 5, d, 2)
    if st != BN_OK:
        return st
    cdef float ab[4]
    if d.flags & BN_DESC_ACCUMULATE:
        ab[0] = d.scale_grad_alpha; ab[1] = d.scale_grad_beta; ab[2] = d.bias_grad_alpha; ab[3] = d.bias_grad_beta
    else:
        ab[0] = 1; ab[1] = 0; ab[2] = 1; ab[3] = 0
    cdef bn_plan p, q
    bn_make_plan(d, BN_K_BWD, _vec_ok(d, x, dy, dx), &p)
    st = _check_workspace(d, &p, BN_K_BWD)
    if st == BN_OK:
        st = _check_limits(&p)
    if st == BN_OK and p.split > 1 and not frozen:  # the dx launch too, before the first writes the gradients
        bn_make_plan(d, BN_K_BWD_DX, p.vec, &q)
        st = _check_limits(&q)
    if st != BN_OK:
        return st
    cdef cydriver.CUdeviceptr counters = d.workspace if p.split > 1 else 0
    cdef cydriver.CUdeviceptr partials = d.workspace + _counter_bytes(d) if p.split > 1 else 0
    cdef cydriver.CUdeviceptr tail = partials + _partials_bytes(d, &p, BN_K_BWD) if p.split > 1 else 0
    cdef long long N = d.N, C = d.C, S = d.S
    cdef float eps = d.epsilon
    cdef int flags = ((K_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec)
                      | (K_STAT_IS_VAR if frozen else 0))
    cdef int cache = p.cache_units
    if p.split > 1:
        st = _zero_counters(d, stream)
        if st != BN_OK:
            return st
    cdef void* args[23]
    args[0] = &x; args[1] = &dy; args[2] = &dx; args[3] = &scale; args[4] = &mean; args[5] = &stat
    args[6] = &scale_grad; args[7] = &bias_grad; args[8] = &batch_scale_grad; args[9] = &batch_bias_grad
    args[10] = &partials; args[11] = &counters; args[12] = &tail; args[13] = &N; args[14] = &C; args[15] = &S
    args[16] = &eps; args[17] = &ab[0]; args[18] = &ab[1]; args[19] = &ab[2]; args[20] = &ab[3]
    args[21] = &flags; args[22] = &cache
    st = _launch(d, BN_K_BWD, &p, stream, args)
    if st != BN_OK or p.split == 1 or frozen:
        return st
    # Second launch of the split plan (q, planned above): dx from the constants the first launch's last CTAs wrote.
    cdef void* dargs[9]
    dargs[0] = &x; dargs[1] = &dy; dargs[2] = &dx; dargs[3] = &mean; dargs[4] = &tail; dargs[5] = &N
    dargs[6] = &C; dargs[7] = &S; dargs[8] = &flags
    return _launch(d, BN_K_BWD_DX, &q, stream, dargs)


# ------------------------------------------------------------------------------------------ prepare
cdef class _Prepared:
    """The loaded kernels of one (context, dtype, mode): handles for the core, Functions kept alive."""
    cdef cydriver.CUfunction kernels[4]
    cdef unsigned int static_shared[4]
    cdef list functions
    cdef readonly int sm_count
    cdef unsigned char occ[4][32]
    cdef unsigned int smem_budget[4][32]

    cdef void fill(self, bn_desc* d) noexcept:
        """Copy the kernels and the device facts the plans are made from into a descriptor."""
        d.kernels = self.kernels
        d.static_shared = self.static_shared
        d.sm_count = self.sm_count
        d.occ = self.occ
        d.smem_budget = self.smem_budget


cdef dict _prepared = {}


cdef int _occupancy(cydriver.CUfunction f, int threads, size_t smem) except -1:
    cdef int n = 0
    check(cydriver.cuOccupancyMaxActiveBlocksPerMultiprocessor(&n, f, threads, smem),
          "cuOccupancyMaxActiveBlocksPerMultiprocessor")
    return n


cdef int _query_occupancy(_Prepared pr, int k, int max_threads) except -1:
    """Once per (kernel, whole warps per block): CTAs per SM from the driver's occupancy calculator with no dynamic
    shared memory (registers, warps, slots), and the most dynamic shared memory (256-byte steps, within
    the 48 KiB a CTA gets without opt-in) that keeps that many resident, found by bisection on the same
    calculator: the replay cache may use that room and never lowers occupancy."""
    cdef int i, threads, occ
    cdef size_t lo, hi, mid, cap = SMEM_LIMIT - pr.static_shared[k]
    for i in range(32):
        threads = 32 * (i + 1)
        occ = _occupancy(pr.kernels[k], threads, 0) if threads <= max_threads else 0
        pr.occ[k][i] = <unsigned char>min(occ, 255)
        lo, hi = 0, cap // 256
        while occ > 0 and lo < hi:  # largest 256-byte multiple with the same occupancy
            mid = (lo + hi + 1) // 2
            if _occupancy(pr.kernels[k], threads, mid * 256) >= occ:
                lo = mid
            else:
                hi = mid - 1
        pr.smem_budget[k][i] = <unsigned int>(lo * 256)
    return 0


def prepare(dtype, mode="spatial", layout="NCHW"):
    """Compile (once per process, through the kernel cache) and load (once per context) the kernels
    for `dtype` (float32/float16), `mode` and `layout`."""
    cdef int md = _mode_code(mode)
    return _prepare(_dtype_code(dtype, "dtype"), md, _layout_code(layout, md))


cdef _Prepared _prepare(int dt, int md, int layout=BN_LAYOUT_NCHW):
    cdef cydriver.CUcontext ctx = ensure_context()
    key = (<size_t>ctx, dt, md, layout)
    cdef _Prepared pr = _prepared.get(key)
    if pr is not None:
        return pr
    from cybn.jit import functions as kernels
    from cybn.driver.device import Device
    pr = _Prepared.__new__(_Prepared)
    pr.functions = []
    nhwc = layout == BN_LAYOUT_NHWC
    exprs = nhwc_kernel_expressions() if nhwc else kernel_expressions()
    cdef Function f
    for i in range(BN_NKERNELS):
        if nhwc:  # the same arguments as the spatial kernels (batchnorm_nhwc.cu)
            name = f"{_NHWC_KERNEL_NAMES[i]}<{_NHWC_CTYPES[dt]}>"
        else:
            name = f"{_KERNEL_NAMES[i]}_{_MODE_SUFFIX[md]}<{_CTYPES[dt]}>"
        f = kernels.get_function("batchnorm_nhwc.cu" if nhwc else "batchnorm.cu", name, _SIGNATURES[i],
                                 options=compile_options(), name_expressions=exprs)
        pr.functions.append(f)
        pr.kernels[i] = f.func
        attrs = f.attributes
        pr.static_shared[i] = <unsigned int>attrs["shared_size_bytes"]
        _query_occupancy(pr, i, attrs["max_threads_per_block"])
    pr.sm_count = Device(current_ordinal()).sm_count
    _prepared[key] = pr
    return pr


cdef int bn_prepare_desc(bn_desc* d) except -1:
    """Kernel handles, their static shared memory, the SM count and occupancy of d.dtype/d.mode for the current
    (primary) context; compiles/loads on first use. For the Cython/C faces (cybn.capi)."""
    if d.dtype != BN_FLOAT32 and d.dtype != BN_FLOAT16:
        raise ValueError(f"unknown dtype code {d.dtype}")
    if d.mode != BN_SPATIAL and d.mode != BN_PER_ACTIVATION:
        raise ValueError(f"unknown mode code {d.mode}")
    if d.layout != BN_LAYOUT_NCHW and not (d.layout == BN_LAYOUT_NHWC and d.mode == BN_SPATIAL):
        raise ValueError(f"unknown layout code {d.layout} (NHWC is for spatial mode)")
    _prepare(d.dtype, d.mode, d.layout).fill(d)
    return 0


# ------------------------------------------------------------------------------------------ workspace
# (context, stream, thread) -> DeviceBuffer, least recently used first. Plain scratch: the cores zero a split
# call's counters on the stream themselves (_zero_counters), so no content needs to survive between calls.
# Lifetime: a cybn Stream's entries go when it is destroyed (cybn.stream's destroy hook), a thread's when the
# thread exits (_ThreadWorkspaces), and at most MAX_WORKSPACES stay (foreign handles cannot grow the table).
# A call holds its buffer (_busy) from _finish_desc to the end of its launches; nothing frees a held buffer.
cdef dict _workspaces = {}
cdef dict _busy = {}  # id(buffer) -> calls in flight using it
cdef list _retired = []  # replaced by a larger one: queued work may still use them
_ws_lock = threading.RLock()  # reentrant: a Stream collected while it is held runs the destroy hook
_ws_tls = threading.local()
MAX_WORKSPACES = 32


cdef _workspace_key(cydriver.CUcontext ctx, cydriver.CUstream stream):
    # Per thread too, for every stream: a split call enqueues two launches that share the workspace's
    # partials and (shift, mean), so two threads on one stream (the legacy default stream, most often)
    # could enqueue A1 B1 A2 B2 and A's normalisation would read B's mean. (The per-thread default
    # stream, handle 2, is moreover a different stream in every thread.)
    return (<size_t>ctx, <size_t>stream, threading.get_ident())


class _ThreadWorkspaces:
    """Kept in each calling thread's local storage: collected when the thread exits, it drops the thread's
    workspaces."""

    def __init__(self, ident):
        self.ident = ident

    def __del__(self):
        try:
            _drop_workspaces(lambda key, ident=self.ident: key[2] == ident, 0)
        except Exception:  # interpreter shutdown: nothing to report to
            pass


cdef DeviceBuffer _workspace(cydriver.CUcontext ctx, cydriver.CUstream stream, size_t nbytes):
    """The stream's (and thread's) workspace of at least nbytes, held (_busy) until _release."""
    if getattr(_ws_tls, "owner", None) is None:
        _ws_tls.owner = _ThreadWorkspaces(threading.get_ident())
    key = _workspace_key(ctx, stream)
    cdef DeviceBuffer buf
    with _ws_lock:
        buf = _workspaces.pop(key, None)
        if buf is not None and buf.nbytes >= nbytes:
            _workspaces[key] = buf  # now the most recently used
            _busy[id(buf)] = _busy.get(id(buf), 0) + 1
            return buf
        if buf is not None:
            _retired.append(buf)
    cdef size_t size = 1 << 16
    while size < nbytes:
        size *= 2
    buf = DeviceBuffer(size)
    with _ws_lock:
        _workspaces[key] = buf
        _busy[id(buf)] = _busy.get(id(buf), 0) + 1
        over = len(_workspaces) - MAX_WORKSPACES
    if over > 0:
        _evict_oldest(over)
    return buf


cdef void _release(DeviceBuffer buf):
    if buf is None:
        return
    with _ws_lock:
        n = _busy.pop(id(buf)) - 1
        if n:
            _busy[id(buf)] = n


def _evict_oldest(n):
    oldest = list(_workspaces)[:n]
    _drop_workspaces(lambda key: key in oldest, 0)


def _drop_workspaces(predicate, size_t stream):
    """Drop the idle entries whose key matches, after their work is done (that stream synchronised, or the
    whole context when stream is 0)."""
    with _ws_lock:
        keys = [k for k, b in _workspaces.items() if predicate(k) and id(b) not in _busy]
        if not keys:
            return
        ensure_context()
        with nogil:
            if stream:
                cydriver.cuStreamSynchronize(<cydriver.CUstream>stream)
            else:
                cydriver.cuCtxSynchronize()
        dropped = [_workspaces.pop(k) for k in keys]
    del dropped


def _on_stream_destroyed(size_t handle):
    """cybn.stream calls it before destroying a stream it owns."""
    _drop_workspaces(lambda key: key[1] == handle, handle)


def workspace_count():
    """(workspaces kept, retired ones): for tests of their lifetime."""
    with _ws_lock:
        return len(_workspaces), len(_retired)


def free_workspaces():
    """Free the kept workspaces (after synchronising the context, so no queued launch still uses them);
    the next split launch allocates fresh ones. A workspace a call in another thread is using right now is
    kept (freed by a later call). For leak accounting in tests and at shutdown."""
    with _ws_lock:
        if not _workspaces and not _retired:
            return
        ensure_context()
        with nogil:
            check(cydriver.cuCtxSynchronize(), "cuCtxSynchronize")
        keep = {k: b for k, b in _workspaces.items() if id(b) in _busy}
        dropped = list(_workspaces.values()) + _retired[:]
        _workspaces.clear()
        _workspaces.update(keep)
        _retired[:] = [b for b in dropped if id(b) in _busy and b not in keep.values()]
    del dropped


import sys as _sys
import cybn.driver.stream  # noqa: E402 - registers the destroy hook (cybn.stream is a callable module)
_sys.modules["cybn.driver.stream"]._destroy_hooks.append(_on_stream_destroyed)


# ------------------------------------------------------------------------------------------ overrides
cdef int _force_group = 0
cdef int _force_split = 0
cdef int _force_cache = -1


class plan_override:
    """Context manager for tests (process-wide, not thread-safe): force the threads per channel (spatial) / row lanes per CTA
    (per-activation, a power of two), the CTAs per channel, and the cache slots per thread, so that
    small data exercises the split, big-grid and uncached paths."""

    def __init__(self, group=0, split=0, cache=-1):
        if group and (group < 1 or group > 1024):
            raise ValueError("plan_override: group must be in [1, 1024]")
        if split and not 1 <= split <= 65535:
            raise ValueError("plan_override: split must be in [1, 65535]")
        self.values = (int(group), int(split), int(cache))

    def __enter__(self):
        global _force_group, _force_split, _force_cache
        self.saved = (_force_group, _force_split, _force_cache)
        _force_group, _force_split, _force_cache = self.values
        return self

    def __exit__(self, *exc):
        global _force_group, _force_split, _force_cache
        _force_group, _force_split, _force_cache = self.saved
        return False


# ------------------------------------------------------------------------------------------ validation
_DTYPES = {np.dtype(np.float32): BN_FLOAT32, np.dtype(np.float16): BN_FLOAT16}


cdef int _dtype_code(dtype, str what) except -1:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what} must be float32 or float16, got {dtype!r}") from None
    code = _DTYPES.get(dt)
    if code is None:
        raise TypeError(f"{what} must be float32 or float16, got {dt}")
    return code


cdef int _mode_code(mode) except -1:
    m = mode.value if isinstance(mode, enum.Enum) else mode
    if m == "spatial":
        return BN_SPATIAL
    if m == "per_activation":
        return BN_PER_ACTIVATION
    raise ValueError(f"mode must be 'spatial' or 'per_activation' (or a Mode), got {mode!r}")


cdef int _layout_code(layout, int mode) except -1:
    """NCHW: the channel axis is 1; NHWC: the channel axis is last. Per-activation statistics are one per
    non-batch position, so either layout is the same (N, F) rows: the NCHW per-activation kernels."""
    if layout == "NCHW":
        return BN_LAYOUT_NCHW
    if layout == "NHWC":
        return BN_LAYOUT_NHWC if mode == BN_SPATIAL else BN_LAYOUT_NCHW
    raise ValueError(f"layout must be 'NCHW' (channel axis 1) or 'NHWC' (channel axis last), got {layout!r}")


cdef int _fill_shape(bn_desc* d, tuple shape, layout) except -1:
    """N, C, S of the descriptor from a shape: NCHW (N, C, *spatial), NHWC (N, *spatial, C)."""
    d.layout = _layout_code(layout, d.mode)
    d.N = shape[0]
    cdef Py_ssize_t last = len(shape) - 1
    d.C = shape[last] if layout == "NHWC" else shape[1]
    d.S = 1
    for n in (shape[1:last] if layout == "NHWC" else shape[2:]):
        d.S *= n
    if layout == "NHWC" and d.mode == BN_PER_ACTIVATION:  # statistics in memory order: (N, F) rows
        d.C, d.S = d.C * d.S, 1
    return 0


cdef GPUArray _array(obj, str what):
    """obj as a GPUArray on the current device: a GPUArray, or a C-contiguous foreign device array
    (__cuda_array_interface__)."""
    cdef GPUArray a
    if isinstance(obj, GPUArray):
        a = obj
    elif hasattr(obj, "__cuda_array_interface__"):
        from cybn.array.gpuarray import from_cuda_array_interface
        try:
            a = from_cuda_array_interface(obj)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: {e}") from None
    else:
        raise TypeError(f"{what} must be a GPUArray (or a C-contiguous device array), got {type(obj).__name__}")
    if a.size:  # an empty array has no memory to check (and is refused by the shape checks)
        _check_device(a, what)
    return a


cdef int _check_device(GPUArray a, str what) except -1:
    """The array's memory must belong to the current device (the one the kernels launch on)."""
    cdef int ordinal = -1
    ensure_context()
    cdef cydriver.CUresult r = cydriver.cuPointerGetAttribute(
        &ordinal, cydriver.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, <cydriver.CUdeviceptr>a.ptr_)
    if r != cydriver.CUDA_SUCCESS or ordinal < 0:
        raise ValueError(f"{what} (pointer {a.ptr_:#x}) is not memory the driver knows")
    if ordinal != current_ordinal():
        raise ValueError(f"{what} lives on device {ordinal}, but the current device is {current_ordinal()}")
    # The whole extent must lie in that one allocation: a view longer than its memory would fail only at
    # a later launch, after earlier ones had already written (all-or-nothing needs it checked up front).
    cdef cydriver.CUdeviceptr base = 0
    cdef size_t size = 0
    r = cydriver.cuMemGetAddressRange(&base, &size, <cydriver.CUdeviceptr>a.ptr_)
    if r == cydriver.CUDA_SUCCESS and a.ptr_ + <size_t>a.nbytes > base + size:
        raise ValueError(f"{what} (pointer {a.ptr_:#x}, {a.nbytes} bytes) runs past the end of its allocation "
                         f"({size} bytes at {base:#x}): the view is larger than its memory")
    return 0


cdef GPUArray _param(obj, str what, long long count, bint optional=False):
    if obj is None:
        if optional:
            return None
        raise TypeError(f"{what} must be a float32 GPUArray, got None")
    cdef GPUArray a = _array(obj, what)
    if a.dtype != np.float32:
        raise TypeError(f"{what} must be float32, got {a.dtype}")
    if a.size != count:
        raise ValueError(f"{what} must have {count} elements (one per statistic), got shape {a.shape}")
    return a


cdef GPUArray _like(obj, str what, GPUArray x):
    if obj is None:
        return None
    cdef GPUArray a = _array(obj, what)
    if a.dtype != x.dtype:
        raise TypeError(f"{what} must have x's dtype {x.dtype}, got {a.dtype}")
    if a.shape != x.shape:
        raise ValueError(f"{what} must have x's shape {x.shape}, got {a.shape}")
    return a


_FLT_MAX = float(np.finfo(np.float32).max)


cdef double _real(value, str what) except? -1:
    # Real numbers only: float("1e-5") and float(True) would hide a caller's mistake.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number (not str or bool), got {value!r}")
    return float(value)


cdef float _epsilon(epsilon) except? -1:
    e = _real(epsilon, "epsilon")
    # The kernels take it as float32: 1e-50 would round to 0 there and 1e39 to inf.
    if not (0 < e <= _FLT_MAX) or np.float32(e) == 0:
        raise ValueError(f"epsilon must be a positive finite number (as a float32), got {epsilon!r}")
    return e


cdef int _no_aliasing(list outputs, list inputs, tuple in_place) except -1:
    """The Python face's aliasing check is the core's (_no_overlap), run on the arguments under their Python
    names before anything is allocated or launched. outputs/inputs: [(name, GPUArray or None)]; in_place:
    the (output, input) pairs that may be exactly the same memory: outputs[0] with inputs[0] (and inputs[1])."""
    cdef _span outs[8]
    cdef _span ins[8]
    cdef bn_desc d
    cdef GPUArray a
    cdef list names = [n.encode() for n, _ in outputs + inputs]  # kept alive while the spans point at them
    cdef int i, k = len(in_place)
    assert len(outputs) <= 8 and len(inputs) <= 8 and k <= 2
    for i, (out_name, in_name) in enumerate(in_place):
        assert out_name == outputs[0][0] and in_name == inputs[i][0], in_place
    for i in range(len(outputs)):
        a = outputs[i][1]
        _set_span(&outs[i], names[i], 0 if a is None else a.ptr_, 0 if a is None else a.nbytes)
    for i in range(len(inputs)):
        a = inputs[i][1]
        _set_span(&ins[i], names[len(outputs) + i], 0 if a is None else a.ptr_, 0 if a is None else a.nbytes)
    memset(&d, 0, sizeof(d))  # no workspace yet: the core checks it against the arguments when it runs
    if _no_overlap(outs, len(outputs), ins, len(inputs), &d, k) != BN_OK:
        raise ValueError(bn_last_error().decode())
    return 0


cdef float _factor(factor) except? -1:
    f = _real(factor, "factor")
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"factor must be in [0, 1], got {factor!r}")
    return f


cdef long long _fill_desc(bn_desc* d, GPUArray x, mode, str what, layout="NCHW") except -1:
    """Shape part of the descriptor from x; returns the number of statistics."""
    memset(d, 0, sizeof(bn_desc))
    d.mode = _mode_code(mode)
    d.dtype = _dtype_code(x.dtype, what + ".dtype")
    if len(x.shape) < 2:
        raise ValueError(f"{what} must be (N, C, ...) or (N, ..., C) with at least 2 dimensions, got shape "
                         f"{x.shape}")
    if any(n < 1 for n in x.shape):
        raise ValueError(f"{what} has an empty dimension: shape {x.shape}")
    _fill_shape(d, tuple(x.shape), layout)
    if d.mode == BN_PER_ACTIVATION and d.C * d.S > (1LL << 31) - 1:
        raise ValueError(f"{what}: more than 2^31 - 1 statistics")
    d.force_group = _force_group
    d.force_split = _force_split
    d.force_cache = _force_cache
    return d.C if d.mode == BN_SPATIAL else d.C * d.S


cdef DeviceBuffer _finish_desc(bn_desc* d, cydriver.CUstream stream):
    """Kernels and workspace, after every argument is validated and the outputs exist; returns the workspace
    (or None), held until the caller's _release right after its core call."""
    bn_prepare_desc(d)
    cdef size_t need = bn_workspace_size(d)
    cdef DeviceBuffer ws = None
    if need:
        ws = _workspace(ensure_context(), stream, need)
        d.workspace = ws.ptr
        d.workspace_bytes = ws.nbytes
    return ws


cdef int _status(int st, const char* call) except -1:
    if st == BN_OK:
        return 0
    if st > 0:  # the core's text starts with the driver call that failed ("cuMemsetD32Async failed: ...")
        text = bn_last_error()
        name = text.split(b" failed", 1)[0] if b" failed" in text else <bytes>call
        raise_error(<cydriver.CUresult>st, name)
    if st == BN_EINVAL:  # a check in the core the Python face's own did not catch: the core's words
        raise ValueError(bn_last_error().decode())
    raise RuntimeError(f"{call.decode()}: {bn_last_error().decode()}")


cdef int _used_on(cydriver.CUstream s, tuple arrays) except -1:
    """Arrays whose pooled blocks were taken on another stream: the pool must wait for s before reusing them."""
    cdef GPUArray a
    for a in arrays:
        if a is not None and a.gpudata is not None:
            a.gpudata._used_on(<size_t>s)
    return 0


cdef inline cydriver.CUdeviceptr _ptr(GPUArray a) noexcept:
    return 0 if a is None else a.ptr_


def _new(shape, dtype, stream):
    from cybn.array.gpuarray import empty
    return empty(shape, dtype, stream=stream)


# ------------------------------------------------------------------------------------------ public API
def forward_train(x, scale, bias, running_mean, running_var, epsilon, factor, out=None, save_mean=None,
                  save_invstd=None, mode="spatial", stream=None, running_var_unbiased=True, layout="NCHW"):
    """Training forward. Updates running_mean/running_var in place; returns (y, save_mean, save_invstd).
    scale and bias may both be None (non-affine: 1 and 0). out may be x (in place).
    running_var_unbiased=False: the biased batch variance var_b (no M / (M - 1)) goes into running_var,
    as MXNet and Paddle do (a kernel flag, same launches).
    layout="NHWC": x is channels-last, (N, C) / (N, L, C) / (N, H, W, C) / (N, D, H, W, C), with its own
    kernels (coalesced over C, no transpose); the statistics are still one per channel."""
    cdef bn_desc d
    cdef GPUArray gx = _array(x, "x")
    cdef long long K = _fill_desc(&d, gx, mode, "x", layout)
    if (d.N * d.S if d.mode == BN_SPATIAL else d.N) == 1:
        # Batch statistics of one value: variance 0, output 0, and the unbiased running variance would
        # divide by M - 1 = 0 (cuDNN refuses it too).
        raise ValueError(f"x of shape {gx.shape}: training needs more than one value per statistic "
                         f"({'N * spatial size' if d.mode == BN_SPATIAL else 'N'} is 1, so the batch variance is "
                         f"undefined); use a larger batch, or forward_infer with the running statistics")
    cdef GPUArray gs = _param(scale, "scale", K, True), gb = _param(bias, "bias", K, True)
    if (gs is None) != (gb is None):
        raise TypeError("scale and bias must both be given or both be None (non-affine)")
    cdef GPUArray rm = _param(running_mean, "running_mean", K), rv = _param(running_var, "running_var", K)
    cdef GPUArray sm = _param(save_mean, "save_mean", K, True), si = _param(save_invstd, "save_invstd", K, True)
    cdef GPUArray gy = _like(out, "out", gx)
    _no_aliasing([("out", gy), ("save_mean", sm), ("save_invstd", si), ("running_mean", rm), ("running_var", rv)],
                 [("x", gx), ("scale", gs), ("bias", gb)], (("out", "x"),))
    d.epsilon = _epsilon(epsilon)
    d.factor = _factor(factor)
    d.flags = (BN_DESC_AFFINE if gs is not None else 0) | (0 if running_var_unbiased else BN_DESC_BIASED_RUNNING_VAR)
    cdef cydriver.CUstream s = resolve_stream(stream)
    if gy is None:
        gy = _new(gx.shape, gx.dtype, stream)
    if sm is None:
        sm = _new((K,), np.float32, stream)
    if si is None:
        si = _new((K,), np.float32, stream)
    cdef cydriver.CUdeviceptr p[8]
    p[0] = gx.ptr_; p[1] = gy.ptr_; p[2] = _ptr(gs); p[3] = _ptr(gb); p[4] = rm.ptr_; p[5] = rv.ptr_
    p[6] = sm.ptr_; p[7] = si.ptr_
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_forward_train_core(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gy, gs, gb, rm, rv, sm, si))
    return gy, sm, si


def forward_infer(x, scale, bias, running_mean, running_var, epsilon, out=None, mode="spatial", stream=None,
                  layout="NCHW"):
    """Inference forward with the running statistics; returns y. out may be x (in place). layout as in
    forward_train."""
    cdef bn_desc d
    cdef GPUArray gx = _array(x, "x")
    cdef long long K = _fill_desc(&d, gx, mode, "x", layout)
    cdef GPUArray gs = _param(scale, "scale", K, True), gb = _param(bias, "bias", K, True)
    if (gs is None) != (gb is None):
        raise TypeError("scale and bias must both be given or both be None (non-affine)")
    cdef GPUArray rm = _param(running_mean, "running_mean", K), rv = _param(running_var, "running_var", K)
    cdef GPUArray gy = _like(out, "out", gx)
    _no_aliasing([("out", gy)], [("x", gx), ("scale", gs), ("bias", gb), ("running_mean", rm), ("running_var", rv)],
                 (("out", "x"),))
    d.epsilon = _epsilon(epsilon)
    d.factor = 0
    d.flags = BN_DESC_AFFINE if gs is not None else 0
    cdef cydriver.CUstream s = resolve_stream(stream)
    if gy is None:
        gy = _new(gx.shape, gx.dtype, stream)
    cdef cydriver.CUdeviceptr p[6]
    p[0] = gx.ptr_; p[1] = gy.ptr_; p[2] = _ptr(gs); p[3] = _ptr(gb); p[4] = rm.ptr_; p[5] = rv.ptr_
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_forward_infer_core(&d, p[0], p[1], p[2], p[3], p[4], p[5], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gy, gs, gb, rm, rv))
    return gy


cdef float _coefficient(value, str what) except? -1:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {value!r}") from None
    if not abs(v) <= _FLT_MAX:  # the kernels take it as float32: no inf, NaN or overflow to inf
        raise ValueError(f"{what} must be a finite number (as a float32), got {value!r}")
    return v


cdef _backward(x, grad_y, scale, mean, stat, epsilon, out, scale_grad, bias_grad, mode, stream, int frozen,
               str mean_name, str stat_name, accumulate, batch_grads, layout):
    cdef bn_desc d
    cdef GPUArray gx = _array(x, "x")
    cdef long long K = _fill_desc(&d, gx, mode, "x", layout)
    cdef GPUArray gdy = _like(grad_y, "grad_y", gx)
    if gdy is None:
        raise TypeError("grad_y must be a GPUArray, got None")
    cdef GPUArray gs = _param(scale, "scale", K, True)
    cdef GPUArray m = _param(mean, mean_name, K), v = _param(stat, stat_name, K)
    cdef GPUArray gdx = _like(out, "out", gx)
    cdef GPUArray sg = _param(scale_grad, "scale_grad", K, True), bg = _param(bias_grad, "bias_grad", K, True)
    cdef GPUArray bsg = None, bbg = None
    if batch_grads is not None:
        bsg, bbg = _param(batch_grads[0], "batch_scale_grad", K), _param(batch_grads[1], "batch_bias_grad", K)
    cdef float ab[4]
    for i, (value, name) in enumerate(zip(accumulate, ("scale_grad_alpha", "scale_grad_beta", "bias_grad_alpha",
                                                       "bias_grad_beta"))):
        ab[i] = _coefficient(value, name)
    # beta != 0 reads the gradient it accumulates into: there must be one.
    if ab[1] != 0 and sg is None:
        raise ValueError("scale_grad_beta != 0 accumulates into scale_grad: pass the scale_grad array")
    if ab[3] != 0 and bg is None:
        raise ValueError("bias_grad_beta != 0 accumulates into bias_grad: pass the bias_grad array")
    _no_aliasing([("out", gdx), ("scale_grad", sg), ("bias_grad", bg), ("batch_scale_grad", bsg),
                  ("batch_bias_grad", bbg)],
                 [("x", gx), ("grad_y", gdy), ("scale", gs), (mean_name, m), (stat_name, v)],
                 (("out", "x"), ("out", "grad_y")))
    d.epsilon = _epsilon(epsilon) if frozen else 1.0
    d.factor = 0
    d.flags = (BN_DESC_AFFINE if gs is not None else 0)
    if (ab[0], ab[1], ab[2], ab[3]) != (1, 0, 1, 0):
        d.flags |= BN_DESC_ACCUMULATE
        d.scale_grad_alpha, d.scale_grad_beta, d.bias_grad_alpha, d.bias_grad_beta = ab[0], ab[1], ab[2], ab[3]
    cdef cydriver.CUstream s = resolve_stream(stream)
    if gdx is None:
        gdx = _new(gx.shape, gx.dtype, stream)
    if sg is None:
        sg = _new((K,), np.float32, stream)
    if bg is None:
        bg = _new((K,), np.float32, stream)
    cdef cydriver.CUdeviceptr p[10]
    p[0] = gx.ptr_; p[1] = gdy.ptr_; p[2] = gdx.ptr_; p[3] = _ptr(gs); p[4] = m.ptr_; p[5] = v.ptr_
    p[6] = sg.ptr_; p[7] = bg.ptr_; p[8] = _ptr(bsg); p[9] = _ptr(bbg)
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_backward_core(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], frozen, s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gdy, gdx, gs, m, v, sg, bg, bsg, bbg))
    return gdx, sg, bg


def backward(x, grad_y, scale, save_mean, save_invstd, out=None, scale_grad=None, bias_grad=None,
             mode="spatial", stream=None, scale_grad_alpha=1.0, scale_grad_beta=0.0, bias_grad_alpha=1.0,
             bias_grad_beta=0.0, batch_grads=None, layout="NCHW"):
    """Backward of a training forward from its saved statistics: (grad_x, scale_grad, bias_grad).
    With xhat = (x - mean) * save_invstd: dbias = sum(dy), dscale = sum(dy * xhat),
    grad_x = scale * save_invstd * (dy - dbias / M - xhat * dscale / M). scale None: 1.
    mean is the exact batch mean of x: save_mean (its float32 rounding) plus mean(x - save_mean), which
    the same reduction computes, so the backward is as exact at large offsets as the forward.

    Parameter gradients as cuDNN's: scale_grad = scale_grad_alpha * dscale + scale_grad_beta * scale_grad
    (and bias_grad likewise), in the same launch; beta != 0 needs the array to accumulate into, beta == 0
    never reads it. batch_grads=(batch_scale_grad, batch_bias_grad): float32 arrays that also receive the
    plain dscale and dbias (what PuzzleLib's scalegrad/biasgrad hold), in the same launch."""
    return _backward(x, grad_y, scale, save_mean, save_invstd, None, out, scale_grad, bias_grad, mode, stream,
                     0, "save_mean", "save_invstd",
                     (scale_grad_alpha, scale_grad_beta, bias_grad_alpha, bias_grad_beta), batch_grads, layout)


def backward_infer(x, grad_y, scale, running_mean, running_var, epsilon, out=None, scale_grad=None,
                   bias_grad=None, mode="spatial", stream=None, scale_grad_alpha=1.0, scale_grad_beta=0.0,
                   bias_grad_alpha=1.0, bias_grad_beta=0.0, batch_grads=None, layout="NCHW"):
    """Backward of an inference forward (frozen statistics): with invstd = 1/sqrt(running_var + eps)
    and xhat = (x - running_mean) * invstd: grad_x = scale * invstd * dy, dscale = sum(dy * xhat),
    dbias = sum(dy); the parameter gradients with alpha/beta and batch_grads as in backward. One launch."""
    return _backward(x, grad_y, scale, running_mean, running_var, epsilon, out, scale_grad, bias_grad, mode,
                     stream, 1, "running_mean", "running_var",
                     (scale_grad_alpha, scale_grad_beta, bias_grad_alpha, bias_grad_beta), batch_grads, layout)


def plan(shape, dtype=np.float32, mode="spatial", kernel="forward_train", aligned=True, layout="NCHW"):
    """The launch plan the heuristic picks for x of `shape` (for tests and the benchmark): a dict with
    grid, block, shared_bytes, cache_units, vec (0 elements, 1 16-byte units, 2 16-byte units between
    a scalar head and tail), split, ctas_per_sm (the occupancy calculator's resident CTAs per SM for
    that launch), sm_count, and for a split forward_train/backward "second": the plan of its second,
    element-wise launch. kernel: forward_train, backward, forward_infer, normalize (= forward_infer),
    backward_dx. aligned: whether the data pointers are 16-byte aligned."""
    cdef bn_desc d
    memset(&d, 0, sizeof(bn_desc))
    d.mode = _mode_code(mode)
    d.dtype = _dtype_code(dtype, "dtype")
    _fill_shape(&d, tuple(shape), layout)
    d.force_group, d.force_split, d.force_cache = _force_group, _force_split, _force_cache
    kernels = {"forward_train": BN_K_FWD_TRAIN, "forward_infer": BN_K_NORMALIZE, "normalize": BN_K_NORMALIZE,
               "backward": BN_K_BWD, "backward_dx": BN_K_BWD_DX}
    if kernel not in kernels:
        raise ValueError(f"plan: kernel must be one of {', '.join(kernels)}, not {kernel!r}")
    cdef int k = kernels[kernel]
    _prepare(d.dtype, d.mode, d.layout).fill(&d)
    cdef bn_plan p
    cdef cydriver.CUdeviceptr ptr = 0 if aligned else 4  # a misaligned pointer: 4 bytes past 16
    bn_make_plan(&d, k, _vec_ok(&d, ptr, ptr, ptr), &p)
    out = _plan_dict(&p, d.sm_count)
    if p.split > 1 and (k == BN_K_FWD_TRAIN or k == BN_K_BWD):
        bn_make_plan(&d, BN_K_NORMALIZE if k == BN_K_FWD_TRAIN else BN_K_BWD_DX, p.vec, &p)
        out["second"] = _plan_dict(&p, d.sm_count)
    return out


cdef dict _plan_dict(bn_plan* p, int sm_count):
    return {"grid": tuple(p.grid), "block": tuple(p.block), "shared_bytes": p.shared_bytes,
            "cache_units": p.cache_units, "vec": p.vec, "split": p.split, "ctas_per_sm": p.ctas_per_sm,
            "sm_count": sm_count}
