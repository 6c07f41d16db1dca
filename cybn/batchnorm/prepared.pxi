# The kernels of one (context, dtype, mode): their name expressions (registered for warmup),
# compiled and loaded once, with the occupancy calculator's facts the plans are made from.
# Included by batchnorm.pyx.

_KERNEL_NAMES = ("bn_fwd_train", "bn_normalize", "bn_bwd", "bn_bwd_dx")
# Argument signatures (cybn.driver.function codes) with P = float; every kernel also takes the epilogue's
# appended arguments (bn_epilogue.cuh): forward (z, act, alpha), backward (bias, y, z, dz, act, alpha).
_SIGNATURES = ("PPPPPPPPPPPqqqffii" "Pif", "PPPPPPPqqqfi" "Pif", "PPPPPPPPPPPPPqqqfffffii" "PPPPif",
               "PPPPPqqqi" "PPPPif")
_CTYPES = ("float", "__half", "__nv_bfloat16", "double")  # by dtype code (BN_FLOAT32 ... BN_FLOAT64)
_BASE_DTYPES = (BN_FLOAT32, BN_FLOAT16)


def signature(kernel, dtype=BN_FLOAT32):
    """Kernel `kernel`'s (BN_K_*) argument signature for dtype code `dtype` (P scalars are double for float64)."""
    s = _SIGNATURES[kernel]
    return s.replace("f", "d") if dtype == BN_FLOAT64 else s


def kernel_expressions(dtype=None, epi=0):
    """The name expressions of one NVRTC program of batchnorm.cu (NCHW spatial; per-activation calls run
    batchnorm_nhwc.cu's kernels): (dtype code, EPI) = (BN_FLOAT32 or BN_FLOAT16, 0) (the default, dtype
    None) is one program holding both as `<float>` / `<__half>` (EPI defaults to 0); every other
    (dtype, EPI) is a program of its own, compiled on first use."""
    if dtype is None or (dtype in _BASE_DTYPES and epi == 0):
        return [f"{k}_spatial<{t}>" for t in ("float", "__half") for k in _KERNEL_NAMES]
    return [f"{k}_spatial<{_CTYPES[dtype]}, {epi}>" for k in _KERNEL_NAMES]


def compile_options(dtype=None, epi=0):
    """NVRTC options of one batchnorm.cu program: none beyond cybn's defaults (C++17, the kernel directory on
    the include path, the wheel's CUDA headers) for the base program; the others carry a -D naming the
    variant, only so that each (dtype, EPI) is its own program and cache entry (the source doesn't read it)."""
    if dtype is None or (dtype in _BASE_DTYPES and epi == 0):
        return ()
    return (f"-DCYBN_BN_VARIANT={_CTYPES[dtype].strip('_')}_epi{epi}",)


def span_kernel_expressions(epi=0):
    """The name expressions of a SPAN program of batchnorm.cu (bn_span.cuh): the four NCHW spatial kernels with
    SPAN = true for every dtype, one program per EPI, loaded only for shapes that take SPAN plans."""
    return [f"{k}_spatial<{t}, {epi}, true>" for t in _CTYPES for k in _KERNEL_NAMES]


def span_compile_options(epi=0):
    """NVRTC options of a SPAN program: a -D naming it (its own program and cache entry; the source doesn't read it)."""
    return (f"-DCYBN_BN_VARIANT=span_epi{epi}",)


def variants():
    """Every (dtype code, EPI) program of batchnorm.cu, the base one first."""
    out = [(BN_FLOAT32, 0)]
    out += [(dt, epi) for epi in (0, 1) for dt in range(4) if not (epi == 0 and dt in _BASE_DTYPES)]
    return out


# `python -m cybn warmup` and the per-architecture build check compile every registered variant.
from cybn.jit.variants import register_variants
register_variants("batchnorm.cu", [(kernel_expressions(dt, epi), compile_options(dt, epi)) for dt, epi in variants()])
register_variants("batchnorm.cu", [(span_kernel_expressions(epi), span_compile_options(epi)) for epi in (0, 1)])
register_variants("batchnorm_nhwc.cu",
                  [(nhwc_kernel_expressions(dt, epi), compile_options(dt, epi)) for dt, epi in variants()])


cdef class _Prepared:
    """The loaded kernels of one (context, dtype, mode): handles for the core, Functions kept alive."""
    cdef cydriver.CUfunction kernels[4]
    cdef unsigned int static_shared[4]
    cdef list functions
    cdef readonly int sm_count
    cdef int coop_ok  # CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH
    cdef int smem_optin  # the device's opt-in shared memory per block (the replay cache may use it)
    cdef unsigned char occ[4][32]
    cdef unsigned int smem_budget[4][32]
    cdef cydriver.CUfunction span_kernels[4]  # the SPAN program's (NCHW spatial only; NULL until _prepare_span)
    cdef unsigned int span_static_shared[4]
    cdef unsigned char span_occ[4][32]
    cdef unsigned int span_smem_budget[4][32]
    cdef unsigned int smem_less[4][32]
    cdef unsigned int span_smem_less[4][32]

    cdef void fill(self, bn_desc* d) noexcept:
        """Copy the kernels and the device facts the plans are made from into a descriptor."""
        d.kernels = self.kernels
        d.static_shared = self.static_shared
        d.sm_count = self.sm_count
        d.coop_ok = self.coop_ok
        d.occ = self.occ
        d.smem_budget = self.smem_budget
        d.span_kernels = self.span_kernels
        d.span_static_shared = self.span_static_shared
        d.span_occ = self.span_occ
        d.span_smem_budget = self.span_smem_budget
        d.smem_less = self.smem_less
        d.span_smem_less = self.span_smem_less


cdef dict _prepared = {}


cdef int _occupancy(cydriver.CUfunction f, int threads, size_t smem) except -1:
    cdef int n = 0
    check(cydriver.cuOccupancyMaxActiveBlocksPerMultiprocessor(&n, f, threads, smem),
          "cuOccupancyMaxActiveBlocksPerMultiprocessor")
    return n


cdef unsigned int _budget_for(cydriver.CUfunction f, int threads, int occ, size_t cap) except? 0:
    """The most dynamic shared memory (256-byte steps, at most cap) with which `occ` CTAs stay resident: a
    bisection on the occupancy calculator."""
    cdef size_t lo = 0, hi = cap // 256, mid
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _occupancy(f, threads, mid * 256) >= occ:
            lo = mid
        else:
            hi = mid - 1
    return <unsigned int>(lo * 256)


cdef int _query_occupancy(_Prepared pr, int k, int max_threads, bint span=False) except -1:
    """Once per (kernel, whole warps per block): CTAs per SM from the driver's occupancy calculator with no dynamic
    shared memory (registers, warps, slots), and the most dynamic shared memory (within the device's opt-in
    per-block maximum, which the kernel is opted in to here) that keeps that many resident, and that keeps
    one fewer: the replay cache may use the first and never lowers occupancy unless the plan's estimate
    prefers the second's larger cache (a CTA of a 3-CTA/SM kernel gets about 75 KiB on an H100, not 48)."""
    cdef int i, threads, occ
    cdef cydriver.CUfunction f = pr.span_kernels[k] if span else pr.kernels[k]  # span: the SPAN program's facts
    cdef unsigned char* occs = &pr.span_occ[k][0] if span else &pr.occ[k][0]
    cdef unsigned int* budgets = &pr.span_smem_budget[k][0] if span else &pr.smem_budget[k][0]
    cdef unsigned int* less = &pr.span_smem_less[k][0] if span else &pr.smem_less[k][0]
    cdef size_t cap = max(pr.smem_optin, SMEM_LIMIT) - (pr.span_static_shared[k] if span else pr.static_shared[k])
    check(cydriver.cuFuncSetAttribute(f, cydriver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, <int>cap),
          "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
    for i in range(32):
        threads = 32 * (i + 1)
        occ = _occupancy(f, threads, 0) if threads <= max_threads else 0
        occs[i] = <unsigned char>min(occ, 255)
        budgets[i] = _budget_for(f, threads, occ, cap) if occ > 0 else 0
        less[i] = _budget_for(f, threads, occ - 1, cap) if occ > 1 else 0
    return 0


def prepare(dtype, mode="spatial", layout="NCHW"):
    """Compile (once per process, through the kernel cache) and load (once per context) the plain kernels
    for `dtype` (float32, float16, bfloat16, float64), `mode` and `layout`."""
    cdef int md = _mode_code(mode)
    return _prepare(_dtype_code(dtype, "dtype"), md, 0, _layout_code(layout, md))


cdef _Prepared _prepare(int dt, int md, int epi, int layout=BN_LAYOUT_NCHW):
    """The kernels of (dtype, mode, layout, EPI) in the current context: batchnorm_nhwc.cu's row-major
    kernels for channels last and for every per-activation call ((N, F) rows), batchnorm.cu's otherwise."""
    cdef cydriver.CUcontext ctx = ensure_context()
    key = (<size_t>ctx, dt, md, layout, epi)
    cdef _Prepared pr = _prepared.get(key)
    if pr is not None:
        return pr
    from cybn.jit import functions as kernels
    from cybn.driver.device import Device
    pr = _Prepared.__new__(_Prepared)
    pr.functions = []
    memset(pr.span_kernels, 0, sizeof(pr.span_kernels))
    pr.smem_optin = Device(current_ordinal()).attribute(
        cydriver.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    cdef Function f
    if layout == BN_LAYOUT_NHWC or md == BN_PER_ACTIVATION:  # the spatial kernels' arguments (batchnorm_nhwc.cu)
        source, exprs, opts = "batchnorm_nhwc.cu", nhwc_kernel_expressions(dt, epi), compile_options(dt, epi)
        names = [f"{_NHWC_KERNEL_NAMES[i]}<{_CTYPES[dt]}, {epi}>" for i in range(BN_NKERNELS)]
    else:
        source, exprs, opts = "batchnorm.cu", kernel_expressions(dt, epi), compile_options(dt, epi)
        names = [exprs[i] if len(exprs) == BN_NKERNELS else f"{_KERNEL_NAMES[i]}_spatial<{_CTYPES[dt]}>"
                 for i in range(BN_NKERNELS)]
    for i in range(BN_NKERNELS):
        f = kernels.get_function(source, names[i], signature(i, dt), options=opts, name_expressions=exprs)
        pr.functions.append(f)
        pr.kernels[i] = f.func
        attrs = f.attributes
        pr.static_shared[i] = <unsigned int>attrs["shared_size_bytes"]
        _query_occupancy(pr, i, attrs["max_threads_per_block"])
    pr.sm_count = Device(current_ordinal()).sm_count
    pr.coop_ok = 1 if Device(current_ordinal()).attribute(cydriver.CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH) else 0
    _prepared[key] = pr
    return pr


cdef int _prepare_span(_Prepared pr, int dt, int epi) except -1:
    """Load the SPAN program's kernels of (dtype, EPI) into pr (once): NCHW spatial shapes that take SPAN plans."""
    if pr.span_kernels[0] != NULL:
        return 0
    from cybn.jit import functions as kernels
    exprs, opts = span_kernel_expressions(epi), span_compile_options(epi)
    cdef Function f
    cdef int i
    for i in range(BN_NKERNELS):
        f = kernels.get_function("batchnorm.cu", f"{_KERNEL_NAMES[i]}_spatial<{_CTYPES[dt]}, {epi}, true>",
                                 signature(i, dt), options=opts, name_expressions=exprs)
        pr.functions.append(f)
        pr.span_static_shared[i] = <unsigned int>f.attributes["shared_size_bytes"]
        pr.span_kernels[i] = f.func
        _query_occupancy(pr, i, f.attributes["max_threads_per_block"], True)
    return 0


cdef int bn_prepare_desc(bn_desc* d) except -1:
    """Kernel handles, their static shared memory, the SM count and occupancy of d.dtype/d.mode for the current
    (primary) context; compiles/loads on first use. For the Cython/C faces (cybn.capi)."""
    if d.dtype < BN_FLOAT32 or d.dtype > BN_FLOAT64:
        raise ValueError(f"unknown dtype code {d.dtype}")
    if d.mode != BN_SPATIAL and d.mode != BN_PER_ACTIVATION:
        raise ValueError(f"unknown mode code {d.mode}")
    if d.layout != BN_LAYOUT_NCHW and not (d.layout == BN_LAYOUT_NHWC and d.mode == BN_SPATIAL):
        raise ValueError(f"unknown layout code {d.layout} (NHWC is for spatial mode)")
    cdef _Prepared pr = _prepare(d.dtype, d.mode, _epi(d), d.layout)
    if _span_shape(d):
        _prepare_span(pr, d.dtype, _epi(d))
    pr.fill(d)
    return 0
