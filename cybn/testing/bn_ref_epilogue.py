"""Float64 numpy references for the fused epilogue y = act(bn(x) [+ z]) and its backward, written from the
maths (DESIGN11: activation ids, kinks as torch), independent of cybn's kernels; and the per-dtype
tolerances the engine tests use.

The backward's reference differentiates through the activation at v = bn(x) + z computed here in
float64: g = dy * act'(v) (also dz when there is a residual), then the BatchNorm gradients of g."""
import numpy as np

from cybn.testing import reference

ACTIVATIONS = ("relu", "relu6", "clipped_relu", "leaky_relu", "elu", "sigmoid", "tanh", "swish", "silu")


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow for large |v|


def act_forward(name, v, alpha):
    v = np.asarray(v, np.float64)
    if name is None:
        return v
    if name == "relu":
        return np.maximum(v, 0.0)
    if name in ("relu6", "clipped_relu"):
        a = 6.0 if name == "relu6" else alpha
        return np.minimum(np.maximum(v, 0.0), a)
    if name == "leaky_relu":
        return np.where(v > 0, v, alpha * v)
    if name == "elu":
        return np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0)))
    if name == "sigmoid":
        return _sigmoid(v)
    if name == "tanh":
        return np.tanh(v)
    if name in ("swish", "silu"):
        return v * _sigmoid(v)
    raise ValueError(name)


def act_grad(name, v, alpha):
    """act'(v), at the kinks as torch: relu'(0) = 0, clipped 1 only inside (0, alpha), leaky'(0) = elu'(0) = alpha."""
    v = np.asarray(v, np.float64)
    if name is None:
        return np.ones_like(v)
    if name == "relu":
        return (v > 0).astype(np.float64)
    if name in ("relu6", "clipped_relu"):
        a = 6.0 if name == "relu6" else alpha
        return ((v > 0) & (v < a)).astype(np.float64)
    if name == "leaky_relu":
        return np.where(v > 0, 1.0, alpha)
    if name == "elu":
        return np.where(v > 0, 1.0, alpha * np.exp(np.minimum(v, 0.0)))
    if name == "sigmoid":
        s = _sigmoid(v)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(v) ** 2
    if name in ("swish", "silu"):
        s = _sigmoid(v)
        return s * (1 + v * (1 - s))
    raise ValueError(name)


def _z(z):
    return 0.0 if z is None else np.asarray(z, np.float64)


def forward_train(x, scale, bias, running_mean, running_var, eps, factor, act=None, alpha=0.0, z=None,
                  mode="spatial"):
    """(y, running_mean, running_var, mean, invstd, v) in float64; v the pre-activation bn(x) + z."""
    bn, rm, rv, mean, invstd = reference.forward_train(x, scale, bias, running_mean, running_var, eps, factor, mode)
    v = bn + _z(z)
    return act_forward(act, v, alpha), rm, rv, mean, invstd, v


def forward_infer(x, scale, bias, running_mean, running_var, eps, act=None, alpha=0.0, z=None, mode="spatial"):
    v = reference.forward_infer(x, scale, bias, running_mean, running_var, eps, mode) + _z(z)
    return act_forward(act, v, alpha)


def backward(x, dy, scale, mean, invstd, v, act=None, alpha=0.0, mode="spatial"):
    """(dx, dz, dscale, dbias) through the activation at v; dz = dy * act'(v)."""
    g = np.asarray(dy, np.float64) * act_grad(act, v, alpha)
    dx, ds, db = reference.backward(x, g, scale, mean, invstd, mode)
    return dx, g, ds, db


def backward_infer(x, dy, scale, running_mean, running_var, eps, v, act=None, alpha=0.0, mode="spatial"):
    g = np.asarray(dy, np.float64) * act_grad(act, v, alpha)
    dx, ds, db = reference.backward_infer(x, g, scale, running_mean, running_var, eps, mode)
    return dx, g, ds, db


# Tolerances (rtol, atol) per data dtype, for unit-scale data and O(1) outputs:
# - float64: the kernels compute in double with compensated sums; the reference is float64 too, so the
#   difference is a few ulps of the O(1) values and of sums over <= 10^4 terms: 1e-10 leaves a wide margin
#   while still catching any float32 rounding on the way (2^-24 ~ 6e-8).
# - float32: statistics in float32 (compensated), one rounding of each output: 2e-4 as the existing tests.
# - float16: the output is rounded once to 11 bits (rel. 4.9e-4) after float32 maths: 1e-2 as today.
# - bfloat16: 8 bits of mantissa, one rounding: rel. 2^-8 = 3.9e-3 of the output, and the inputs themselves
#   are bfloat16 (the reference gets the same rounded inputs): 2e-2 covers the output rounding plus the
#   derivative read from a bfloat16 y (sigmoid/tanh: y(1 - y) from y rounded at 3.9e-3).
TOLERANCES = {"float64": (1e-10, 1e-10), "float32": (2e-4, 2e-4), "float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2)}


def tolerances(dtype):
    return TOLERANCES[str(np.dtype(dtype))]
