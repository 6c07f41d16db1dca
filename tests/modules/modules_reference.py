"""Float64 numpy batch normalisation written from the maths: the independent reference for tests/modules."""
import numpy as np


def stat_axes(x, per_activation):
    """Axes the statistics reduce over: the batch axis only (per-activation) or all but the channel axis."""
    return (0,) if per_activation else (0,) + tuple(range(2, x.ndim))


def train_forward(x, scale, bias, mean, var, eps, factor, per_activation=False):
    """-> y, batch mean, 1/sqrt(biased var + eps), new running mean, new running var (float64, keepdims shapes)."""
    x = np.asarray(x, dtype=np.float64)
    axes = stat_axes(x, per_activation)
    m = int(np.prod([x.shape[a] for a in axes]))
    mu = x.mean(axis=axes, keepdims=True)
    biased = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(biased + eps)
    s, b = _fit(scale, mu), _fit(bias, mu)
    y = s * (x - mu) * invstd + b
    new_mean = (1.0 - factor) * _fit(mean, mu) + factor * mu
    new_var = (1.0 - factor) * _fit(var, mu) + factor * biased * m / (m - 1)
    return y, mu, invstd, new_mean, new_var


def infer_forward(x, scale, bias, mean, var, eps):
    x = np.asarray(x, dtype=np.float64)
    like = np.empty((1, x.shape[1]) + (1,) * (x.ndim - 2))
    return _fit(scale, like) * (x - _fit(mean, like)) / np.sqrt(_fit(var, like) + eps) + _fit(bias, like)


def train_backward(x, grad, scale, per_activation=False, eps=1e-5):
    """Gradients of the training forward (batch statistics depend on x): -> dx, dscale, dbias."""
    x, g = np.asarray(x, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    axes = stat_axes(x, per_activation)
    m = int(np.prod([x.shape[a] for a in axes]))
    mu = x.mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mu) * invstd
    dbias = g.sum(axis=axes, keepdims=True)
    dscale = (g * xhat).sum(axis=axes, keepdims=True)
    dx = _fit(scale, mu) * invstd / m * (m * g - dbias - xhat * dscale)
    return dx, dscale, dbias


def eval_backward(x, grad, scale, mean, var, eps):
    """Gradients of the eval-mode function (running statistics are constants): -> dx, dscale, dbias."""
    x, g = np.asarray(x, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    axes = stat_axes(x, False)
    like = np.empty((1, x.shape[1]) + (1,) * (x.ndim - 2))
    invstd = 1.0 / np.sqrt(_fit(var, like) + eps)
    dx = g * _fit(scale, like) * invstd
    dscale = (g * (x - _fit(mean, like)) * invstd).sum(axis=axes, keepdims=True)
    dbias = g.sum(axis=axes, keepdims=True)
    return dx, dscale, dbias


def _fit(param, like):
    """A (1, C, 1, ...) parameter reshaped to broadcast against a keepdims statistic."""
    return np.asarray(param, dtype=np.float64).reshape(np.shape(like))
