"""PuzzleLib's functional batch normalisation (``PuzzleLib.Backend.Dnn``) over cybn.batchnorm.

Signatures are PuzzleLib's: parameters and statistics come in the layer's (1, C, 1, ...) shape and the
saved statistics and parameter gradients are returned in that same shape.
"""
from enum import Enum


class BatchNormMode(Enum):
    """perActivation: one statistic per (C, *rest) position; spatial: one per channel over (N, *spatial)."""
    perActivation = "per_activation"
    spatial = "spatial"


def _mode(mode):
    try:
        return BatchNormMode(mode).value if not isinstance(mode, BatchNormMode) else mode.value
    except ValueError:
        raise ValueError("mode must be BatchNormMode.spatial or BatchNormMode.perActivation, got %r" % (mode,)) \
            from None


def _flat(ary, what):
    if ary is None:
        raise ValueError("%s is None (the module's tensors are not initialised)" % what)
    return ary.ravel()


def batchNormNd(data, scale, bias, mean, var, epsilon, factor, test, mode=BatchNormMode.spatial, out=None):
    """Training (test=False): normalises with the batch statistics, updates mean/var in place with
    ``new = (1 - factor) * old + factor * batch`` (unbiased batch variance for var) and returns
    (result, savemean, saveinvvar). Inference (test=True): normalises with mean/var and returns result.
    out may be data itself (in-place)."""
    from cybn import batchnorm

    m, shape = _mode(mode), tuple(scale.shape)
    args = (_flat(scale, "scale"), _flat(bias, "bias"), _flat(mean, "mean"), _flat(var, "var"))
    if test:
        return batchnorm.forward_infer(data, *args, epsilon, out=out, mode=m)

    result, savemean, saveinvvar = batchnorm.forward_train(data, *args, epsilon, factor, out=out, mode=m)
    return result, savemean.reshape(*shape), saveinvvar.reshape(*shape)


def batchNormNdBackward(data, grad, scale, savemean, saveinvvar, epsilon, mode=BatchNormMode.spatial, accumulate=None):
    """Gradients of a training forward from its saved statistics: (ingrad, scalegrad, biasgrad).
    epsilon is accepted for PuzzleLib's signature; saveinvvar already includes it.
    accumulate=(scaleGradAcc, biasGradAcc, alpha, beta) (cybn's extension): in the same launch, also
    ``acc = alpha * (this batch's gradient) + beta * acc`` for both parameters (what PuzzleLib's
    accGradParams does with two extra launches); scalegrad/biasgrad are still this batch's gradients."""
    from cybn import batchnorm

    return _backward(batchnorm.backward, data, grad, scale, (savemean, "savemean"), (saveinvvar, "saveinvvar"),
                     mode, accumulate)


def batchNormNdBackwardFrozen(data, grad, scale, mean, var, epsilon, mode=BatchNormMode.spatial, accumulate=None):
    """Gradients of an inference forward (running statistics frozen), with accumulate as batchNormNdBackward's."""
    from cybn import batchnorm

    def frozen(*args, **kw):
        return batchnorm.backward_infer(*args, epsilon, **kw)
    return _backward(frozen, data, grad, scale, (mean, "mean"), (var, "var"), mode, accumulate)


def _backward(fn, data, grad, scale, mean, stat, mode, accumulate):
    from cybn.array import gpuarray

    shape = tuple(scale.shape)
    kw = {}
    if accumulate is not None:
        sacc, bacc, alpha, beta = accumulate
        batch = (gpuarray.empty(shape, dtype=sacc.dtype), gpuarray.empty(shape, dtype=bacc.dtype))
        kw = dict(scale_grad=sacc.ravel(), bias_grad=bacc.ravel(), scale_grad_alpha=alpha, scale_grad_beta=beta,
                  bias_grad_alpha=alpha, bias_grad_beta=beta, batch_grads=(batch[0].ravel(), batch[1].ravel()))
    ingrad, scalegrad, biasgrad = fn(data, grad, _flat(scale, "scale"), _flat(*mean), _flat(*stat), mode=_mode(mode),
                                     **kw)
    if accumulate is not None:
        return ingrad, batch[0], batch[1]
    return ingrad, scalegrad.reshape(*shape), biasgrad.reshape(*shape)
