# The nogil core: validate, plan, and launch the kernels of cybn/kernels/batchnorm.cu with
# cuLaunchKernel (one or two launches per call; a backward's one cooperative launch where the plan
# says so; a split call's counters need a memset only where scratch.pxi's rule cannot trust them).
# No Python object is touched: the Python, Cython and C faces all end here. Included by batchnorm.pyx.

cdef int _launch(const bn_desc* d, int kernel, const bn_plan* p, cydriver.CUstream stream, void** args) noexcept nogil:
    cdef cydriver.CUfunction f = d.span_kernels[kernel] if p.vec == 3 else d.kernels[kernel]  # SPAN: its programs'
    cdef cydriver.CUresult r
    if p.coop:  # every CTA co-resident (the plan keeps one wave): the column barrier's precondition
        r = cydriver.cuLaunchCooperativeKernel(f, p.grid[0], p.grid[1], p.grid[2], p.block[0], p.block[1], p.block[2],
                                               p.shared_bytes, stream, args)
    else:
        r = cydriver.cuLaunchKernel(f, p.grid[0], p.grid[1], p.grid[2], p.block[0], p.block[1], p.block[2],
                                    p.shared_bytes, stream, args, NULL)
    if r != cydriver.CUDA_SUCCESS:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s failed: %d",
                 <const char*>("cuLaunchCooperativeKernel" if p.coop else "cuLaunchKernel"), <int>r)
        return <int>r
    return BN_OK


cdef inline int _coop_refused(int st, const bn_desc* d, bn_plan* p, int* flags, int* cache) noexcept nogil:
    """After a cooperative launch the driver refused as too large (it sees fewer co-resident CTAs than the
    plan: MPS, a shared device), nothing was enqueued: the same grid becomes a plain split (True)."""
    if st != <int>cydriver.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE or not p.coop:
        return False
    bn_plan_drop_coop(d, p)
    flags[0] = flags[0] & ~BN_COOP
    cache[0] = 0
    return True


# The kernels' floating scalars in their parameter type P (float, double for float64 data): 0 epsilon,
# 1 factor, 2 act_alpha, 3-6 the gradients' alphas/betas.
ctypedef struct _scalars:
    float f[7]
    double g[7]
    bint f64


cdef inline void _set_scalars(_scalars* s, const bn_desc* d) noexcept nogil:
    cdef double v[3]
    cdef int i
    v[0] = d.epsilon; v[1] = d.factor; v[2] = d.act_alpha
    s.f64 = d.dtype == BN_FLOAT64
    for i in range(3):
        s.g[i] = v[i]; s.f[i] = <float>v[i]


cdef inline void _set_grad_scalars(_scalars* s, const double* ab) noexcept nogil:
    cdef int i
    for i in range(4):
        s.g[3 + i] = ab[i]; s.f[3 + i] = <float>ab[i]


cdef inline void* _scalar(_scalars* s, int i) noexcept nogil:
    return <void*>&s.g[i] if s.f64 else <void*>&s.f[i]


cdef int bn_forward_train_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                               cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                               cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                               cydriver.CUstream stream) noexcept nogil:
    return bn_forward_train_ex(d, x, y, scale, bias, running_mean, running_var, save_mean, save_invstd, 0, stream)


cdef int bn_forward_infer_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                               cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                               cydriver.CUstream stream) noexcept nogil:
    return bn_forward_infer_ex(d, x, y, scale, bias, running_mean, running_var, 0, stream)


cdef int bn_backward_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                          cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr mean,
                          cydriver.CUdeviceptr stat, cydriver.CUdeviceptr scale_grad,
                          cydriver.CUdeviceptr bias_grad, cydriver.CUdeviceptr batch_scale_grad,
                          cydriver.CUdeviceptr batch_bias_grad, int frozen, cydriver.CUstream stream) noexcept nogil:
    return bn_backward_ex(d, x, dy, dx, scale, mean, stat, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad,
                          frozen, 0, 0, 0, 0, stream)


cdef int _check_epilogue(const bn_desc* d, cydriver.CUdeviceptr z, const char* op) noexcept nogil:
    """The residual pointer agrees with the descriptor (given exactly when d.residual)."""
    if d.residual and z == 0:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s: the descriptor has a residual but z is null", op)
        return BN_EINVAL
    if not d.residual and z != 0:
        snprintf(cybn_bn_error, sizeof(cybn_bn_error), "%s: z given but the descriptor has no residual", op)
        return BN_EINVAL
    return BN_OK


cdef inline int _vec_with(int vec, cydriver.CUdeviceptr x, cydriver.CUdeviceptr e) noexcept nogil:
    """16-byte units only where an epilogue array e (0: none) lines up with x as the kernels read it."""
    if e == 0 or vec == 0:
        return vec
    if vec == 1 or vec == 3:  # rows (SPAN: every CTA's span) 16-byte aligned from an aligned base
        return vec if _aligned(e) else 0
    return 2 if e % 16 == x % 16 else 0


cdef int bn_forward_train_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                             cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                             cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                             cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                             cydriver.CUdeviceptr z, cydriver.CUstream stream) noexcept nogil:
    cdef int st = _validate(d, BN_K_FWD_TRAIN)
    if st != BN_OK:
        return st
    st = _validate(d, BN_K_NORMALIZE)
    if st != BN_OK:
        return st
    if x == 0 or y == 0 or running_mean == 0 or running_var == 0 or save_mean == 0 or save_invstd == 0:
        return _fail(BN_EINVAL, "forward_train: null x, y, running or saved statistics pointer")
    if (d.flags & BN_DESC_AFFINE) and ((scale == 0 and not d.flags & BN_DESC_FIX_GAMMA) or bias == 0):
        return _fail(BN_EINVAL, "forward_train: affine descriptor with a null scale or bias")
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d), pb = kb if d.flags & BN_DESC_AFFINE else 0
    st = _check_epilogue(d, z, "forward_train")
    if st != BN_OK:
        return st
    cdef _span outs[5]
    cdef _span ins[3]
    _set_span(&outs[0], "y", y, xb); _set_span(&outs[1], "running_mean", running_mean, kb)
    _set_span(&outs[2], "running_var", running_var, kb); _set_span(&outs[3], "save_mean", save_mean, kb)
    _set_span(&outs[4], "save_invstd", save_invstd, kb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "scale", scale, pb); _set_span(&ins[2], "bias", bias, pb)
    st = _no_overlap(outs, 5, ins, 3, d, 1)
    if st == BN_OK and z != 0:  # z may be y exactly (each unit is read, then written, by its owner)
        _set_span(&ins[0], "residual", z, xb)
        st = _no_overlap(outs, 5, ins, 1, d, 1)
    if st != BN_OK:
        return st
    cdef bn_plan p, q
    bn_make_plan(d, BN_K_FWD_TRAIN, _vec_with(_vec_ok(d, x, y, x), x, z), &p)
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
        st = _arm_counters(d, stream)
        if st != BN_OK:
            return st
    else:
        counters = partials = 0
    cdef long long N = d.N, C = _rows_k(d), S = _rows_s(d)  # per-activation: (N, F) rows
    cdef _scalars sc
    _set_scalars(&sc, d)
    cdef int flags = ((BN_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec)
                      | (BN_BIASED_RUNVAR if d.flags & BN_DESC_BIASED_RUNNING_VAR else 0)
                      | (BN_PARTIALS if d.flags & BN_DESC_PARTIALS else 0) | _fix_gamma(d))
    cdef int cache = p.cache_units, act = d.act
    cdef void* args[21]
    args[0] = &x; args[1] = &y; args[2] = &scale; args[3] = &bias; args[4] = &running_mean
    args[5] = &running_var; args[6] = &save_mean; args[7] = &save_invstd; args[8] = &partials
    args[9] = &counters; args[10] = &shifted; args[11] = &N; args[12] = &C; args[13] = &S
    args[14] = _scalar(&sc, 0); args[15] = _scalar(&sc, 1); args[16] = &flags; args[17] = &cache
    args[18] = &z; args[19] = &act; args[20] = _scalar(&sc, 2)
    st = _launch(d, BN_K_FWD_TRAIN, &p, stream, args)
    if p.split == 1:
        return st
    if st != BN_OK or d.flags & BN_DESC_PARTIALS:  # partials: no normalisation (sync.pxi)
        return _counters_done(d, st)
    # Second launch of the split plan (q, planned above): normalise with the combined statistics.
    flags = flags | BN_SHIFTED
    cdef void* nargs[15]
    nargs[0] = &x; nargs[1] = &y; nargs[2] = &save_mean; nargs[3] = &save_invstd; nargs[4] = &scale
    nargs[5] = &bias; nargs[6] = &shifted; nargs[7] = &N; nargs[8] = &C; nargs[9] = &S; nargs[10] = _scalar(&sc, 0)
    nargs[11] = &flags; nargs[12] = &z; nargs[13] = &act; nargs[14] = _scalar(&sc, 2)
    return _counters_done(d, _launch(d, BN_K_NORMALIZE, &q, stream, nargs))


cdef int bn_forward_infer_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                             cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                             cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                             cydriver.CUdeviceptr z, cydriver.CUstream stream) noexcept nogil:
    cdef int st = _validate(d, BN_K_NORMALIZE)
    if st != BN_OK:
        return st
    if x == 0 or y == 0 or running_mean == 0 or running_var == 0:
        return _fail(BN_EINVAL, "forward_infer: null x, y or running statistics pointer")
    if (d.flags & BN_DESC_AFFINE) and ((scale == 0 and not d.flags & BN_DESC_FIX_GAMMA) or bias == 0):
        return _fail(BN_EINVAL, "forward_infer: affine descriptor with a null scale or bias")
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d), pb = kb if d.flags & BN_DESC_AFFINE else 0
    cdef _span outs[1]
    cdef _span ins[5]
    _set_span(&outs[0], "y", y, xb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "scale", scale, pb); _set_span(&ins[2], "bias", bias, pb)
    _set_span(&ins[3], "running_mean", running_mean, kb); _set_span(&ins[4], "running_var", running_var, kb)
    st = _check_epilogue(d, z, "forward_infer")
    if st == BN_OK:
        st = _no_overlap(outs, 1, ins, 5, d, 1)
    if st == BN_OK and z != 0:
        _set_span(&ins[0], "residual", z, xb)
        st = _no_overlap(outs, 1, ins, 1, d, 1)
    if st != BN_OK:
        return st
    cdef bn_plan p
    bn_make_plan(d, BN_K_NORMALIZE, _vec_with(_vec_ok(d, x, y, x), x, z), &p)
    st = _check_limits(&p)
    if st != BN_OK:
        return st
    cdef long long N = d.N, C = _rows_k(d), S = _rows_s(d)  # per-activation: (N, F) rows
    cdef _scalars sc
    _set_scalars(&sc, d)
    cdef int flags = (BN_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec) | BN_STAT_IS_VAR | _fix_gamma(d)
    cdef int act = d.act
    cdef cydriver.CUdeviceptr none = 0
    cdef void* args[15]
    args[0] = &x; args[1] = &y; args[2] = &running_mean; args[3] = &running_var; args[4] = &scale
    args[5] = &bias; args[6] = &none; args[7] = &N; args[8] = &C; args[9] = &S; args[10] = _scalar(&sc, 0)
    args[11] = &flags; args[12] = &z; args[13] = &act; args[14] = _scalar(&sc, 2)
    return _launch(d, BN_K_NORMALIZE, &p, stream, args)


cdef int bn_backward_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                        cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr mean,
                        cydriver.CUdeviceptr stat, cydriver.CUdeviceptr scale_grad,
                        cydriver.CUdeviceptr bias_grad, cydriver.CUdeviceptr batch_scale_grad,
                        cydriver.CUdeviceptr batch_bias_grad, int frozen, cydriver.CUdeviceptr bias,
                        cydriver.CUdeviceptr y, cydriver.CUdeviceptr z, cydriver.CUdeviceptr dz,
                        cydriver.CUstream stream) noexcept nogil:
    cdef int st = _validate(d, BN_K_BWD)
    if st != BN_OK:
        return st
    st = _validate(d, BN_K_BWD_DX)
    if st != BN_OK:
        return st
    if x == 0 or dy == 0 or dx == 0 or mean == 0 or stat == 0 or scale_grad == 0 or bias_grad == 0:
        return _fail(BN_EINVAL, "backward: null x, dy, dx, statistics or gradient pointer")
    if (d.flags & BN_DESC_AFFINE) and scale == 0 and not d.flags & BN_DESC_FIX_GAMMA:
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
    if d.residual and dz == 0:
        return _fail(BN_EINVAL, "backward: the descriptor has a residual but dz is null")
    if not d.residual and dz != 0:
        return _fail(BN_EINVAL, "backward: dz given but the descriptor has no residual")
    if not _epi(d) and (y != 0 or z != 0):
        return _fail(BN_EINVAL, "backward: y or z given without an epilogue in the descriptor")
    cdef _span eouts[6]  # the epilogue's arrays against every output (dz against every input too)
    cdef int i
    _set_span(&eouts[0], "dz", dz, xb)
    for i in range(5):
        eouts[i + 1] = outs[i]
    _set_span(&ins[0], "y", y, xb); _set_span(&ins[1], "residual", z, xb)
    _set_span(&ins[2], "bias", bias, kb if d.flags & BN_DESC_AFFINE else 0)
    _set_span(&ins[3], "x", x, xb); _set_span(&ins[4], "dy", dy, xb)
    st = _no_overlap(eouts, 1, ins, 5, d, 0)
    if st == BN_OK:
        st = _no_overlap(eouts, 6, ins, 3, d, 0)
    if st != BN_OK:
        return st
    cdef double ab[4]
    if d.flags & BN_DESC_ACCUMULATE:
        ab[0] = d.scale_grad_alpha; ab[1] = d.scale_grad_beta; ab[2] = d.bias_grad_alpha; ab[3] = d.bias_grad_beta
    else:
        ab[0] = 1; ab[1] = 0; ab[2] = 1; ab[3] = 0
    cdef bn_plan p, q
    bn_make_plan(d, BN_K_BWD, _vec_with(_vec_with(_vec_with(_vec_ok(d, x, dy, dx), x, y), x, z), x, dz), &p)
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
    cdef long long N = d.N, C = _rows_k(d), S = _rows_s(d)  # per-activation: (N, F) rows
    cdef _scalars sc
    _set_scalars(&sc, d)
    _set_grad_scalars(&sc, ab)
    cdef int flags = ((BN_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec)
                      | (BN_STAT_IS_VAR if frozen else 0) | (BN_SUMS if d.flags & BN_DESC_SUMS else 0) | _fix_gamma(d))
    if p.coop and frozen:  # the frozen split writes dx in its one pass: nothing to meet for
        bn_plan_drop_coop(d, &p)
    if p.coop:
        flags = flags | BN_COOP
    cdef int cache = p.cache_units, act = d.act
    if not (d.flags & BN_DESC_AFFINE):
        bias = 0
    if p.split > 1:
        st = _arm_counters(d, stream)
        if st != BN_OK:
            return st
    cdef void* args[29]
    args[0] = &x; args[1] = &dy; args[2] = &dx; args[3] = &scale; args[4] = &mean; args[5] = &stat
    args[6] = &scale_grad; args[7] = &bias_grad; args[8] = &batch_scale_grad; args[9] = &batch_bias_grad
    args[10] = &partials; args[11] = &counters; args[12] = &tail; args[13] = &N; args[14] = &C; args[15] = &S
    args[16] = _scalar(&sc, 0); args[17] = _scalar(&sc, 3); args[18] = _scalar(&sc, 4); args[19] = _scalar(&sc, 5)
    args[20] = _scalar(&sc, 6); args[21] = &flags; args[22] = &cache
    args[23] = &bias; args[24] = &y; args[25] = &z; args[26] = &dz; args[27] = &act; args[28] = _scalar(&sc, 2)
    st = _launch(d, BN_K_BWD, &p, stream, args)
    if _coop_refused(st, d, &p, &flags, &cache):
        st = _launch(d, BN_K_BWD, &p, stream, args)
    if p.split == 1:
        return st
    if st != BN_OK or p.coop or frozen or d.flags & BN_DESC_SUMS:  # sums: dx is sync.pxi's
        return _counters_done(d, st)
    # Second launch of the split plan (q, planned above): dx from the constants the first launch's last CTAs wrote.
    cdef cydriver.CUdeviceptr none = 0
    cdef void* dargs[15]
    dargs[0] = &x; dargs[1] = &dy; dargs[2] = &dx; dargs[3] = &mean; dargs[4] = &tail; dargs[5] = &N
    dargs[6] = &C; dargs[7] = &S; dargs[8] = &flags
    dargs[9] = &bias; dargs[10] = &y; dargs[11] = &z; dargs[12] = &none; dargs[13] = &act; dargs[14] = _scalar(&sc, 2)
    return _counters_done(d, _launch(d, BN_K_BWD_DX, &q, stream, dargs))
