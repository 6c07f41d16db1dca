# The kernels of one (context, dtype, mode): their name expressions (registered for warmup),
# compiled and loaded once, with the occupancy calculator's facts the plans are made from.
# Included by batchnorm.pyx.

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
register_variants("batchnorm_nhwc.cu", [(nhwc_kernel_expressions(), compile_options())])


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
