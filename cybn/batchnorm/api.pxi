# The functional API: forward_train, forward_infer, backward, backward_infer over the nogil core.
# Included by batchnorm.pyx.

def forward_train(x, scale, bias, running_mean, running_var, epsilon, factor, out=None, save_mean=None,
                  save_invstd=None, mode="spatial", stream=None, running_var_unbiased=True, *, layout="NCHW",
                  activation=None, activation_alpha=0.0, residual=None, comm=None):
    """Training forward. Updates running_mean/running_var in place; returns (y, save_mean, save_invstd).
    scale and bias may both be None (non-affine: 1 and 0). out may be x (in place).
    running_var_unbiased=False: the biased batch variance var_b (no M / (M - 1)) goes into running_var,
    as MXNet and Paddle do (a kernel flag, same launches).
    Data float32, float16, bfloat16 (statistics and parameters float32) or float64 (all float64).
    Fused epilogue: y = activation(bn(x) + residual), activation None or a name ("relu", "relu6",
    "clipped_relu", "leaky_relu", "elu", "sigmoid", "tanh", "swish"/"silu") with activation_alpha,
    residual None or an array of x's shape and dtype (out may be x or residual); same launches.
    comm: a cybn.distributed communicator: SyncBatchNorm, the statistics and the running update over the
    union of every process's x (which may have N == 0 on some; see sync.pxi); None: this process's x only."""
    if comm is not None:
        return _sync_forward_train(comm, x, scale, bias, running_mean, running_var, epsilon, factor, out,
                                   save_mean, save_invstd, mode, stream, running_var_unbiased, layout, activation,
                                   activation_alpha, residual)
    cdef bn_desc d
    x, layout = _resolve_layout(x, layout)
    cdef GPUArray gx = _array(x, "x")
    cdef long long K = _fill_desc(&d, gx, mode, "x", layout)
    _set_activation(&d, activation, activation_alpha)
    cdef GPUArray gz = _residual(_as_layout(residual, layout), gx, "residual")
    d.residual = gz is not None
    pdt = _pdtype(&d)
    if (d.N * d.S if d.mode == BN_SPATIAL else d.N) == 1:
        # Batch statistics of one value: variance 0, output 0, and the unbiased running variance would
        # divide by M - 1 = 0 (cuDNN refuses it too).
        raise ValueError(f"x of shape {gx.shape}: training needs more than one value per statistic "
                         f"({'N * spatial size' if d.mode == BN_SPATIAL else 'N'} is 1, so the batch variance is "
                         f"undefined); use a larger batch, or forward_infer with the running statistics")
    cdef GPUArray gs = _param(scale, "scale", K, True, pdt), gb = _param(bias, "bias", K, True, pdt)
    if (gs is None) != (gb is None):
        raise TypeError("scale and bias must both be given or both be None (non-affine)")
    cdef GPUArray rm = _param(running_mean, "running_mean", K, False, pdt)
    cdef GPUArray rv = _param(running_var, "running_var", K, False, pdt)
    cdef GPUArray sm = _param(save_mean, "save_mean", K, True, pdt), si = _param(save_invstd, "save_invstd", K, True, pdt)
    cdef GPUArray gy = _like(_as_layout(out, layout), "out", gx)
    _no_aliasing([("out", gy), ("save_mean", sm), ("save_invstd", si), ("running_mean", rm), ("running_var", rv)],
                 [("x", gx), ("scale", gs), ("bias", gb)], (("out", "x"),))
    if gz is not None:
        _no_aliasing([("out", gy), ("save_mean", sm), ("save_invstd", si), ("running_mean", rm),
                      ("running_var", rv)], [("residual", gz)], (("out", "residual"),))
    d.epsilon = _epsilon(epsilon, d.dtype == BN_FLOAT64)
    d.factor = _factor(factor)
    d.flags = (BN_DESC_AFFINE if gs is not None else 0) | (0 if running_var_unbiased else BN_DESC_BIASED_RUNNING_VAR)
    cdef cydriver.CUstream s = resolve_stream(stream)
    if gy is None:
        gy = _new(gx.shape, gx.dtype, stream)
    if sm is None:
        sm = _new((K,), pdt, stream)
    if si is None:
        si = _new((K,), pdt, stream)
    cdef cydriver.CUdeviceptr p[9]
    p[0] = gx.ptr_; p[1] = gy.ptr_; p[2] = _ptr(gs); p[3] = _ptr(gb); p[4] = rm.ptr_; p[5] = rv.ptr_
    p[6] = sm.ptr_; p[7] = si.ptr_; p[8] = _ptr(gz)
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_forward_train_ex(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gy, gs, gb, rm, rv, sm, si, gz))
    return gy, sm, si


def forward_infer(x, scale, bias, running_mean, running_var, epsilon, out=None, mode="spatial", stream=None, *,
                  layout="NCHW", activation=None, activation_alpha=0.0, residual=None):
    """Inference forward with the running statistics; returns y. out may be x (in place). Dtypes and the
    fused epilogue (activation, activation_alpha, residual) as in forward_train."""
    cdef bn_desc d
    x, layout = _resolve_layout(x, layout)
    cdef GPUArray gx = _array(x, "x")
    cdef long long K = _fill_desc(&d, gx, mode, "x", layout)
    _set_activation(&d, activation, activation_alpha)
    cdef GPUArray gz = _residual(_as_layout(residual, layout), gx, "residual")
    d.residual = gz is not None
    pdt = _pdtype(&d)
    cdef GPUArray gs = _param(scale, "scale", K, True, pdt), gb = _param(bias, "bias", K, True, pdt)
    if (gs is None) != (gb is None):
        raise TypeError("scale and bias must both be given or both be None (non-affine)")
    cdef GPUArray rm = _param(running_mean, "running_mean", K, False, pdt)
    cdef GPUArray rv = _param(running_var, "running_var", K, False, pdt)
    cdef GPUArray gy = _like(_as_layout(out, layout), "out", gx)
    _no_aliasing([("out", gy)], [("x", gx), ("scale", gs), ("bias", gb), ("running_mean", rm), ("running_var", rv)],
                 (("out", "x"),))
    if gz is not None:
        _no_aliasing([("out", gy)], [("residual", gz)], (("out", "residual"),))
    d.epsilon = _epsilon(epsilon, d.dtype == BN_FLOAT64)
    d.factor = 0
    d.flags = BN_DESC_AFFINE if gs is not None else 0
    cdef cydriver.CUstream s = resolve_stream(stream)
    if gy is None:
        gy = _new(gx.shape, gx.dtype, stream)
    cdef cydriver.CUdeviceptr p[7]
    p[0] = gx.ptr_; p[1] = gy.ptr_; p[2] = _ptr(gs); p[3] = _ptr(gb); p[4] = rm.ptr_; p[5] = rv.ptr_
    p[6] = _ptr(gz)
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_forward_infer_ex(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gy, gs, gb, rm, rv, gz))
    return gy


cdef double _coefficient(value, str what) except? -1:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {value!r}") from None
    if not abs(v) <= _FLT_MAX:  # the kernels take it as float32: no inf, NaN or overflow to inf
        raise ValueError(f"{what} must be a finite number (as a float32), got {value!r}")
    return v


cdef _backward(x, grad_y, scale, mean, stat, epsilon, out, scale_grad, bias_grad, mode, stream, int frozen,
               str mean_name, str stat_name, accumulate, batch_grads, epi, GPUArray sums=None):
    cdef bn_desc d
    layout, activation, activation_alpha, y, residual, bias, grad_residual = epi
    x, layout = _resolve_layout(x, layout)
    cdef GPUArray gx = _array(x, "x")
    cdef long long K = _fill_desc(&d, gx, mode, "x", layout)
    _set_activation(&d, activation, activation_alpha)
    pdt = _pdtype(&d)
    cdef GPUArray gdy = _like(_as_layout(grad_y, layout), "grad_y", gx)
    if gdy is None:
        raise TypeError("grad_y must be a GPUArray, got None")
    cdef GPUArray gs = _param(scale, "scale", K, True, pdt)
    cdef GPUArray m = _param(mean, mean_name, K, False, pdt), v = _param(stat, stat_name, K, False, pdt)
    cdef GPUArray gdx = _like(_as_layout(out, layout), "out", gx)
    cdef GPUArray sg = _param(scale_grad, "scale_grad", K, True, pdt), bg = _param(bias_grad, "bias_grad", K, True, pdt)
    cdef GPUArray bsg = None, bbg = None
    if batch_grads is not None:
        bsg = _param(batch_grads[0], "batch_scale_grad", K, False, pdt)
        bbg = _param(batch_grads[1], "batch_bias_grad", K, False, pdt)
    # The epilogue: residual False/None (none), True (the forward had one; dz returned) or the residual array
    # (also read where the pre-activation is recomputed); y the forward's output; bias for the recompute.
    cdef GPUArray gyv = _like(_as_layout(y, layout), "y", gx), gz = None
    cdef GPUArray gdz = _like(_as_layout(grad_residual, layout), "grad_residual", gx)
    if isinstance(residual, (bool, np.bool_)) or residual is None:
        d.residual = bool(residual)
    else:
        gz = _residual(_as_layout(residual, layout), gx, "residual")
        d.residual = 1
    if gdz is not None and not d.residual:
        raise ValueError("grad_residual given but the forward had no residual (pass residual=True or the array)")
    cdef GPUArray gbias = _param(bias, "bias", K, True, pdt)
    if gyv is not None and not _epi(&d):
        raise ValueError("y is only read through an activation or a residual: pass activation= / residual=")
    if d.act != BN_ACT_NONE and (gyv is None or d.act == BN_ACT_SWISH or d.act == BN_ACT_CLIPPED_RELU):
        # the derivative needs v = bn(x) (+ z): recomputed from x, the statistics, bias and the residual
        if gs is not None and gbias is None:
            raise ValueError(f"backward through {activation!r} recomputes the pre-activation from x "
                             f"({'no y given' if gyv is None else 'swish and clipped relu always do'}): pass bias= "
                             f"(the forward's bias)")
        if d.residual and gz is None:
            raise ValueError("the pre-activation is recomputed (swish, clipped relu, or no y): pass residual= as the forward's "
                             "residual array, not True")
    else:
        gz = None  # the derivative comes from y: z's values are not read
    if gs is None:
        gbias = None
    cdef double ab[4]
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
    if d.residual:
        _no_aliasing([("grad_residual", gdz), ("out", gdx), ("scale_grad", sg), ("bias_grad", bg)],
                     [("x", gx), ("grad_y", gdy), ("y", gyv), ("residual", gz), ("bias", gbias)], ())
    elif gyv is not None:
        _no_aliasing([("out", gdx), ("scale_grad", sg), ("bias_grad", bg)], [("y", gyv), ("bias", gbias)], ())
    d.epsilon = _epsilon(epsilon, d.dtype == BN_FLOAT64) if frozen else 1.0
    d.factor = 0
    d.flags = (BN_DESC_AFFINE if gs is not None else 0)
    if (ab[0], ab[1], ab[2], ab[3]) != (1, 0, 1, 0):
        d.flags |= BN_DESC_ACCUMULATE
        d.scale_grad_alpha, d.scale_grad_beta, d.bias_grad_alpha, d.bias_grad_beta = ab[0], ab[1], ab[2], ab[3]
    cdef cydriver.CUstream s = resolve_stream(stream)
    if gdx is None:
        gdx = _new(gx.shape, gx.dtype, stream)
    if sg is None:
        sg = _new((K,), pdt, stream)
    if bg is None:
        bg = _new((K,), pdt, stream)
    if d.residual and gdz is None:
        gdz = _new(gx.shape, gx.dtype, stream)
    cdef cydriver.CUdeviceptr p[14]
    p[0] = gx.ptr_; p[1] = gdy.ptr_; p[2] = gdx.ptr_; p[3] = _ptr(gs); p[4] = m.ptr_; p[5] = v.ptr_
    p[6] = sg.ptr_; p[7] = bg.ptr_; p[8] = _ptr(bsg); p[9] = _ptr(bbg)
    p[10] = _ptr(gbias); p[11] = _ptr(gyv); p[12] = _ptr(gz); p[13] = _ptr(gdz)
    if sums is not None:  # SyncBatchNorm (sync.pxi): only this process's raw sums, into the rows of `sums`
        d.flags = (d.flags & BN_DESC_AFFINE) | BN_DESC_SUMS
        p[6] = sums.ptr_ + K * sums.itemsize; p[7] = sums.ptr_; p[8] = sums.ptr_ + 2 * K * sums.itemsize; p[9] = 0
    cdef int st
    cdef DeviceBuffer ws = _finish_desc(&d, s)
    with nogil:
        st = bn_backward_ex(&d, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], frozen,
                            p[10], p[11], p[12], p[13], s)
    _release(ws)
    _status(st, "cuLaunchKernel")
    _used_on(s, (gx, gdy, gdx, gs, m, v, sg, bg, bsg, bbg, gbias, gyv, gz, gdz, sums))
    if d.residual:
        return gdx, gdz, sg, bg
    return gdx, sg, bg


def backward(x, grad_y, scale, save_mean, save_invstd, out=None, scale_grad=None, bias_grad=None,
             mode="spatial", stream=None, scale_grad_alpha=1.0, scale_grad_beta=0.0, bias_grad_alpha=1.0,
             bias_grad_beta=0.0, batch_grads=None, *, layout="NCHW", activation=None, activation_alpha=0.0,
             y=None, residual=False, bias=None, grad_residual=None, comm=None):
    """Backward of a training forward from its saved statistics: (grad_x, scale_grad, bias_grad).
    With xhat = (x - mean) * save_invstd: dbias = sum(dy), dscale = sum(dy * xhat),
    grad_x = scale * save_invstd * (dy - dbias / M - xhat * dscale / M). scale None: 1.
    mean is the exact batch mean of x: save_mean (its float32 rounding) plus mean(x - save_mean), which
    the same reduction computes, so the backward is as exact at large offsets as the forward.

    Parameter gradients as cuDNN's: scale_grad = scale_grad_alpha * dscale + scale_grad_beta * scale_grad
    (and bias_grad likewise), in the same launch; beta != 0 needs the array to accumulate into, beta == 0
    never reads it. batch_grads=(batch_scale_grad, batch_bias_grad): float32 arrays that also receive the
    plain dscale and dbias (what PuzzleLib's scalegrad/biasgrad hold), in the same launch.

    Through a fused epilogue (the forward's activation, activation_alpha, residual): the gradient of the
    pre-activation g = grad_y * act'(v) replaces grad_y; act' is read from y (the forward's output) for every
    activation but swish and clipped relu/relu6 (ambiguous at the ceiling once y is rounded); those, or any
    activation without y, recompute v from x, the statistics, bias
    (pass the forward's bias when affine) and the residual array. residual=True (or the array): returns
    (grad_x, grad_residual, scale_grad, bias_grad), grad_residual = g (into grad_residual= if given).
    comm: the forward's communicator (SyncBatchNorm): the sums over every process, dx from them locally."""
    if comm is not None:
        return _sync_backward(comm, x, grad_y, scale, save_mean, save_invstd, out, scale_grad, bias_grad, mode,
                              stream, (scale_grad_alpha, scale_grad_beta, bias_grad_alpha, bias_grad_beta),
                              batch_grads, (layout, activation, activation_alpha, y, residual, bias, grad_residual))
    return _backward(x, grad_y, scale, save_mean, save_invstd, None, out, scale_grad, bias_grad, mode, stream,
                     0, "save_mean", "save_invstd",
                     (scale_grad_alpha, scale_grad_beta, bias_grad_alpha, bias_grad_beta), batch_grads,
                     (layout, activation, activation_alpha, y, residual, bias, grad_residual))


def backward_infer(x, grad_y, scale, running_mean, running_var, epsilon, out=None, scale_grad=None,
                   bias_grad=None, mode="spatial", stream=None, scale_grad_alpha=1.0, scale_grad_beta=0.0,
                   bias_grad_alpha=1.0, bias_grad_beta=0.0, batch_grads=None, *, layout="NCHW", activation=None,
                   activation_alpha=0.0, y=None, residual=False, bias=None, grad_residual=None):
    """Backward of an inference forward (frozen statistics): with invstd = 1/sqrt(running_var + eps)
    and xhat = (x - running_mean) * invstd: grad_x = scale * invstd * dy, dscale = sum(dy * xhat),
    dbias = sum(dy); the parameter gradients with alpha/beta and batch_grads as in backward. One launch.
    The epilogue arguments and the residual's extra result as in backward."""
    return _backward(x, grad_y, scale, running_mean, running_var, epsilon, out, scale_grad, bias_grad, mode,
                     stream, 1, "running_mean", "running_var",
                     (scale_grad_alpha, scale_grad_beta, bias_grad_alpha, bias_grad_beta), batch_grads,
                     (layout, activation, activation_alpha, y, residual, bias, grad_residual))
