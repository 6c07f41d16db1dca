# The launch plan (bn_make_plan): block shape, CTAs per channel (the split), the replay cache and the
# 16-byte vector paths, a pure function of the descriptor and the device facts prepare() put in it.
# Included by batchnorm.pyx.

cdef enum:
    SMEM_LIMIT = 48 * 1024   # shared memory per CTA without opt-in (the budget where occupancy is unknown)
    MAX_SPLIT = 1024         # CTAs per channel at most (bounds the last CTA's combine)
    MIN_WALK = 128           # bytes per thread per array a split keeps: 2 rounds of 4 x 16-byte loads
    MAX_WALK = 4096          # bytes per thread per array a reduction walks before it is split
    TARGET_THREADS = 256
    INFLIGHT_NEED = 32768    # bytes in flight per SM that keep HBM busy (Little's law: ~3.35 TB/s x ~1.3 us / 132 SMs)
    LAUNCH_BYTES = 4194304   # a launch's fixed cost in bytes at full bandwidth (~1.3 us at ~3 TB/s)
    BARRIER_BYTES = 4194304  # a cooperative plan's column barrier, as much as a launch (assumed, unmeasured)
    REDUCE_IN_FLIGHT = 1     # loads per array a fused or split reduction's walk keeps in flight (batchnorm.cu),
                             # but BN_FWD_BATCH in the forward's 16-byte walks of 16/32-bit types (_reduce_batch)
    STREAM_IN_FLIGHT = 4     # ... an element-wise launch's (LOADS_IN_FLIGHT)


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
    p.ctas_per_sm = d.span_occ[kernel][w - 1] if p.vec == 3 else d.occ[kernel][w - 1]  # SPAN: its program's
    return max(<long long>p.ctas_per_sm, 1) * max(<long long>d.sm_count, 1)


cdef long long _split(const bn_desc* d, int kernel, long long cols, long long walk, long long slots) noexcept nogil:
    """CTAs per column from the bytes each thread walks per array. Reductions (fwd_train, bwd): split
    while the columns fill less than one wave of resident CTAs and each thread keeps MIN_WALK bytes
    (2 rounds of its 4 x 16-byte loads in flight), as many as fit one wave; past MAX_WALK bytes a
    thread's serial walk is bounded, rounded up to whole waves; where one wave leaves SMs without a CTA
    (one CTA per SM, fewer columns than SMs), an NCHW reduction takes two whole waves.
    Element-wise launches (normalize, bwd_dx) only fill the device: at most one wave, each thread
    MIN_WALK bytes at least."""
    cdef long long P = 1, waves
    if cols < slots and walk >= 2 * MIN_WALK:
        P = min(slots // cols, walk // MIN_WALK)
        if P * cols < d.sm_count and (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD) and not _is_rows(d):
            # one CTA per SM: fill the SMs in two waves (row-major plans rank their own candidates, plan_nhwc.pxi)
            P = min(2 * slots // cols, walk // MIN_WALK)
    if (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD) and walk > MAX_WALK * P:
        waves = _cdiv(cols * _cdiv(walk, MAX_WALK), slots)
        P = max(_cdiv(walk, MAX_WALK), waves * slots // cols)
    return min(P, MAX_SPLIT)


cdef int bn_make_plan(const bn_desc* d, int kernel, int vec, bn_plan* p) noexcept nogil:
    """The launch heuristic, a pure function of the descriptor and the device facts prepare() put in
    it (SM count, the occupancy calculator's CTAs per SM per kernel and block size). Spatial: a group
    of G threads (whole warps) per channel, several channels per CTA when channels are small, and P
    CTAs per channel (the split, _split). Channels last and per-activation ((N, F) rows): _nhwc_block,
    BX threads of 16-byte feature vectors (coalesced) times BY row lanes per CTA, the rows split over P
    CTAs. The replay cache stays within the shared memory that
    keeps the kernel's occupancy."""
    cdef long long units = 0, per_thread, cols, G, CPB, P, slots, slot_bytes, arrays, q, fill, span_bytes = 0
    cdef bn_plan alt
    cdef long long stats = d.C
    memset(p, 0, sizeof(bn_plan))
    p.vec = vec
    arrays = 2 if (kernel == BN_K_BWD or kernel == BN_K_BWD_DX) else 1
    if _is_rows(d):  # channels last, and every per-activation call: row-major (M, K) (plan_nhwc.pxi)
        _nhwc_block(d, kernel, vec, p, &cols, &per_thread, &slot_bytes)
    else:
        units = d.N * (d.S // (16 // _elem_bytes(d.dtype)) if vec else d.S)
        if vec == 3:  # SPAN: a channel's units per row are floor or ceil(S / V)
            units = _cdiv(d.N * d.S, 16 // _elem_bytes(d.dtype))
        slot_bytes = 16 if vec else _elem_bytes(d.dtype)
        if d.force_group > 0:  # whole warps, at most 1024 threads
            G = min(max(d.force_group // 32, 1) * 32, 1024)
        else:
            G = 32
            while G < TARGET_THREADS and units > G * 4:
                G *= 2
        CPB = TARGET_THREADS // G if G < TARGET_THREADS else 1
        if vec == 3:  # SPAN: CPB x S elements whole 16-byte units (CPB a power of two, so a multiple of q)
            q = _span_quantum(d.S, 16 // _elem_bytes(d.dtype))
            if CPB < q:
                CPB = q
                G = max(32, min(G, (TARGET_THREADS // q) // 32 * 32))
        if CPB > stats:  # SPAN: then C * S is whole units (_span_shape)
            CPB = stats
        cols = _cdiv(stats, CPB)
        per_thread = _cdiv(units, G)
        p.block[0] = <unsigned int>G
        p.block[1] = <unsigned int>CPB
    p.block[2] = 1
    slots = _slots(d, kernel, <long long>p.block[0] * p.block[1], p)
    P = d.force_split if d.force_split > 0 else _split(d, kernel, cols, per_thread * slot_bytes, slots)
    if P > 65535:
        P = 65535
    p.grid[0] = <unsigned int>cols
    p.grid[1] = <unsigned int>P
    p.grid[2] = 1
    p.split = <int>P
    if vec == 3:  # SPAN scratch after the cache: BN_SPAN_SLOT_* P values per thread (reductions) or group (+ 1)
        span_bytes = _param_bytes(d.dtype) * (
            BN_SPAN_SLOT_FWD * <long long>p.block[0] * p.block[1] if kernel == BN_K_FWD_TRAIN else
            (BN_SPAN_SLOT_BWD * <long long>p.block[0] * p.block[1] if kernel == BN_K_BWD else
             BN_SPAN_SLOT_EW * (<long long>p.block[1] + 1)))
        p.shared_bytes = <unsigned int>span_bytes
    # The replay cache: only the one-launch paths (fused P == 1, cooperative) read x (and dy) twice.
    # A fused plan whose columns leave at least half the SMs idle: its cooperative form spreads each column
    # over enough CTAs to give every SM one (the same single launch, partials combined after the barrier).
    if P == 1 and (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD):
        _size_cache(d, kernel, p, per_thread, arrays, span_bytes, False)
    fill = _cdiv(d.sm_count, cols) if 2 * cols <= d.sm_count else 1  # CTAs per column for every SM
    if _coop_candidate(d, kernel, p, cols, slots, P if P > 1 else fill, &alt):
        _size_cache(d, kernel, &alt, _cdiv(per_thread, alt.split), arrays, span_bytes, False)
        # Taken only where it wins by more than the barrier's assumed cost once more: that cost is unmeasured,
        # and on small calls (latency-bound) the estimate cannot tell a fused launch from a barrier.
        if (d.force_coop == 1 or
                _modelled_cost(d, kernel, &alt, units) + BARRIER_BYTES < _modelled_cost(d, kernel, p, units)):
            p[0] = alt
    # A fused (or cooperative) plan: one CTA per SM fewer for a larger cache (fewer bytes re-read) where the estimate says it is
    # faster (a wave fewer, or the re-read saved outweighs the loads in flight lost).
    # A cooperative plan only where its CTAs stay co-resident at that occupancy.
    if ((P == 1 or p.coop) and (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD) and p.ctas_per_sm > 1
            and d.force_cache < 0 and d.force_split <= 0 and d.force_coop != 1
            and (not p.coop or <long long>p.grid[0] * p.grid[1] <= (p.ctas_per_sm - 1) * <long long>d.sm_count)):
        alt = p[0]
        _size_cache(d, kernel, &alt, _cdiv(per_thread, p.split if p.coop else 1), arrays, span_bytes, True)
        if (alt.cache_units > p.cache_units and
                _modelled_cost(d, kernel, &alt, units) < _modelled_cost(d, kernel, p, units)):
            p[0] = alt
    # SPAN's CTAs hold several channels, so a fused reduction's cache holds less of each, and its grid has
    # fewer columns; the element path keeps one channel per CTA but one scalar load in flight. The plan
    # the latency-bandwidth estimate (_modelled_cost) says is faster is taken.
    if vec == 3 and (kernel == BN_K_FWD_TRAIN or kernel == BN_K_BWD) and d.force_cache < 0 and d.force_split <= 0:
        bn_make_plan(d, kernel, 0, &alt)
        if _modelled_cost(d, kernel, &alt, d.N * d.S) < _modelled_cost(d, kernel, p, units):
            p[0] = alt
    return BN_OK


cdef void _size_cache(const bn_desc* d, int kernel, bn_plan* p, long long per_thread, long long arrays,
                      long long span_bytes, bint less) noexcept nogil:
    """The replay cache of a one-launch plan: up to per_thread slots per thread (each thread's units) within
    the shared memory that keeps the kernel's occupancy (opt-in shared memory included, prepared.pxi), or
    with `less` (where that occupancy is above 1) the room that keeps one CTA per SM fewer."""
    cdef long long slot_bytes = 16 if p.vec else _param_bytes(d.dtype)  # scalar slots hold P
    cdef long long budget = SMEM_LIMIT - <long long>(
        d.span_static_shared[kernel] if p.vec == 3 else d.static_shared[kernel])
    cdef long long w, cap
    if p.ctas_per_sm > 0:
        w = min(_cdiv(<long long>p.block[0] * p.block[1], 32), 32) - 1
        budget = <long long>(d.span_smem_budget[kernel][w] if p.vec == 3 else d.smem_budget[kernel][w])
        if less and p.ctas_per_sm > 1:
            budget = <long long>(d.span_smem_less[kernel][w] if p.vec == 3 else d.smem_less[kernel][w])
            p.ctas_per_sm -= 1
    budget -= span_bytes
    cap = budget // (<long long>p.block[0] * p.block[1] * slot_bytes * arrays)
    p.cache_units = <int>min(<long long>d.force_cache if d.force_cache >= 0 else per_thread, cap)
    if p.cache_units < 0:
        p.cache_units = 0
    p.shared_bytes = <unsigned int>(p.cache_units * p.block[0] * p.block[1] * slot_bytes * arrays + span_bytes)


cdef bint _coop_candidate(const bn_desc* d, int kernel, const bn_plan* p, long long cols, long long slots,
                          long long want, bn_plan* alt) noexcept nogil:
    """The cooperative form of an NCHW backward plan (alt; its cache still to size): the same blocks, `want`
    CTAs per column (the split's, or for a fused plan on at most half the SMs enough to give every SM one)
    within one wave, so that all are co-resident at the occupancy the cache keeps and the column barrier never
    waits for a CTA that is not running; at least 2 per column. Not for SyncBatchNorm's sum launches,
    channels last or per-activation rows, a device without cooperative launches, or force_coop 2; a forced
    split (tests) only with force_coop 1, and then with its own P. The forward-train keeps its two launches: the same path in
    bn_fwd_train_spatial cost its plans registers (sm_90 fp32 66 -> 78; fp16 under the software GPU's h100
    build 3 -> 2 CTAs per SM)."""
    cdef long long Q = p.split if d.force_split > 0 else min(want, slots // max(cols, 1))
    if (kernel != BN_K_BWD or _is_rows(d) or not d.coop_ok or d.force_coop == 2
            or (d.force_split > 0 and d.force_coop != 1) or d.flags & (BN_DESC_PARTIALS | BN_DESC_SUMS)
            or p.ctas_per_sm <= 0 or Q < 2 or cols * Q > slots):
        return False
    alt[0] = p[0]
    alt.grid[1] = <unsigned int>Q
    alt.split = <int>Q
    alt.coop = 1
    return True


cdef void bn_plan_drop_coop(const bn_desc* d, bn_plan* p) noexcept nogil:
    """A cooperative backward plan as the plain split of the same grid (the frozen backward, which writes dx
    in its one pass; or a cooperative launch the driver refused): no barrier, no cache."""
    cdef long long span_bytes = 0
    if p.vec == 3:
        span_bytes = _param_bytes(d.dtype) * BN_SPAN_SLOT_BWD * <long long>p.block[0] * p.block[1]
    p.coop = 0
    p.cache_units = 0
    p.shared_bytes = <unsigned int>span_bytes


cdef inline long long _reread_bytes(const bn_desc* d, const bn_plan* p, long long units, long long unit_bytes) noexcept nogil:
    """Bytes per channel and array a reduction plan reads beyond one pass: a fused plan's units past its
    cache, a split plan's second launch."""
    cdef long long threads = <long long>p.block[0] * (p.split if p.coop else 1)
    if p.split > 1 and not p.coop:
        return d.N * d.S * _elem_bytes(d.dtype)
    return max(0, _cdiv(units, threads) - p.cache_units) * threads * unit_bytes


cdef double _streamed_fraction(const bn_desc* d, const bn_plan* p, long long per_thread) noexcept nogil:
    """The fraction of HBM bandwidth a launch's loads in flight keep busy over its run (Little's law): per wave,
    its resident threads per SM (occupancy, or fewer in a partial last wave or a grid smaller than one) times
    the bytes each has in flight, over INFLIGHT_NEED; the waves weighted by their share of the CTAs."""
    cdef double ctas = <double>p.grid[0] * p.grid[1], sms = <double>max(d.sm_count, 1)
    cdef double per_sm = <double>max(p.ctas_per_sm, 1), slots = per_sm * sms
    cdef double full = <double>(<long long>(ctas // slots)) * slots, rest = ctas - full
    cdef double per_cta = <double>p.block[0] * p.block[1] * per_thread / <double>INFLIGHT_NEED
    cdef double inv = 0
    if full > 0:
        inv += full / ctas / min(1.0, per_sm * per_cta)
    if rest > 0:
        inv += rest / ctas / min(1.0, rest / sms * per_cta)
    return 1.0 / inv if inv > 0 else 1.0


cdef inline long long _reduce_batch(const bn_desc* d, int kernel, const bn_plan* p) noexcept nogil:
    """16-byte units (or elements) per array a reduction's walk keeps in flight: batchnorm.cu's fwd_batch, i.e.
    BN_FWD_BATCH for the forward's 16-byte walks (not SPAN's) of 16- and 32-bit types without an epilogue."""
    if kernel == BN_K_FWD_TRAIN and (p.vec == 1 or p.vec == 2) and d.dtype != BN_FLOAT64 and not _epi(d):
        return BN_FWD_BATCH
    return REDUCE_IN_FLIGHT


cdef double _modelled_cost(const bn_desc* d, int kernel, const bn_plan* p, long long units) noexcept nogil:
    """A reduction call's estimated time, in bytes at full bandwidth: each launch's bytes over the fraction
    its loads in flight sustain (_streamed_fraction), plus LAUNCH_BYTES per launch. A fused plan reads x
    (and dy) once plus what its cache does not hold and writes y (dx); a split plan's reduction reads them
    once and its element-wise second launch (its own plan) reads them again and writes. units: a channel's
    units of the walk (elements, or SPAN's 16-byte units)."""
    cdef bn_plan q
    cdef long long z = _elem_bytes(d.dtype), arrays = 2 if kernel == BN_K_BWD else 1
    cdef long long unit = 16 if p.vec else z
    cdef double one = <double>d.N * d.S * d.C * z  # one pass over one array
    cdef double reduce = _streamed_fraction(d, p, arrays * unit * _reduce_batch(d, kernel, p))
    if p.split > 1 and not p.coop:
        bn_make_plan(d, BN_K_NORMALIZE if kernel == BN_K_FWD_TRAIN else BN_K_BWD_DX, p.vec, &q)
        return (arrays * one / reduce + (arrays + 1) * one /
                _streamed_fraction(d, &q, arrays * (16 if q.vec else z) * STREAM_IN_FLIGHT) + 2 * LAUNCH_BYTES)
    # One launch (fused, or cooperative with its column barrier): the walk, and the re-read past the cache.
    return ((arrays * (one + <double>_reread_bytes(d, p, units, unit) * d.C) + one) / reduce + LAUNCH_BYTES
            + (BARRIER_BYTES if p.coop else 0))


cdef inline long long _span_quantum(long long S, long long V) noexcept nogil:
    """The fewest channels (a power of two) whose S elements fill whole V-element units: V / gcd(S, V)."""
    cdef long long q = 1
    while (S * q) % V != 0:
        q *= 2
    return q


cdef inline bint _span_shape(const bn_desc* d) noexcept nogil:
    """Whether x's shape can take SPAN plans (vec 3, the SPAN programs' kernels; with 16-byte aligned
    pointers): NCHW spatial, S not a multiple of the vector width V but at least V (a unit spans at most
    two channels), C * S whole units (the last CTA's span ends on a unit)."""
    cdef long long V = 16 // _elem_bytes(d.dtype)
    return (d.layout == BN_LAYOUT_NCHW and d.mode == BN_SPATIAL and d.S % V != 0 and d.S >= V
            and (d.C * d.S) % V == 0)


cdef inline bint _aligned(cydriver.CUdeviceptr p) noexcept nogil:
    return p % 16 == 0


cdef int _check_limits(const bn_plan* p) noexcept nogil:
    """Launch limits every GPU has, checked for every launch of a call before the first one is enqueued."""
    if (p.grid[0] < 1 or p.grid[0] > <unsigned int>2147483647 or p.grid[1] < 1 or p.grid[1] > 65535 or p.grid[2] < 1
            or p.grid[2] > 65535 or p.block[0] * p.block[1] * p.block[2] > 1024 or p.block[2] > 64):
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "launch plan grid (%u, %u, %u) block (%u, %u, %u) exceeds "
                 "the device's launch limits", p.grid[0], p.grid[1], p.grid[2], p.block[0], p.block[1], p.block[2])
        return BN_EINVAL
    return BN_OK


cdef inline int _vec_ok(const bn_desc* d, cydriver.CUdeviceptr a, cydriver.CUdeviceptr b,
                        cydriver.CUdeviceptr c) noexcept nogil:
    """16-byte units: 1 when every row is 16-byte aligned (S a multiple of the vector width, pointers
    aligned); 2 (ROWVEC) when N == 1 and the pointers agree modulo 16, so each channel is one row
    whose aligned middle is vectorised between a scalar head and tail; 3 (SPAN) when the shape takes it
    (_span_shape) and the pointers are aligned: each CTA walks its channels x S span in 16-byte units;
    else 0 (element loads)."""
    cdef long long V = 16 // _elem_bytes(d.dtype)
    if _is_rows(d):
        return _nhwc_vec_ok(d, a, b, c)
    if d.S % V == 0 and _aligned(a) and _aligned(b) and _aligned(c):
        return 1
    if d.N == 1 and d.S >= 2 * V and a % 16 == b % 16 and a % 16 == c % 16:
        return 2
    if d.span_kernels[0] != NULL and _span_shape(d) and _aligned(a) and _aligned(b) and _aligned(c):
        return 3  # SPAN (prepare() loaded its kernels for this shape)
    return 0


cdef inline int _vec_flags(int vec) noexcept nogil:
    return 0 if vec == 0 else (BN_VEC | BN_ROWVEC if vec == 2 else BN_VEC)  # SPAN (3): the template argument
