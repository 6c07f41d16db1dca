"""float64 BatchNorm written from the maths (independent of cybn), for x of shape (N, C, S)."""
import numpy as np


def bn_reference(x, scale, bias, running_mean, running_var, dy, epsilon, factor, mode):
    """Training forward, its backward, then inference forward and its (frozen-statistics) backward with
    the updated running statistics. scale/bias None: non-affine (1 and 0)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    N, C, S = x.shape
    if mode == "spatial":
        axes, shape = (0, 2), (1, C, 1)
    else:
        axes, shape = (0,), (1, C, S)
    M = x.size // int(np.prod(shape))
    sc = np.ones(shape) if scale is None else np.asarray(scale, np.float64).reshape(shape)
    b = np.zeros(shape) if bias is None else np.asarray(bias, np.float64).reshape(shape)
    rm = np.asarray(running_mean, np.float64).reshape(shape)
    rv = np.asarray(running_var, np.float64).reshape(shape)

    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + epsilon)
    xhat = (x - mean) * invstd
    out = {"y": sc * xhat + b, "save_mean": mean, "save_invstd": invstd}
    rm_new = (1 - factor) * rm + factor * mean
    rv_new = (1 - factor) * rv + factor * var * M / (M - 1)
    out["running_mean"], out["running_var"] = rm_new, rv_new

    bg = dy.sum(axis=axes, keepdims=True)
    sg = (dy * xhat).sum(axis=axes, keepdims=True)
    out["dx"] = sc * invstd * (dy - bg / M - xhat * sg / M)
    out["scale_grad"], out["bias_grad"] = sg, bg

    inv_r = 1.0 / np.sqrt(rv_new + epsilon)
    xhat_r = (x - rm_new) * inv_r
    out["y_infer"] = sc * xhat_r + b
    out["dx_infer"] = sc * inv_r * dy
    out["scale_grad_infer"] = (dy * xhat_r).sum(axis=axes, keepdims=True)
    out["bias_grad_infer"] = bg
    return {k: v.ravel() for k, v in out.items()}


def tolerances(dtype):
    """(rtol, atol) for outputs of dtype (fp16 data: about 3 decimal digits)."""
    return (2e-4, 2e-4) if np.dtype(dtype) == np.float32 else (1e-2, 1e-2)
