# The nogil core's error text and checks of a descriptor and its arguments: shapes and values
# (bn_check_desc), prepared kernels (_validate), and that no output overlaps another argument
# (_no_overlap, shared with the Python face's _no_aliasing). Included by batchnorm.pyx.

cdef extern from *:
    """
    static __thread char cybn_bn_error[256];
    """
    char cybn_bn_error[256]


cdef const char* bn_last_error() noexcept nogil:
    return cybn_bn_error


cdef int _fail(int status, const char* what) noexcept nogil:
    snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s", what)
    return status


cdef int bn_check_desc(const bn_desc* d) noexcept nogil:
    cdef long long stats
    if d.mode != BN_SPATIAL and d.mode != BN_PER_ACTIVATION:
        return _fail(BN_EINVAL, "descriptor: unknown mode")
    if d.dtype != BN_FLOAT32 and d.dtype != BN_FLOAT16 and d.dtype != BN_BFLOAT16 and d.dtype != BN_FLOAT64:
        return _fail(BN_EINVAL, "descriptor: unknown dtype")
    if d.layout != BN_LAYOUT_NCHW and not (d.layout == BN_LAYOUT_NHWC and d.mode == BN_SPATIAL):
        return _fail(BN_EINVAL, "descriptor: unknown layout (NHWC is for spatial mode; per-activation is (N, F) "
                     "rows in either layout)")
    if d.act < BN_ACT_NONE or d.act > BN_ACT_SWISH:
        return _fail(BN_EINVAL, "descriptor: unknown activation")
    if not (d.act_alpha == d.act_alpha and d.act_alpha > -1.7976931348623157e308 and d.act_alpha < 1.7976931348623157e308):
        return _fail(BN_EINVAL, "descriptor: act_alpha must be finite")
    if d.act == BN_ACT_CLIPPED_RELU and not d.act_alpha > 0:
        return _fail(BN_EINVAL, "descriptor: clipped relu needs act_alpha > 0 (its ceiling)")
    if (d.act == BN_ACT_LEAKY_RELU or d.act == BN_ACT_ELU) and d.act_alpha < 0:
        return _fail(BN_EINVAL, "descriptor: leaky relu and elu need act_alpha >= 0")
    if d.N < 1 or d.C < 1 or d.S < 1:
        return _fail(BN_EINVAL, "descriptor: N, C and S must be positive")
    if d.N > (1LL << 62) // _elem_bytes(d.dtype) // d.C // d.S:
        return _fail(BN_EINVAL, "descriptor: N * C * S overflows 64 bits (as bytes: more than 2^62)")
    stats = d.C if d.mode == BN_SPATIAL else d.C * d.S
    if stats > (1LL << 31) - 1:
        return _fail(BN_EINVAL, "descriptor: more than 2^31 - 1 statistics")
    if not (d.epsilon > 0 and d.epsilon <= (1.7976931348623157e308 if d.dtype == BN_FLOAT64 else 3.4028234663852886e38)):
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


cdef inline int _elem_bytes(int dtype) noexcept nogil:
    """Bytes of one data element."""
    return 2 if (dtype == BN_FLOAT16 or dtype == BN_BFLOAT16) else (8 if dtype == BN_FLOAT64 else 4)


cdef inline int _param_bytes(int dtype) noexcept nogil:
    """Bytes of one statistic / parameter / workspace value (P: float, double for float64 data)."""
    return 8 if dtype == BN_FLOAT64 else 4


cdef inline int _epi(const bn_desc* d) noexcept nogil:
    """The kernels' EPI template argument: 1 when the descriptor fuses an epilogue."""
    return 1 if (d.act != BN_ACT_NONE or d.residual) else 0


cdef inline unsigned long long _data_bytes(const bn_desc* d) noexcept nogil:
    return <unsigned long long>d.N * d.C * d.S * _elem_bytes(d.dtype)


cdef inline unsigned long long _stat_bytes(const bn_desc* d) noexcept nogil:
    return <unsigned long long>(d.C if d.mode == BN_SPATIAL else d.C * d.S) * _param_bytes(d.dtype)
