"""Float64 numpy BatchNorm written from the maths (the issue's spec), independent of cybn's kernels: the
reference the tests and the benchmark scripts compare with.

Spatial mode: x (N, C, *spatial), one statistic per channel over axes (0, 2, 3, ...).
Per-activation mode: x (N, C, *rest), one statistic per (c, *rest) position over axis 0."""
import numpy as np


def layout(shape, mode):
    """(reduction axes, broadcast shape of a statistic, number of statistics K, values per statistic M)."""
    if mode == "spatial":
        axes = (0,) + tuple(range(2, len(shape)))
        pshape = (1, shape[1]) + (1,) * (len(shape) - 2)
    else:
        axes = (0,)
        pshape = (1,) + tuple(shape[1:])
    K = int(np.prod(pshape))
    M = int(np.prod(shape)) // K
    return axes, pshape, K, M


def forward_train(x, scale, bias, running_mean, running_var, eps, factor, mode="spatial"):
    """Returns (y, new_running_mean, new_running_var, mean, invstd), all float64 (statistics flat (K,))."""
    x = np.asarray(x, np.float64)
    axes, pshape, K, M = layout(x.shape, mode)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # biased
    invstd = 1.0 / np.sqrt(var + eps)
    g = np.ones(pshape) if scale is None else np.asarray(scale, np.float64).reshape(pshape)
    b = np.zeros(pshape) if bias is None else np.asarray(bias, np.float64).reshape(pshape)
    y = g * (x - mean) * invstd + b
    unbiased = var * M / (M - 1) if M > 1 else var  # M == 1: the biased variance (0), never NaN/inf
    rm = (1 - factor) * np.asarray(running_mean, np.float64).ravel() + factor * mean.ravel()
    rv = (1 - factor) * np.asarray(running_var, np.float64).ravel() + factor * unbiased.ravel()
    return y, rm, rv, mean.ravel(), invstd.ravel()


def forward_infer(x, scale, bias, running_mean, running_var, eps, mode="spatial"):
    x = np.asarray(x, np.float64)
    _, pshape, _, _ = layout(x.shape, mode)
    rm = np.asarray(running_mean, np.float64).reshape(pshape)
    rv = np.asarray(running_var, np.float64).reshape(pshape)
    g = np.ones(pshape) if scale is None else np.asarray(scale, np.float64).reshape(pshape)
    b = np.zeros(pshape) if bias is None else np.asarray(bias, np.float64).reshape(pshape)
    return g * (x - rm) / np.sqrt(rv + eps) + b


def backward(x, dy, scale, mean, invstd, mode="spatial"):
    """Gradients of the training forward from given batch statistics: (dx, dscale, dbias)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    axes, pshape, K, M = layout(x.shape, mode)
    mean = np.asarray(mean, np.float64).reshape(pshape)
    invstd = np.asarray(invstd, np.float64).reshape(pshape)
    g = np.ones(pshape) if scale is None else np.asarray(scale, np.float64).reshape(pshape)
    xhat = (x - mean) * invstd
    dbias = dy.sum(axis=axes, keepdims=True)
    dscale = (dy * xhat).sum(axis=axes, keepdims=True)
    dx = g * invstd * (dy - dbias / M - xhat * dscale / M)
    return dx, dscale.ravel(), dbias.ravel()


def backward_infer(x, dy, scale, running_mean, running_var, eps, mode="spatial"):
    """Gradients of the inference forward (statistics frozen): (dx, dscale, dbias)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    axes, pshape, _, _ = layout(x.shape, mode)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64).reshape(pshape) + eps)
    xhat = (x - np.asarray(running_mean, np.float64).reshape(pshape)) * invstd
    g = np.ones(pshape) if scale is None else np.asarray(scale, np.float64).reshape(pshape)
    return g * invstd * dy, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


def train_then_infer(x, scale, bias, running_mean, running_var, dy, epsilon, factor, mode):
    """Training forward, its backward, then inference forward and its (frozen-statistics) backward with the
    updated running statistics, as the embedding faces' tests run them: a dict of flat float64 arrays.
    scale/bias None: non-affine (1 and 0)."""
    y, rm, rv, mean, invstd = forward_train(x, scale, bias, running_mean, running_var, epsilon, factor, mode)
    dx, sg, bg = backward(x, dy, scale, mean, invstd, mode)
    dx_i, sg_i, bg_i = backward_infer(x, dy, scale, rm, rv, epsilon, mode)
    out = {"y": y, "save_mean": mean, "save_invstd": invstd, "running_mean": rm, "running_var": rv,
           "dx": dx, "scale_grad": sg, "bias_grad": bg,
           "y_infer": forward_infer(x, scale, bias, rm, rv, epsilon, mode),
           "dx_infer": dx_i, "scale_grad_infer": sg_i, "bias_grad_infer": bg_i}
    return {k: np.asarray(v).ravel() for k, v in out.items()}


def tolerances(dtype):
    """(rtol, atol) for outputs of dtype (fp16 data: about 3 decimal digits)."""
    return (2e-4, 2e-4) if np.dtype(dtype) == np.float32 else (1e-2, 1e-2)
