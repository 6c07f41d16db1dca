# SyncBatchNorm's split of the training forward and backward (comm= on forward_train and backward):
# this process's partials out of one pass, the combination over the communicator (cybn.distributed, in
# float64, rank-ordered), then the element-wise pass with the combined statistics. Included by batchnorm.pyx.
#
# Forward: BN_PARTIALS launch (per statistic: mean hi, lo, biased variance; count M = the local values),
# sync_moments, then the normalize kernel's shifted path from a tail (hi, lo, scale * invstd, 0) built
# here from the global statistics; save_mean/save_invstd and the running statistics (global count: unbiased
# with M - 1, or biased) are written from float64 rounded once. Backward: BN_SUMS launch (sum dy,
# sum dy * (x - hi), sum (x - hi)), sync_sums with the counts, then the dx kernel from a tail
# (a, dbias / M, k, lo). A process with no samples launches nothing but joins both collectives.
# Both layouts: the NHWC kernels take the same flags and tails; x with channels-last strides is NHWC in
# place, as in the local calls. The collectives' header names the mode, not the layout (the statistics do
# not depend on where the channel axis lies).

cdef int bn_normalize_given_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr tail,
                               cydriver.CUdeviceptr z, cydriver.CUstream stream) noexcept nogil:
    """y = act(((x - hi) - lo) * a + bias [+ z]) with tail[K][BN_FWD_TAIL] = (hi, lo, a, 0) per statistic."""
    cdef int st = _validate(d, BN_K_NORMALIZE)
    if st != BN_OK:
        return st
    if x == 0 or y == 0 or tail == 0:
        return _fail(BN_EINVAL, "normalize_given: null x, y or statistics pointer")
    if (d.flags & BN_DESC_AFFINE) and bias == 0:
        return _fail(BN_EINVAL, "normalize_given: affine descriptor with a null bias")
    st = _check_epilogue(d, z, "normalize_given")
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
    cdef int flags = (BN_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(p.vec) | BN_SHIFTED
    cdef int act = d.act
    cdef void* args[15]
    args[0] = &x; args[1] = &y; args[2] = &tail; args[3] = &tail; args[4] = &scale
    args[5] = &bias; args[6] = &tail; args[7] = &N; args[8] = &C; args[9] = &S; args[10] = _scalar(&sc, 0)
    args[11] = &flags; args[12] = &z; args[13] = &act; args[14] = _scalar(&sc, 2)
    return _launch(d, BN_K_NORMALIZE, &p, stream, args)


cdef int bn_backward_dx_given_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                                 cydriver.CUdeviceptr dx, cydriver.CUdeviceptr mean, cydriver.CUdeviceptr tail,
                                 cydriver.CUdeviceptr bias, cydriver.CUdeviceptr y, cydriver.CUdeviceptr z,
                                 cydriver.CUstream stream) noexcept nogil:
    """dx = a * (g - dbias / M - ((x - hi) - lo) * k), tail[K][BN_BWD_TAIL] = (a, dbias / M, k, lo), hi = mean."""
    cdef int st = _validate(d, BN_K_BWD_DX)
    if st != BN_OK:
        return st
    if x == 0 or dy == 0 or dx == 0 or mean == 0 or tail == 0:
        return _fail(BN_EINVAL, "backward_dx_given: null x, dy, dx, mean or constants pointer")
    cdef bn_plan q
    bn_make_plan(d, BN_K_BWD_DX, _vec_with(_vec_with(_vec_with(_vec_ok(d, x, dy, dx), x, y), x, z), x, 0), &q)
    st = _check_limits(&q)
    if st != BN_OK:
        return st
    cdef long long N = d.N, C = _rows_k(d), S = _rows_s(d)  # per-activation: (N, F) rows
    cdef _scalars sc
    _set_scalars(&sc, d)
    cdef int flags = (BN_AFFINE if d.flags & BN_DESC_AFFINE else 0) | _vec_flags(q.vec)
    cdef int act = d.act
    cdef cydriver.CUdeviceptr none = 0
    cdef void* dargs[15]
    dargs[0] = &x; dargs[1] = &dy; dargs[2] = &dx; dargs[3] = &mean; dargs[4] = &tail; dargs[5] = &N
    dargs[6] = &C; dargs[7] = &S; dargs[8] = &flags
    dargs[9] = &bias; dargs[10] = &y; dargs[11] = &z; dargs[12] = &none; dargs[13] = &act; dargs[14] = _scalar(&sc, 2)
    return _launch(d, BN_K_BWD_DX, &q, stream, dargs)


cdef int bn_sync_forward_overlap(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                                 cydriver.CUdeviceptr z, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                                 cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                                 cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                                 cydriver.CUdeviceptr scratch) noexcept nogil:
    """The aliasing check of a combined training forward (the C API's split): y may be exactly x or z."""
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d), pb = kb if d.flags & BN_DESC_AFFINE else 0
    cdef _span outs[6]
    cdef _span ins[3]
    _set_span(&outs[0], "y", y, xb); _set_span(&outs[1], "running_mean", running_mean, kb)
    _set_span(&outs[2], "running_var", running_var, kb); _set_span(&outs[3], "save_mean", save_mean, kb)
    _set_span(&outs[4], "save_invstd", save_invstd, kb); _set_span(&outs[5], "scratch", scratch, BN_FWD_TAIL * kb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "scale", scale, pb); _set_span(&ins[2], "bias", bias, pb)
    cdef int st = _no_overlap(outs, 6, ins, 3, d, 1)
    if st == BN_OK and z != 0:
        _set_span(&ins[0], "residual", z, xb)
        st = _no_overlap(outs, 6, ins, 1, d, 1)
    return st


cdef int bn_sync_backward_overlap(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                                  cydriver.CUdeviceptr dx, cydriver.CUdeviceptr y, cydriver.CUdeviceptr z,
                                  cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                                  cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                                  cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                                  cydriver.CUdeviceptr scratch) noexcept nogil:
    """The aliasing check of a combined backward (the C API's split): dx may be exactly x or dy."""
    cdef unsigned long long xb = _data_bytes(d), kb = _stat_bytes(d), pb = kb if d.flags & BN_DESC_AFFINE else 0
    cdef _span outs[4]
    cdef _span ins[8]
    _set_span(&outs[0], "dx", dx, xb); _set_span(&outs[1], "scale_grad", scale_grad, kb)
    _set_span(&outs[2], "bias_grad", bias_grad, kb); _set_span(&outs[3], "scratch", scratch, BN_BWD_TAIL * kb)
    _set_span(&ins[0], "x", x, xb); _set_span(&ins[1], "dy", dy, xb); _set_span(&ins[2], "scale", scale, pb)
    _set_span(&ins[3], "save_mean", save_mean, kb); _set_span(&ins[4], "save_invstd", save_invstd, kb)
    _set_span(&ins[5], "y", y, xb); _set_span(&ins[6], "residual", z, xb); _set_span(&ins[7], "bias", bias, pb)
    return _no_overlap(outs, 4, ins, 8, d, 2)


def _local_shape(x, mode, layout="NCHW"):
    """(values per statistic M, statistics K) of x, (N, C, ...) or with layout NHWC (N, ..., C), which may
    have N == 0 (a process with no samples)."""
    shape = tuple(x.shape)
    _layout_code(layout, _mode_code(mode))
    if len(shape) < 2:
        raise ValueError(f"x must be (N, C, ...) or (N, ..., C) with at least 2 dimensions, got shape {shape}")
    if any(n < 1 for n in shape[1:]):
        raise ValueError(f"x has an empty dimension: shape {shape}")
    last = len(shape) - 1  # (the module is compiled without wraparound: no negative indices)
    C = shape[last] if layout == "NHWC" else shape[1]
    rest = int(np.prod(shape[1:last] if layout == "NHWC" else shape[2:], dtype=np.int64))
    if _mode_code(mode) == BN_SPATIAL:
        return shape[0] * rest, C
    return shape[0], C * rest


def _stat_dtype(x):
    return np.float64 if np.dtype(x.dtype) == np.float64 else np.float32



def forward_train_partials(x, mode="spatial", stream=None, *, layout="NCHW"):
    """This process's per-statistic partials of a training forward, from one pass over x (SyncBatchNorm's
    first half): returns (M, parts) with M the values per statistic and parts a (3, K) array of the
    statistics type (float32; float64 for float64 data): mean hi, mean lo (mean = hi + lo, exact beyond
    one float) and the biased variance M2 / M. Nothing else is written. N may be 0: (0, None), no launch.
    layout: "NCHW" or "NHWC" (channel axis last; channels-last strides are taken as NHWC in place)."""
    x, layout = _resolve_layout(x, layout)
    cdef GPUArray gx = _array(x, "x")
    M, K = _local_shape(gx, mode, layout)
    if M == 0:
        _dtype_code(gx.dtype, "x.dtype")
        return 0, None
    cdef bn_desc d
    _fill_desc(&d, gx, mode, "x", layout)
    d.epsilon = 1.0
    d.factor = 0
    d.flags = BN_DESC_PARTIALS
    cdef cydriver.CUstream s = resolve_stream(stream)
    cdef GPUArray parts = _new((4, K), _pdtype(&d), stream)  # row 3: the running_var slot, untouched
    cdef size_t row = K * parts.itemsize
    cdef cydriver.CUdeviceptr p = parts.ptr_
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_forward_train_ex(&d, gx.ptr_, gx.ptr_, 0, 0, p + 2 * row, p + 3 * row, p, p + row, 0, s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, parts))
    return M, parts[:3]


cdef int _empty_desc(bn_desc* d, GPUArray x, mode, activation, activation_alpha) except -1:
    """A process with no samples checks what it can of the call (dtype, mode, the activation and its alpha)
    as the others do, though it launches nothing: the same refusals on every rank."""
    memset(d, 0, sizeof(bn_desc))
    d.mode = _mode_code(mode)
    d.dtype = _dtype_code(x.dtype, "x.dtype")
    _set_activation(d, activation, activation_alpha)
    return 0


def _header(K, gx, mode, op, activation, activation_alpha, residual, affine):
    from cybn.distributed.stats import call_header
    act = None if activation is None else ("clipped_relu" if str(activation).lower() == "relu6" else activation)
    alpha = 6.0 if activation is not None and str(activation).lower() == "relu6" else activation_alpha
    return call_header(K, gx.dtype, str(mode.value if isinstance(mode, enum.Enum) else mode), op, activation=act,
                       activation_alpha=alpha if act is not None else 0.0, residual=residual, affine=affine)


def _sync_forward_train(comm, x, scale, bias, running_mean, running_var, epsilon, factor, out, save_mean,
                        save_invstd, mode, stream, running_var_unbiased, layout, activation, activation_alpha,
                        residual):
    from cybn.distributed.stats import exchange_call, sync_moments
    cdef bn_desc d
    cdef GPUArray gx, gs, gb, rm, rv, sm, si, gy, gz
    try:  # every check of the call, on every rank (also one with no samples), before the header exchange
        x, layout = _resolve_layout(x, layout)
        gx = _array(x, "x")
        M, K = _local_shape(gx, mode, layout)
        _dtype_code(gx.dtype, "x.dtype")
        pdt = _stat_dtype(gx)
        gs, gb = _param(scale, "scale", K, True, pdt), _param(bias, "bias", K, True, pdt)
        if (gs is None) != (gb is None):
            raise TypeError("scale and bias must both be given or both be None (non-affine)")
        rm = _param(running_mean, "running_mean", K, False, pdt)
        rv = _param(running_var, "running_var", K, False, pdt)
        sm, si = _param(save_mean, "save_mean", K, True, pdt), _param(save_invstd, "save_invstd", K, True, pdt)
        gy = _like(_as_layout(out, layout), "out", gx)
        gz = _residual(_as_layout(residual, layout), gx, "residual")
        _no_aliasing([("out", gy), ("save_mean", sm), ("save_invstd", si), ("running_mean", rm),
                      ("running_var", rv)], [("x", gx), ("scale", gs), ("bias", gb)], (("out", "x"),))
        if gz is not None:
            _no_aliasing([("out", gy), ("save_mean", sm), ("save_invstd", si), ("running_mean", rm),
                          ("running_var", rv)], [("residual", gz)], (("out", "residual"),))
        eps = _epsilon(epsilon, pdt == np.float64)
        f = _factor(factor)
        if M:  # the normalisation's descriptor, checked before anything is launched or exchanged
            _fill_desc(&d, gx, mode, "x", layout)
            _set_activation(&d, activation, activation_alpha)
            d.residual = gz is not None
            d.epsilon = eps
            d.flags = BN_DESC_AFFINE if gs is not None else 0
            st = bn_check_desc(&d)
            if st != BN_OK:
                raise ValueError(bn_last_error().decode())
        else:
            _empty_desc(&d, gx, mode, activation, activation_alpha)
        header = _header(K, gx, mode, "forward", activation, activation_alpha, gz is not None, gs is not None)
    except (TypeError, ValueError, NotImplementedError) as exc:
        exchange_call(comm, None, exc)
    exchange_call(comm, header)
    n, parts = forward_train_partials(gx, mode, stream, layout=layout)
    if n:
        h = parts.get(stream=stream).astype(np.float64)
        mean_local, var_local = h[0] + h[1], h[2]
    else:
        mean_local = var_local = np.zeros(K)
    count, mean, var = sync_moments(comm, float(n), mean_local, var_local, dtype=gx.dtype, layout=str(mode),
                                    op="forward", stream=stream, header=False)
    total = int(count[0])
    if total <= 1:
        raise ValueError(f"SyncBatchNorm: {total} value(s) per statistic over all {comm.size} processes: training "
                         f"needs more than one (the batch variance is undefined); nothing was changed")
    invstd = 1.0 / np.sqrt(var + eps)
    hi = mean.astype(pdt)
    sc = gs.get(stream=stream).astype(np.float64) if gs is not None else 1.0
    run_var = var * (total / (total - 1.0)) if running_var_unbiased else var
    rmh, rvh = rm.get(stream=stream).astype(np.float64), rv.get(stream=stream).astype(np.float64)
    if sm is None:
        sm = _new((K,), pdt, stream)
    if si is None:
        si = _new((K,), pdt, stream)
    sm.set(hi.reshape(sm.shape), stream=stream)
    si.set(invstd.astype(pdt).reshape(si.shape), stream=stream)
    rm.set(((1.0 - f) * rmh + f * mean).astype(pdt).reshape(rm.shape), stream=stream)
    rv.set(((1.0 - f) * rvh + f * run_var).astype(pdt).reshape(rv.shape), stream=stream)
    if gy is None:
        gy = _new(gx.shape, gx.dtype, stream)
    if not M:
        return gy, sm, si
    tail = np.zeros((K, BN_FWD_TAIL), pdt)
    tail[:, 0] = hi
    tail[:, 1] = (mean - hi.astype(np.float64)).astype(pdt)
    tail[:, 2] = (sc * invstd).astype(pdt)
    from cybn.array.gpuarray import to_gpu
    cdef GPUArray gt = to_gpu(tail, stream=stream)
    cdef cydriver.CUstream s = resolve_stream(stream)
    cdef cydriver.CUdeviceptr p[5]
    p[0] = gx.ptr_; p[1] = gy.ptr_; p[2] = _ptr(gs); p[3] = _ptr(gb); p[4] = _ptr(gz)
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_normalize_given_ex(&d, p[0], p[1], p[2], p[3], gt.ptr_, p[4], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gy, gs, gb, gz, gt))
    return gy, sm, si


def _sync_backward(comm, x, grad_y, scale, save_mean, save_invstd, out, scale_grad, bias_grad, mode, stream,
                   accumulate, batch_grads, epi):
    from cybn.distributed.stats import exchange_call, sync_sums
    cdef bn_desc d
    cdef GPUArray gx, gs, m, v, sg, bg, gdx, gdy, sums
    layout, activation, activation_alpha, y, residual, bias, grad_residual = epi
    try:  # every check of the call, on every rank (also one with no samples), before the header exchange
        x, layout = _resolve_layout(x, layout)
        epi = (layout,) + tuple(epi[1:])
        gx = _array(x, "x")
        M, K = _local_shape(gx, mode, layout)
        _dtype_code(gx.dtype, "x.dtype")
        pdt = _stat_dtype(gx)
        gs = _param(scale, "scale", K, True, pdt)
        m, v = _param(save_mean, "save_mean", K, False, pdt), _param(save_invstd, "save_invstd", K, False, pdt)
        sg, bg = _param(scale_grad, "scale_grad", K, True, pdt), _param(bias_grad, "bias_grad", K, True, pdt)
        gdx = _like(_as_layout(out, layout), "out", gx)
        gdy = _like(_as_layout(grad_y, layout), "grad_y", gx)
        if gdy is None:
            raise TypeError("grad_y must be a GPUArray, got None")
        ab = [_coefficient(a, nm) for a, nm in zip(accumulate, ("scale_grad_alpha", "scale_grad_beta",
                                                               "bias_grad_alpha", "bias_grad_beta"))]
        if ab[1] != 0 and sg is None:
            raise ValueError("scale_grad_beta != 0 accumulates into scale_grad: pass the scale_grad array")
        if ab[3] != 0 and bg is None:
            raise ValueError("bias_grad_beta != 0 accumulates into bias_grad: pass the bias_grad array")
        has_residual = residual is not None and residual is not False
        if M:  # the local backward's own checks (nothing launched)
            _backward(gx, gdy, gs, m, v, None, gdx, sg, bg, mode, stream, 0, "save_mean", "save_invstd",
                      tuple(accumulate), batch_grads, epi, None, False, True)  # sums, fix_gamma, check_only
        else:
            _empty_desc(&d, gx, mode, activation, activation_alpha)
            if has_residual and not isinstance(residual, (bool, np.bool_)):
                _residual(_as_layout(residual, layout), gx, "residual")
            _like(_as_layout(grad_residual, layout), "grad_residual", gx)
        header = _header(K, gx, mode, "backward", activation, activation_alpha, has_residual, gs is not None)
    except (TypeError, ValueError, NotImplementedError) as exc:
        exchange_call(comm, None, exc)
    exchange_call(comm, header)
    sums = _new((3, K), pdt, stream) if M else None
    gdz = None
    if M:  # the local sums (checked above; writes only `sums`, and dz with a residual)
        r = _backward(gx, gdy, gs, m, v, None, gdx, sg, bg, mode, stream, 0, "save_mean", "save_invstd",
                      tuple(accumulate), batch_grads, epi, sums)
        gdz = r[1] if len(r) == 4 else None
    local = np.zeros((4, K))
    if M:
        local[:3] = sums.get(stream=stream)
    local[3] = M
    tot = sync_sums(comm, local, dtype=gx.dtype, layout=str(mode), op="backward", stream=stream, header=False)
    total = tot[3, 0]
    invstd = v.get(stream=stream).astype(np.float64).ravel()
    lo = tot[2] / total
    dbias = tot[0]
    dscale = (tot[1] - lo * tot[0]) * invstd
    if sg is None:
        sg = _new((K,), pdt, stream)
    if bg is None:
        bg = _new((K,), pdt, stream)
    old_s = sg.get(stream=stream).astype(np.float64).ravel() if ab[1] != 0 else 0.0
    old_b = bg.get(stream=stream).astype(np.float64).ravel() if ab[3] != 0 else 0.0
    sg.set((ab[0] * dscale + ab[1] * old_s).astype(pdt).reshape(sg.shape), stream=stream)
    bg.set((ab[2] * dbias + ab[3] * old_b).astype(pdt).reshape(bg.shape), stream=stream)
    if batch_grads is not None:
        batch_grads[0].set(dscale.astype(pdt).reshape(batch_grads[0].shape), stream=stream)
        batch_grads[1].set(dbias.astype(pdt).reshape(batch_grads[1].shape), stream=stream)
    if gdx is None:
        gdx = _new(gx.shape, gx.dtype, stream)
    residual_out = has_residual
    if M:
        sc = gs.get(stream=stream).astype(np.float64).ravel() if gs is not None else 1.0
        tail = np.zeros((K, BN_BWD_TAIL), pdt)
        tail[:, 0] = (sc * invstd).astype(pdt)
        tail[:, 1] = (dbias / total).astype(pdt)
        tail[:, 2] = (invstd * (dscale / total)).astype(pdt)
        tail[:, 3] = lo.astype(pdt)
        _sync_dx(gx, gdy, gdx, m, tail, mode, stream, epi)
    elif residual_out and gdz is None:
        gdz = _like(_as_layout(grad_residual, layout), "grad_residual", gx) or _new(gx.shape, gx.dtype, stream)
    if residual_out:
        return gdx, gdz, sg, bg
    return gdx, sg, bg


cdef _sync_dx(GPUArray gx, GPUArray gdy, GPUArray gdx, GPUArray mean, tail, mode, stream, epi):
    layout, activation, activation_alpha, y, residual, bias, grad_residual = epi
    cdef bn_desc d
    _fill_desc(&d, gx, mode, "x", layout)
    _set_activation(&d, activation, activation_alpha)
    pdt = _pdtype(&d)
    cdef GPUArray gyv = _like(_as_layout(y, layout), "y", gx), gz = None
    cdef GPUArray gbias = _param(bias, "bias", mean.size, True, pdt)
    d.residual = not (isinstance(residual, (bool, np.bool_)) or residual is None) or bool(residual)
    if d.residual and not isinstance(residual, (bool, np.bool_)):
        gz = _residual(_as_layout(residual, layout), gx, "residual")
    if not (d.act != BN_ACT_NONE and (gyv is None or d.act == BN_ACT_SWISH or d.act == BN_ACT_CLIPPED_RELU)):
        gz = None  # as _backward: only a recomputed pre-activation (no y; swish, clipped relu) reads z
    d.epsilon = 1.0
    d.flags = BN_DESC_AFFINE if gbias is not None else 0
    from cybn.array.gpuarray import to_gpu
    cdef GPUArray gt = to_gpu(tail, stream=stream)
    cdef cydriver.CUstream s = resolve_stream(stream)
    cdef cydriver.CUdeviceptr p[4]
    p[0] = _ptr(gbias); p[1] = _ptr(gyv); p[2] = _ptr(gz); p[3] = gt.ptr_
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_backward_dx_given_ex(&d, gx.ptr_, gdy.ptr_, gdx.ptr_, mean.ptr_, p[3], p[0], p[1], p[2], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gdy, gdx, mean, gbias, gyv, gz, gt))
