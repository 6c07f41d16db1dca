# distutils: language = c++
# cython: boundscheck=False, wraparound=False
"""The embedding faces of cybn's BatchNorm: nogil Cython functions (declared in cybn/capi/capi.pxd,
cimported as `from cybn.capi cimport ...`) and the versioned C function table in the capsule `cybn._C_API`
(cybn/include/cybn.h), both thin wrappers over the nogil core of cybn.batchnorm, on cybn.h's plain-C
descriptor.

prepare() (GIL) compiles/loads the kernels and records their handles per (context, dtype, mode) in a
fixed C table; the nogil calls find them through the calling thread's current context, so no Python
object is touched after prepare.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memset, strlen, strncmp
from cpython.pycapsule cimport PyCapsule_New
from cuda.bindings cimport cydriver

from cybn.batchnorm.batchnorm cimport (bn_desc, bn_check_desc, bn_prepare_desc, bn_workspace_size, bn_last_error,
                             bn_forward_train_ex, bn_forward_infer_ex, bn_backward_ex, BN_NKERNELS,
                             BN_OK, BN_EINVAL, BN_ENOTPREPARED, BN_EWORKSPACE, BN_SPATIAL,
                             BN_PER_ACTIVATION, BN_FLOAT32, BN_FLOAT16, BN_DESC_AFFINE, BN_DESC_ACCUMULATE,
                             BN_DESC_BIASED_RUNNING_VAR, BN_DESC_FIX_GAMMA)
from libc.math cimport isfinite

cdef extern from *:
    """
    static __thread char cybn_capi_error[512];
    /* The prepared-kernel table grows under the GIL and is read without it: publish the count last. */
    static int cybn_load_count(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static void cybn_store_count(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    char cybn_capi_error[512]
    int cybn_load_count(const int* p) noexcept nogil
    void cybn_store_count(int* p, int v) noexcept nogil

# cybn.h's codes are the core's (checked once at import; a mismatch would silently mistranslate).
if (CYBN_SPATIAL, CYBN_PER_ACTIVATION, CYBN_FLOAT32, CYBN_FLOAT16, CYBN_AFFINE, CYBN_ACCUMULATE_GRADS,
        CYBN_BIASED_RUNNING_VAR, CYBN_FIX_GAMMA, CYBN_OK, CYBN_EINVAL, CYBN_ENOTPREPARED, CYBN_EWORKSPACE) != (
        BN_SPATIAL, BN_PER_ACTIVATION, BN_FLOAT32, BN_FLOAT16, BN_DESC_AFFINE, BN_DESC_ACCUMULATE,
        BN_DESC_BIASED_RUNNING_VAR, BN_DESC_FIX_GAMMA, BN_OK, BN_EINVAL, BN_ENOTPREPARED, BN_EWORKSPACE):
    raise ImportError("cybn.capi: cybn.h's constants disagree with cybn.batchnorm's core")

C_API_VERSION = CYBN_C_API_VERSION

cdef enum:
    MAX_PREPARED = 64   # (context, dtype, mode) combinations

ctypedef struct _Entry:
    cydriver.CUcontext ctx
    bn_desc kernels      # dtype, mode, kernels, static_shared, sm_count of one prepare()

cdef _Entry _entries[MAX_PREPARED]
cdef int _n_entries = 0


# ------------------------------------------------------------------------------------------ errors
cdef const char* last_error() noexcept nogil:
    return cybn_capi_error


cdef int _fail(int status, const char* op, const char* what) noexcept nogil:
    snprintf(cybn_capi_error, sizeof(cybn_capi_error), "%s: %s", op, what)
    return status


cdef int _core_status(int st, const char* op, const cybn_desc* c) noexcept nogil:
    """The core's status, its message prefixed by the operation (and the descriptor for EINVAL; the CUDA
    error's name and description for a failed launch)."""
    cdef const char* name = NULL
    cdef const char* text = NULL
    if st == BN_OK:
        return st
    if st > 0:
        if cydriver.cuGetErrorName(<cydriver.CUresult>st, &name) != cydriver.CUDA_SUCCESS or name == NULL:
            name = "unknown CUresult"
        if cydriver.cuGetErrorString(<cydriver.CUresult>st, &text) != cydriver.CUDA_SUCCESS or text == NULL:
            text = ""
        snprintf(cybn_capi_error, sizeof(cybn_capi_error), "%s: cuLaunchKernel failed: %s (%d): %s", op,
                 name, st, text)
    elif st == BN_EINVAL:
        snprintf(cybn_capi_error, sizeof(cybn_capi_error),
                 "%s: %s (mode %d, dtype %d, N %lld, C %lld, S %lld, epsilon %g, factor %g)", op,
                 _after_prefix(bn_last_error(), op),
                 c.mode, c.dtype, <long long>c.N, <long long>c.C, <long long>c.S, <double>c.epsilon,
                 <double>c.factor)
    elif st == BN_EWORKSPACE:
        snprintf(cybn_capi_error, sizeof(cybn_capi_error),
                 "%s: workspace missing or smaller than workspace_size() (%llu bytes given)", op,
                 <unsigned long long>c.workspace_bytes)
    else:
        snprintf(cybn_capi_error, sizeof(cybn_capi_error), "%s: %s", op, _after_prefix(bn_last_error(), op))
    return st


cdef const char* _after_prefix(const char* msg, const char* op) noexcept nogil:
    """msg without a leading "op: " (the core's messages often name the operation already)."""
    cdef size_t n = strlen(op)
    if strncmp(msg, op, n) == 0 and msg[n] == b':' and msg[n + 1] == b' ':
        return msg + n + 2
    return msg


# ------------------------------------------------------------------------------------------ prepare
cdef str _codes(int dtype, int mode):
    if dtype < CYBN_FLOAT32 or dtype > CYBN_FLOAT64:
        return (f"dtype must be CYBN_FLOAT32 ({CYBN_FLOAT32}), CYBN_FLOAT16 ({CYBN_FLOAT16}), CYBN_BFLOAT16 "
                f"({CYBN_BFLOAT16}) or CYBN_FLOAT64 ({CYBN_FLOAT64}), got {dtype}")
    if mode != CYBN_SPATIAL and mode != CYBN_PER_ACTIVATION:
        return (f"mode must be CYBN_SPATIAL ({CYBN_SPATIAL}) or CYBN_PER_ACTIVATION ({CYBN_PER_ACTIVATION}), "
                f"got {mode}")
    return None


cdef int prepare(int dtype, int mode) except -1:
    cdef bn_desc t
    bad = _codes(dtype, mode)
    if bad is not None:
        msg = ("prepare: " + bad).encode("utf-8", "replace")
        snprintf(cybn_capi_error, sizeof(cybn_capi_error), "%s", <const char*>msg)
        raise ValueError("prepare: " + bad)
    memset(&t, 0, sizeof(t))
    t.dtype = dtype
    t.mode = mode
    return _prepare(&t, "prepare")


cdef inline int _epi(const bn_desc* d) noexcept nogil:
    # the kernels' EPI template argument: the fused epilogue's variants are programs of their own
    return 1 if d.act != 0 or d.residual else 0


cdef inline bint _same_kernels(const bn_desc* a, const bn_desc* b) noexcept nogil:
    return a.dtype == b.dtype and a.mode == b.mode and a.layout == b.layout and _epi(a) == _epi(b)


cdef int _prepare(bn_desc* t, str op) except -1:
    """Load t's kernels (dtype, mode, layout, epilogue) in the primary context and record them for the nogil calls."""
    global _n_entries
    cdef cydriver.CUcontext ctx = NULL
    cdef int i
    try:
        bn_prepare_desc(t)      # makes the primary context current on this thread
        cydriver.cuCtxGetCurrent(&ctx)
        for i in range(_n_entries):
            if _entries[i].ctx == ctx and _same_kernels(&_entries[i].kernels, t):
                return 0
        if _n_entries == MAX_PREPARED:
            raise RuntimeError(f"{op}: more than {MAX_PREPARED} (context, dtype, mode, layout, epilogue) combinations")
    except BaseException as e:
        msg = str(e).encode("utf-8", "replace")
        snprintf(cybn_capi_error, sizeof(cybn_capi_error), "%s", <const char*>msg)
        raise
    _entries[_n_entries].ctx = ctx
    _entries[_n_entries].kernels = t[0]
    cybn_store_count(&_n_entries, _n_entries + 1)
    return 0


# ------------------------------------------------------------------------------------------ descriptor
cdef int desc_init(cybn_desc* d, int mode, int dtype, int64_t N, int64_t C, int64_t S, float epsilon,
                   float factor, int flags) noexcept nogil:
    cdef cybn_desc c
    cdef bn_desc t
    if d == NULL:
        return _fail(CYBN_EINVAL, "desc_init", "descriptor pointer is NULL")
    memset(&c, 0, sizeof(c))
    c.mode = mode; c.dtype = dtype; c.flags = flags; c.N = N; c.C = C; c.S = S
    c.epsilon = epsilon; c.factor = factor
    c.scale_grad_alpha = 1; c.scale_grad_beta = 0; c.bias_grad_alpha = 1; c.bias_grad_beta = 0
    cdef int st = _check(&c, &t, "desc_init")
    if st == CYBN_OK:
        d[0] = c
    return st


cdef int _check(const cybn_desc* c, bn_desc* d, const char* op) noexcept nogil:
    """c as the core's descriptor (no kernels yet), checked."""
    cdef int i
    if c == NULL:
        return _fail(CYBN_EINVAL, op, "descriptor pointer is NULL")
    for i in range(5):
        if c.reserved[i] != 0:
            return _fail(CYBN_EINVAL, op, "descriptor: reserved fields must be zero (fill it with desc_init)")
    if c.flags & ~_KNOWN_FLAGS:
        return _fail(CYBN_EINVAL, op, "descriptor: unknown flags (CYBN_AFFINE, CYBN_ACCUMULATE_GRADS, "
                     "CYBN_BIASED_RUNNING_VAR, CYBN_FIX_GAMMA and CYBN_RESIDUAL are defined)")
    cdef int st = _check_v3(c, op)
    if st != CYBN_OK:
        return st
    if c.flags & CYBN_ACCUMULATE_GRADS and not (isfinite(c.scale_grad_alpha) and isfinite(c.scale_grad_beta)
                                                and isfinite(c.bias_grad_alpha) and isfinite(c.bias_grad_beta)):
        return _fail(CYBN_EINVAL, op, "descriptor: scale_grad_alpha/beta and bias_grad_alpha/beta must be finite")
    memset(d, 0, sizeof(bn_desc))
    d.mode = c.mode; d.dtype = c.dtype; d.N = c.N; d.C = c.C; d.S = c.S
    d.epsilon = c.epsilon; d.factor = c.factor
    d.flags = ((BN_DESC_AFFINE if c.flags & CYBN_AFFINE else 0)
               | (BN_DESC_ACCUMULATE if c.flags & CYBN_ACCUMULATE_GRADS else 0)
               | (BN_DESC_BIASED_RUNNING_VAR if c.flags & CYBN_BIASED_RUNNING_VAR else 0)
               | (BN_DESC_FIX_GAMMA if c.flags & CYBN_FIX_GAMMA else 0))
    d.layout = c.layout; d.act = c.activation; d.act_alpha = c.activation_alpha
    d.residual = 1 if c.flags & CYBN_RESIDUAL else 0
    d.scale_grad_alpha = c.scale_grad_alpha; d.scale_grad_beta = c.scale_grad_beta
    d.bias_grad_alpha = c.bias_grad_alpha; d.bias_grad_beta = c.bias_grad_beta
    d.workspace = c.workspace
    d.workspace_bytes = c.workspace_bytes
    d.force_cache = -1   # the heuristic's plan (no test overrides here)
    if c.workspace % 16 != 0:
        return _fail(CYBN_EINVAL, op, "descriptor: workspace is not 16-byte aligned")
    return _core_status(bn_check_desc(d), op, c)


cdef enum:
    _KNOWN_FLAGS = CYBN_AFFINE | CYBN_ACCUMULATE_GRADS | CYBN_BIASED_RUNNING_VAR | CYBN_FIX_GAMMA | CYBN_RESIDUAL


cdef int _check_v3(const cybn_desc* c, const char* op) noexcept nogil:
    """Version 3's fields: the codes and alpha checked for what they mean. What the core's kernels cannot do
    (e.g. a dtype or the epilogue in channels-last, where it lacks them) is its bn_check_desc's to refuse by
    name: CYBN_EINVAL with its message, nothing launched."""
    if c.layout != CYBN_LAYOUT_NCHW and c.layout != CYBN_LAYOUT_NHWC:
        return _fail(CYBN_EINVAL, op, "descriptor: layout must be CYBN_LAYOUT_NCHW (0) or CYBN_LAYOUT_NHWC (1)")
    if c.layout == CYBN_LAYOUT_NHWC and c.mode == CYBN_PER_ACTIVATION:
        return _fail(CYBN_EINVAL, op, "descriptor: CYBN_PER_ACTIVATION has one layout (rows of C * S "
                     "statistics): use CYBN_LAYOUT_NCHW")
    if c.activation < CYBN_ACT_NONE or c.activation > CYBN_ACT_SWISH:
        return _fail(CYBN_EINVAL, op, "descriptor: activation must be a CYBN_ACT_* code (0 to 7)")
    if not isfinite(c.activation_alpha):
        return _fail(CYBN_EINVAL, op, "descriptor: activation_alpha must be finite")
    if c.activation == CYBN_ACT_CLIPPED_RELU and not c.activation_alpha > 0:
        return _fail(CYBN_EINVAL, op, "descriptor: CYBN_ACT_CLIPPED_RELU needs activation_alpha > 0 (its ceiling; "
                     "relu6: 6)")
    if (c.activation == CYBN_ACT_LEAKY_RELU or c.activation == CYBN_ACT_ELU) and c.activation_alpha < 0:
        return _fail(CYBN_EINVAL, op, "descriptor: CYBN_ACT_LEAKY_RELU and CYBN_ACT_ELU need activation_alpha >= 0")
    return CYBN_OK


cdef int _v2_entry(const cybn_desc* c, int backward, const char* op) noexcept nogil:
    """The version 2 entries take no z, dz, y or (backward) bias: refuse what needs them."""
    if c != NULL and c.flags & CYBN_RESIDUAL:
        return _fail(CYBN_EINVAL, op, "CYBN_RESIDUAL needs the residual's arrays: call the *_ex entry")
    if c != NULL and backward and c.activation != CYBN_ACT_NONE:
        return _fail(CYBN_EINVAL, op, "a backward through an activation needs y or bias: call the *_ex entry")
    return CYBN_OK


cdef int _resolve(const cybn_desc* c, bn_desc* d, const char* op) noexcept nogil:
    """Checked core descriptor with the kernels prepare() loaded for the current context."""
    cdef int st = _check(c, d, op)
    if st != CYBN_OK:
        return st
    cdef cydriver.CUcontext ctx = NULL
    if cydriver.cuCtxGetCurrent(&ctx) != cydriver.CUDA_SUCCESS or ctx == NULL:
        return _fail(CYBN_ENOTPREPARED, op, "no current CUDA context on this thread: make the device's "
                     "primary context current (prepare() does so on its own thread)")
    cdef int i, n = cybn_load_count(&_n_entries)
    for i in range(n):
        if _entries[i].ctx == ctx and _same_kernels(&_entries[i].kernels, d):
            d.kernels = _entries[i].kernels.kernels
            d.static_shared = _entries[i].kernels.static_shared
            d.sm_count = _entries[i].kernels.sm_count
            d.occ = _entries[i].kernels.occ
            d.smem_budget = _entries[i].kernels.smem_budget
            d.smem_less = _entries[i].kernels.smem_less
            d.coop_ok = _entries[i].kernels.coop_ok
            return CYBN_OK
    return _fail(CYBN_ENOTPREPARED, op, "kernels not prepared for this dtype, mode and epilogue in the current "
                 "context: call prepare(dtype, mode) first (with the GIL; prepare_desc(d) for an activation or "
                 "a residual)")


cdef int workspace_size(const cybn_desc* d, uint64_t* nbytes) noexcept nogil:
    cdef bn_desc t
    if nbytes == NULL:
        return _fail(CYBN_EINVAL, "workspace_size", "nbytes pointer is NULL")
    cdef int st = _resolve(d, &t, "workspace_size")
    if st == CYBN_OK:
        nbytes[0] = bn_workspace_size(&t)
    return st


# ------------------------------------------------------------------------------------------ operations
cdef inline bint _misaligned(cydriver.CUdeviceptr p, int size) noexcept nogil:
    return p % size != 0


cdef int _aligned(const cybn_desc* c, const char* op, cydriver.CUdeviceptr* data, int ndata,
                  cydriver.CUdeviceptr* stats, int nstats) noexcept nogil:
    """Data pointers on their element size, parameters on theirs (null pointers are the core's to judge)."""
    cdef int i
    cdef int size = 2 if c.dtype == CYBN_FLOAT16 or c.dtype == CYBN_BFLOAT16 else (8 if c.dtype == CYBN_FLOAT64 else 4)
    cdef int psize = 8 if c.dtype == CYBN_FLOAT64 else 4
    for i in range(ndata):
        if _misaligned(data[i], size):
            return _fail(CYBN_EINVAL, op, "a data pointer (x, y, dy, dx, z or dz) is not aligned to its element size")
    for i in range(nstats):
        if _misaligned(stats[i], psize):
            return _fail(CYBN_EINVAL, op, "a parameter pointer (scale, bias, statistics, gradients) is not "
                         "4-byte aligned" if psize == 4 else "a float64 parameter pointer (scale, bias, "
                         "statistics, gradients) is not 8-byte aligned")
    return CYBN_OK


cdef int forward_train_ex(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                          cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                          cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                          cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                          cydriver.CUstream stream) noexcept nogil:
    return _forward_train(c, x, z, y, scale, bias, running_mean, running_var, save_mean, save_invstd, stream,
                          "forward_train_ex")


cdef int forward_train(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                       cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                       cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                       cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                       cydriver.CUstream stream) noexcept nogil:
    if _v2_entry(c, 0, "forward_train") != CYBN_OK:
        return CYBN_EINVAL
    return _forward_train(c, x, 0, y, scale, bias, running_mean, running_var, save_mean, save_invstd, stream,
                          "forward_train")


cdef int _forward_train(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                        cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                        cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                        cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                        cydriver.CUstream stream, const char* op) noexcept nogil:
    cdef bn_desc d
    cdef int st = _resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    cdef cydriver.CUdeviceptr data[3]
    cdef cydriver.CUdeviceptr stats[6]
    if not d.residual:
        z = 0   # ignored without CYBN_RESIDUAL (cybn.h)
    data[0] = x; data[1] = y; data[2] = z
    stats[0] = scale; stats[1] = bias; stats[2] = running_mean; stats[3] = running_var
    stats[4] = save_mean; stats[5] = save_invstd
    st = _aligned(c, op, data, 3, stats, 6)
    if st != CYBN_OK:
        return st
    return _core_status(bn_forward_train_ex(&d, x, y, scale, bias, running_mean, running_var, save_mean,
                                            save_invstd, z, stream), op, c)


cdef int forward_infer_ex(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                          cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                          cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                          cydriver.CUstream stream) noexcept nogil:
    return _forward_infer(c, x, z, y, scale, bias, running_mean, running_var, stream, "forward_infer_ex")


cdef int forward_infer(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                       cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                       cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                       cydriver.CUstream stream) noexcept nogil:
    if _v2_entry(c, 0, "forward_infer") != CYBN_OK:
        return CYBN_EINVAL
    return _forward_infer(c, x, 0, y, scale, bias, running_mean, running_var, stream, "forward_infer")


cdef int _forward_infer(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                        cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                        cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                        cydriver.CUstream stream, const char* op) noexcept nogil:
    cdef bn_desc d
    cdef int st = _resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    cdef cydriver.CUdeviceptr data[3]
    cdef cydriver.CUdeviceptr stats[4]
    if not d.residual:
        z = 0
    data[0] = x; data[1] = y; data[2] = z
    stats[0] = scale; stats[1] = bias; stats[2] = running_mean; stats[3] = running_var
    st = _aligned(c, op, data, 3, stats, 4)
    if st != CYBN_OK:
        return st
    return _core_status(bn_forward_infer_ex(&d, x, y, scale, bias, running_mean, running_var, z, stream), op, c)


cdef int _backward(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z, cydriver.CUdeviceptr y,
                   cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx, cydriver.CUdeviceptr dz,
                   cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr mean,
                   cydriver.CUdeviceptr stat, cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                   int frozen, cydriver.CUstream stream, const char* op) noexcept nogil:
    cdef bn_desc d
    cdef int st = _resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    if not frozen:
        d.epsilon = 1.0   # unused: the saved invstd already holds it
    cdef cydriver.CUdeviceptr data[6]
    cdef cydriver.CUdeviceptr stats[6]
    if not d.residual:
        z = dz = 0   # ignored without CYBN_RESIDUAL, y without an activation (cybn.h)
    if d.act == CYBN_ACT_NONE:
        y = 0
    data[0] = x; data[1] = dy; data[2] = dx; data[3] = z; data[4] = y; data[5] = dz
    stats[0] = scale; stats[1] = mean; stats[2] = stat; stats[3] = scale_grad; stats[4] = bias_grad
    stats[5] = bias
    st = _aligned(c, op, data, 6, stats, 6)
    if st != CYBN_OK:
        return st
    return _core_status(bn_backward_ex(&d, x, dy, dx, scale, mean, stat, scale_grad, bias_grad, 0, 0, frozen,
                                       bias, y, z, dz, stream), op, c)


cdef int backward(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx,
                  cydriver.CUdeviceptr scale, cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                  cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                  cydriver.CUstream stream) noexcept nogil:
    if _v2_entry(d, 1, "backward") != CYBN_OK:
        return CYBN_EINVAL
    return _backward(d, x, 0, 0, dy, dx, 0, scale, 0, save_mean, save_invstd, scale_grad, bias_grad, 0, stream,
                     "backward")


cdef int backward_infer(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                        cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr running_mean,
                        cydriver.CUdeviceptr running_var, cydriver.CUdeviceptr scale_grad,
                        cydriver.CUdeviceptr bias_grad, cydriver.CUstream stream) noexcept nogil:
    if _v2_entry(d, 1, "backward_infer") != CYBN_OK:
        return CYBN_EINVAL
    return _backward(d, x, 0, 0, dy, dx, 0, scale, 0, running_mean, running_var, scale_grad, bias_grad, 1, stream,
                     "backward_infer")


cdef int backward_ex(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z, cydriver.CUdeviceptr y,
                     cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx, cydriver.CUdeviceptr dz,
                     cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr save_mean,
                     cydriver.CUdeviceptr save_invstd, cydriver.CUdeviceptr scale_grad,
                     cydriver.CUdeviceptr bias_grad, cydriver.CUstream stream) noexcept nogil:
    return _backward(d, x, z, y, dy, dx, dz, scale, bias, save_mean, save_invstd, scale_grad, bias_grad, 0, stream,
                     "backward_ex")


cdef int backward_infer_ex(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                           cydriver.CUdeviceptr y, cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx,
                           cydriver.CUdeviceptr dz, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                           cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                           cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                           cydriver.CUstream stream) noexcept nogil:
    return _backward(d, x, z, y, dy, dx, dz, scale, bias, running_mean, running_var, scale_grad, bias_grad, 1,
                     stream, "backward_infer_ex")


cdef int prepare_desc(const cybn_desc* c) except -1:
    cdef bn_desc t
    cdef int st = _check(c, &t, "prepare_desc")
    if st != CYBN_OK:
        raise ValueError((<bytes>cybn_capi_error).decode("utf-8", "replace"))
    return _prepare(&t, "prepare_desc")


# ------------------------------------------------------------------------------------------ C table
# cybn.h's signatures (int32_t codes, void* streams) over the Cython functions above.
cdef int _c_prepare(int32_t dtype, int32_t mode) except -4:
    prepare(dtype, mode)
    return CYBN_OK


cdef int _c_desc_init(cybn_desc* d, int32_t mode, int32_t dtype, int64_t N, int64_t C, int64_t S,
                      float epsilon, float factor, int32_t flags) noexcept nogil:
    return desc_init(d, mode, dtype, N, C, S, epsilon, factor, flags)


cdef int _c_forward_train(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr y, cybn_deviceptr scale,
                          cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                          cybn_deviceptr save_mean, cybn_deviceptr save_invstd, void* stream) noexcept nogil:
    return forward_train(d, x, y, scale, bias, running_mean, running_var, save_mean, save_invstd,
                         <cydriver.CUstream>stream)


cdef int _c_forward_infer(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr y, cybn_deviceptr scale,
                          cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                          void* stream) noexcept nogil:
    return forward_infer(d, x, y, scale, bias, running_mean, running_var, <cydriver.CUstream>stream)


cdef int _c_backward(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr dy, cybn_deviceptr dx,
                     cybn_deviceptr scale, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                     cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil:
    return backward(d, x, dy, dx, scale, save_mean, save_invstd, scale_grad, bias_grad, <cydriver.CUstream>stream)


cdef int _c_backward_infer(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr dy, cybn_deviceptr dx,
                           cybn_deviceptr scale, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                           cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil:
    return backward_infer(d, x, dy, dx, scale, running_mean, running_var, scale_grad, bias_grad,
                          <cydriver.CUstream>stream)



cdef int _c_prepare_desc(const cybn_desc* d) except -4:
    prepare_desc(d)
    return CYBN_OK


cdef int _c_forward_train_ex(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                             cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                             cybn_deviceptr running_var, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                             void* stream) noexcept nogil:
    return forward_train_ex(d, x, z, y, scale, bias, running_mean, running_var, save_mean, save_invstd,
                            <cydriver.CUstream>stream)


cdef int _c_forward_infer_ex(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                             cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                             cybn_deviceptr running_var, void* stream) noexcept nogil:
    return forward_infer_ex(d, x, z, y, scale, bias, running_mean, running_var, <cydriver.CUstream>stream)


cdef int _c_backward_ex(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                        cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr dz, cybn_deviceptr scale,
                        cybn_deviceptr bias, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                        cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil:
    return backward_ex(d, x, z, y, dy, dx, dz, scale, bias, save_mean, save_invstd, scale_grad, bias_grad,
                       <cydriver.CUstream>stream)


cdef int _c_backward_infer_ex(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                              cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr dz, cybn_deviceptr scale,
                              cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                              cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil:
    return backward_infer_ex(d, x, z, y, dy, dx, dz, scale, bias, running_mean, running_var, scale_grad, bias_grad,
                             <cydriver.CUstream>stream)


include "sync_split.pxi"


cdef cybn_api _table
_table.version = CYBN_C_API_VERSION
_table.size = sizeof(cybn_api)
_table.prepare = _c_prepare
_table.desc_init = _c_desc_init
_table.workspace_size = workspace_size
_table.forward_train = _c_forward_train
_table.forward_infer = _c_forward_infer
_table.backward = _c_backward
_table.backward_infer = _c_backward_infer
_table.last_error = last_error
_table.prepare_desc = _c_prepare_desc
_table.forward_train_ex = _c_forward_train_ex
_table.forward_infer_ex = _c_forward_infer_ex
_table.backward_ex = _c_backward_ex
_table.backward_infer_ex = _c_backward_infer_ex
_table.forward_train_partials = _c_forward_train_partials
_table.forward_train_combined = _c_forward_train_combined
_table.backward_sums = _c_backward_sums
_table.backward_combined = _c_backward_combined

# `cybn._C_API` (cybn/__init__.py forwards the attribute here): what cybn_import() fetches.
_C_API = PyCapsule_New(<void*>&_table, b"cybn._C_API", NULL)
