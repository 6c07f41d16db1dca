"""float64 BatchNorm written from the maths (independent of cybn), for x of shape (N, C, S)."""
import numpy as np


ACTIVATIONS = {"none": 0, "relu": 1, "clipped_relu": 2, "leaky_relu": 3, "elu": 4, "sigmoid": 5, "tanh": 6,
               "swish": 7}


def act_forward(act, v, alpha):
    sig = 1.0 / (1.0 + np.exp(-v))
    return {"none": v, "relu": np.maximum(v, 0), "clipped_relu": np.minimum(np.maximum(v, 0), alpha),
            "leaky_relu": np.where(v > 0, v, alpha * v), "elu": np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0))),
            "sigmoid": sig, "tanh": np.tanh(v), "swish": v * sig}[act]


def act_grad(act, v, alpha):
    """d act / d v at v, with torch's values at the kinks (relu'(0) = 0, leaky'(0) = elu'(0) = alpha)."""
    sig = 1.0 / (1.0 + np.exp(-v))
    return {"none": np.ones_like(v), "relu": (v > 0) * 1.0, "clipped_relu": ((v > 0) & (v < alpha)) * 1.0,
            "leaky_relu": np.where(v > 0, 1.0, alpha), "elu": np.where(v > 0, 1.0, alpha * np.exp(np.minimum(v, 0))),
            "sigmoid": sig * (1 - sig), "tanh": 1 - np.tanh(v) ** 2, "swish": sig * (1 + v * (1 - sig))}[act]


def bn_reference(x, scale, bias, running_mean, running_var, dy, epsilon, factor, mode, *, biased=False,
                 fix_gamma=False, act="none", alpha=0.0, z=None):
    """Training forward, its backward, then inference forward and its (frozen-statistics) backward with
    the updated running statistics, for x of shape (N, C, S). scale/bias None: non-affine (1 and 0).
    biased: the biased batch variance into running_var; fix_gamma: scale taken as 1, its gradient 0;
    y = act(bn(x) + z) with z (x's shape) or without; the backward then goes through act, and dz (the
    pre-activation's gradient) is returned as "dz"/"dz_infer" when z is given."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    N, C, S = x.shape
    if mode == "spatial":
        axes, shape = (0, 2), (1, C, 1)
    else:
        axes, shape = (0,), (1, C, S)
    M = x.size // int(np.prod(shape))
    sc = np.ones(shape) if scale is None or fix_gamma else np.asarray(scale, np.float64).reshape(shape)
    b = np.zeros(shape) if bias is None else np.asarray(bias, np.float64).reshape(shape)
    rm = np.asarray(running_mean, np.float64).reshape(shape)
    rv = np.asarray(running_var, np.float64).reshape(shape)
    zz = 0.0 if z is None else np.asarray(z, np.float64)

    def through_act(xhat, inv, tag):
        v = sc * xhat + b + zz
        out["y" + tag] = act_forward(act, v, alpha)
        dv = dy * act_grad(act, v, alpha)
        if z is not None:
            out["dz" + tag] = dv
        return dv

    out = {}
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + epsilon)
    xhat = (x - mean) * invstd
    out["save_mean"], out["save_invstd"] = mean, invstd
    rm_new = (1 - factor) * rm + factor * mean
    rv_new = (1 - factor) * rv + factor * var * (1 if biased else M / (M - 1))
    out["running_mean"], out["running_var"] = rm_new, rv_new

    dv = through_act(xhat, invstd, "")
    bg = dv.sum(axis=axes, keepdims=True)
    sg = (dv * xhat).sum(axis=axes, keepdims=True)
    out["dx"] = sc * invstd * (dv - bg / M - xhat * sg / M)
    out["scale_grad"], out["bias_grad"] = sg * (0 if fix_gamma else 1), bg

    inv_r = 1.0 / np.sqrt(rv_new + epsilon)
    xhat_r = (x - rm_new) * inv_r
    dv_r = through_act(xhat_r, inv_r, "_infer")
    out["dx_infer"] = sc * inv_r * dv_r
    out["scale_grad_infer"] = (dv_r * xhat_r).sum(axis=axes, keepdims=True) * (0 if fix_gamma else 1)
    out["bias_grad_infer"] = dv_r.sum(axis=axes, keepdims=True)
    return {k: np.broadcast_to(v, x.shape if k in ("y", "dx", "dz", "y_infer", "dx_infer", "dz_infer") else
                               v.shape).ravel() for k, v in out.items()}


def tolerances(dtype):
    """(rtol, atol) for outputs of dtype (fp16 data: about 3 decimal digits)."""
    return (2e-4, 2e-4) if np.dtype(dtype) == np.float32 else (1e-2, 1e-2)
