# The cooperative single launch of an NCHW spatial training forward: where the split plan (statistics, then
# normalisation) would take two launches, its first kernel (bn_fwd_train_spatial) launched with
# cuLaunchCooperativeKernel and BN_COOP does both: every CTA writes its partial, the grid meets at one barrier
# (the workspace's first counter, bn_reduce.cuh), every CTA combines its channels' partials in the same fixed
# order, the column's first CTA writes the statistics, and each normalises its own share with the epilogue,
# x replayed from its shared-memory cache. Taken when the occupancy calculator says every CTA of that grid is
# resident at once. Included by batchnorm.pyx.
#
# When it is taken (the performance model's verdict, cybn/testing/perfmodel.py on bench/gpu_model.py's shapes): it
# saves one launch for one grid barrier and, where each CTA's shared-memory cache holds its share of x, the
# second read of x; but its normalisation is the fused kernel's walk (one load in flight), slower than the split's
# streaming second launch wherever that read comes from DRAM. So it is taken only where the cache replays at
# least 3/4 of each thread's share (a forced cache size, for tests, takes it too), and only where the whole grid
# is resident; everything else keeps the split plan, as do the backward, channels-last, per-activation and
# SyncBatchNorm's partials.

cdef int _no_coop = 0


class coop_override:
    """Context manager for tests (process-wide, not thread-safe): off=True keeps every forward-train on the split
    plan (the cooperative launch's fallback); off=False lets a split forced by plan_override take the cooperative
    launch too (without it a forced split keeps its two launches, as the traffic tests of the split plan expect)."""

    def __init__(self, off=True):
        self.value = 1 if off else -1

    def __enter__(self):
        global _no_coop
        self.saved = _no_coop
        _no_coop = self.value
        return self

    def __exit__(self, *exc):
        global _no_coop
        _no_coop = self.saved
        return False


cdef bint bn_coop_plan(const bn_desc* d, const bn_plan* p, bn_plan* cp) noexcept nogil:
    """The cooperative plan for a split forward-train plan p, or False: p's grid and block, every CTA resident
    (the kernel's occupancy x SMs), the replay cache in the shared memory that keeps that occupancy."""
    cdef long long threads = <long long>p.block[0] * p.block[1], ctas = <long long>p.grid[0] * p.grid[1]
    cdef long long w, per_thread, units, slot, cap
    if (p.split <= 1 or d.no_coop == 1 or (d.force_split > 0 and d.no_coop != -1) or d.layout != BN_LAYOUT_NCHW
            or d.mode != BN_SPATIAL or d.flags & BN_DESC_PARTIALS):
        return False
    w = min(max((threads + 31) // 32, 1), 32)
    if d.occ[BN_K_FWD_TRAIN][w - 1] == 0 or ctas > <long long>d.occ[BN_K_FWD_TRAIN][w - 1] * d.sm_count:
        return False
    cp[0] = p[0]
    cp.ctas_per_sm = d.occ[BN_K_FWD_TRAIN][w - 1]
    units = d.N * (d.S // (16 // _elem_bytes(d.dtype)) if p.vec == 1 else d.S)  # ROWVEC, scalar: whole rows
    per_thread = _cdiv(_cdiv(units, p.split), p.block[0])
    slot = 16 if p.vec else _param_bytes(d.dtype)
    cap = <long long>d.smem_budget[BN_K_FWD_TRAIN][w - 1] // (threads * slot)
    cp.cache_units = <int>(min(per_thread, cap) if d.force_cache < 0 else min(<long long>d.force_cache, cap))
    cp.shared_bytes = <unsigned int>(cp.cache_units * threads * slot)
    # Only where the cache replays most of each thread's share (the model: otherwise the split's streaming second
    # launch, with its loads in flight, beats the fused walk's normalisation by more than the launch it costs).
    return 4 * <long long>cp.cache_units >= 3 * per_thread or d.force_cache >= 0


cdef int _launch_coop(const bn_desc* d, const bn_plan* p, cydriver.CUstream stream, void** args) noexcept nogil:
    cdef cydriver.CUresult r = cydriver.cuLaunchCooperativeKernel(
        d.kernels[BN_K_FWD_TRAIN], p.grid[0], p.grid[1], p.grid[2], p.block[0], p.block[1], p.block[2],
        p.shared_bytes, stream, args)
    if r != cydriver.CUDA_SUCCESS:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "cuLaunchCooperativeKernel failed: %d", <int>r)
        return <int>r
    return BN_OK
