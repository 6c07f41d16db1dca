"""Float64 numpy channels-last BatchNorm, written from the maths (independent of cybn's kernels).

x is (N, *spatial, C) (channels last, also (N, C)); one statistic per channel over every other axis:
mean and biased variance over those M values, y = scale (x - mean) / sqrt(var + eps) + bias, the running
update running = (1 - factor) running + factor batch (the unbiased variance M / (M - 1) by default), and
the backward dx = scale invstd (dy - mean(dy) - xhat mean(dy xhat)), dscale = sum(dy xhat), dbias = sum(dy).
Statistics are flat (C,) float64 arrays."""
import numpy as np


def _axes(x):
    return tuple(range(x.ndim - 1))


def _param(p, C, default):
    return np.full(C, default, np.float64) if p is None else np.asarray(p, np.float64).ravel()


def forward_train(x, scale, bias, running_mean, running_var, eps, factor, running_var_unbiased=True):
    """(y, new running_mean, new running_var, batch mean, batch invstd)."""
    x = np.asarray(x, np.float64)
    C = x.shape[-1]
    M = x.size // C
    mean = x.mean(axis=_axes(x))
    var = ((x - mean) ** 2).mean(axis=_axes(x))
    invstd = 1.0 / np.sqrt(var + eps)
    y = _param(scale, C, 1.0) * (x - mean) * invstd + _param(bias, C, 0.0)
    folded = var * M / (M - 1) if running_var_unbiased and M > 1 else var
    rm = (1 - factor) * np.asarray(running_mean, np.float64).ravel() + factor * mean
    rv = (1 - factor) * np.asarray(running_var, np.float64).ravel() + factor * folded
    return y, rm, rv, mean, invstd


def forward_infer(x, scale, bias, running_mean, running_var, eps):
    x = np.asarray(x, np.float64)
    C = x.shape[-1]
    rm = np.asarray(running_mean, np.float64).ravel()
    rv = np.asarray(running_var, np.float64).ravel()
    return _param(scale, C, 1.0) * (x - rm) / np.sqrt(rv + eps) + _param(bias, C, 0.0)


def backward(x, dy, scale, mean, invstd):
    """Gradients of the training forward from given batch statistics: (dx, dscale, dbias)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    C = x.shape[-1]
    M = x.size // C
    mean, invstd = np.asarray(mean, np.float64).ravel(), np.asarray(invstd, np.float64).ravel()
    xhat = (x - mean) * invstd
    dbias = dy.sum(axis=_axes(x))
    dscale = (dy * xhat).sum(axis=_axes(x))
    dx = _param(scale, C, 1.0) * invstd * (dy - dbias / M - xhat * dscale / M)
    return dx, dscale, dbias


def backward_infer(x, dy, scale, running_mean, running_var, eps):
    """Gradients of the inference forward (frozen statistics): (dx, dscale, dbias)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    C = x.shape[-1]
    invstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64).ravel() + eps)
    xhat = (x - np.asarray(running_mean, np.float64).ravel()) * invstd
    return _param(scale, C, 1.0) * invstd * dy, (dy * xhat).sum(axis=_axes(x)), dy.sum(axis=_axes(x))
