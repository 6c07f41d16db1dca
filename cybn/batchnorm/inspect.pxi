# For tests and benchmarks: the plan a call would get (plan) and plan_override, which forces the
# plan's choices so that small data takes the split, big-grid and uncached paths.
# Included by batchnorm.pyx.

cdef int _force_group = 0
cdef int _force_split = 0
cdef int _force_cache = -1
cdef int _force_coop = 0


class plan_override:
    """Context manager for tests (process-wide, not thread-safe): force the threads per channel (spatial) / row lanes per CTA
    (per-activation, a power of two), the CTAs per channel, the cache slots per thread, and whether a split
    NCHW backward runs as one cooperative launch (coop: None the model decides, True wherever its grid is
    co-resident, False never), so that small data exercises the split, big-grid, uncached and cooperative
    paths."""

    def __init__(self, group=0, split=0, cache=-1, coop=None):
        if group and (group < 1 or group > 1024):
            raise ValueError("plan_override: group must be in [1, 1024]")
        if split and not 1 <= split <= 65535:
            raise ValueError("plan_override: split must be in [1, 65535]")
        if coop is not None and not isinstance(coop, bool):
            raise ValueError(f"plan_override: coop must be None, True or False, not {coop!r}")
        self.values = (int(group), int(split), int(cache), 0 if coop is None else (1 if coop else 2))

    def __enter__(self):
        global _force_group, _force_split, _force_cache, _force_coop
        self.saved = (_force_group, _force_split, _force_cache, _force_coop)
        _force_group, _force_split, _force_cache, _force_coop = self.values
        return self

    def __exit__(self, *exc):
        global _force_group, _force_split, _force_cache, _force_coop
        _force_group, _force_split, _force_cache, _force_coop = self.saved
        return False


def plan(shape, dtype=np.float32, mode="spatial", kernel="forward_train", aligned=True, epilogue=False,
         layout="NCHW", span=True):
    """The launch plan the heuristic picks for x of `shape` (for tests and the benchmark): a dict with
    grid, block, shared_bytes, cache_units, vec (0 elements, 1 16-byte units, 2 16-byte units between
    a scalar head and tail), split, ctas_per_sm (the occupancy calculator's resident CTAs per SM for
    that launch), sm_count, coop (a cooperative backward: one launch), and for a split forward_train/backward
    that is not cooperative "second": the plan of its second, element-wise launch. kernel: forward_train,
    backward, forward_infer, normalize (= forward_infer), backward_dx. aligned: whether the data pointers are 16-byte aligned. layout: "NCHW" or "NHWC"
    (shape then channels last). span=False: the plan without the SPAN programs (vec 3), as before them."""
    cdef bn_desc d
    memset(&d, 0, sizeof(bn_desc))
    d.mode = _mode_code(mode)
    d.dtype = _dtype_code(dtype, "dtype")
    _fill_shape(&d, tuple(shape), layout)
    d.force_group, d.force_split, d.force_cache, d.force_coop = _force_group, _force_split, _force_cache, _force_coop
    kernels = {"forward_train": BN_K_FWD_TRAIN, "forward_infer": BN_K_NORMALIZE, "normalize": BN_K_NORMALIZE,
               "backward": BN_K_BWD, "backward_dx": BN_K_BWD_DX}
    if kernel not in kernels:
        raise ValueError(f"plan: kernel must be one of {', '.join(kernels)}, not {kernel!r}")
    cdef int k = kernels[kernel]
    d.act = BN_ACT_RELU if epilogue else BN_ACT_NONE  # any activation: the EPI 1 kernels' plan
    cdef _Prepared pr = _prepare(d.dtype, d.mode, _epi(&d), d.layout)
    if span and _span_shape(&d):
        _prepare_span(pr, d.dtype, _epi(&d))
    pr.fill(&d)
    if not span:
        memset(d.span_kernels, 0, sizeof(d.span_kernels))
    cdef bn_plan p
    cdef cydriver.CUdeviceptr ptr = 0 if aligned else 4  # a misaligned pointer: 4 bytes past 16
    bn_make_plan(&d, k, _vec_ok(&d, ptr, ptr, ptr), &p)
    out = _plan_dict(&p, d.sm_count)
    if p.split > 1 and not p.coop and (k == BN_K_FWD_TRAIN or k == BN_K_BWD):
        bn_make_plan(&d, BN_K_NORMALIZE if k == BN_K_FWD_TRAIN else BN_K_BWD_DX, p.vec, &p)
        out["second"] = _plan_dict(&p, d.sm_count)
    return out


cdef dict _plan_dict(bn_plan* p, int sm_count):
    return {"grid": tuple(p.grid), "block": tuple(p.block), "shared_bytes": p.shared_bytes,
            "cache_units": p.cache_units, "vec": p.vec, "split": p.split, "ctas_per_sm": p.ctas_per_sm,
            "sm_count": sm_count, "coop": bool(p.coop)}
