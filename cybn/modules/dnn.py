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


def batchNormNdBackward(data, grad, scale, savemean, saveinvvar, epsilon, mode=BatchNormMode.spatial):
    """Gradients of a training forward from its saved statistics: (ingrad, scalegrad, biasgrad).
    epsilon is accepted for PuzzleLib's signature; saveinvvar already includes it."""
    from cybn import batchnorm

    shape = tuple(scale.shape)
    ingrad, scalegrad, biasgrad = batchnorm.backward(
        data, grad, _flat(scale, "scale"), _flat(savemean, "savemean"), _flat(saveinvvar, "saveinvvar"),
        mode=_mode(mode))
    return ingrad, scalegrad.reshape(*shape), biasgrad.reshape(*shape)
