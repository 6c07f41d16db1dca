"""Channels-last SyncBatchNorm's per-rank data (the MPI worker builds its slice, the test the concatenated batch,
from the same seeds) and the float64 numpy reference over the concatenated batch: x is (N, H, W, C), C = 65
(odd: the element path; not a power of two), uneven batches with a rank of 1 sample and, from 3 ranks on,
one of 0."""
import numpy as np

from cybn.testing import reference_nhwc

C = 65
DTYPES = ("float32", "float16")
EPS, FACTOR = 1e-5, 0.3
STEPS = 2            # training steps with the running statistics carried over
COUNTS = {2: (1, 5), 3: (0, 1, 7)}
# name -> (spatial (H, W), plan override, activation, residual): the fused one-launch plan at a small
# spatial size; a larger one split over the rows by the override (per-CTA partials, last-CTA combine);
# relu with a residual through both halves (dz returned by the backward).
SCENARIOS = {
    "fused": ((3, 4), {}, None, False),
    "split": ((12, 10), {"split": 3}, None, False),
    "relu_residual": ((6, 5), {"split": 2}, "relu", True),
}


def rank_data(size, rank, dtype, scenario, step):
    """This rank's (x, dy, z) of a step, channels last, in `dtype` (N may be 0; z None without a residual)."""
    spatial, _, _, residual = SCENARIOS[scenario]
    rng = np.random.default_rng([11, size, rank, DTYPES.index(dtype), list(SCENARIOS).index(scenario), step])
    shape = (COUNTS[size][rank],) + spatial + (C,)
    x = 2.0 + rng.standard_normal(shape) * np.linspace(0.5, 2.0, C)
    dy = rng.standard_normal(shape)
    z = rng.standard_normal(shape).astype(dtype) if residual else None
    return x.astype(dtype), dy.astype(dtype), z


def params():
    """scale, bias, the initial running mean and variance (float32, the same on every rank)."""
    rng = np.random.default_rng(98)
    return tuple(a.astype(np.float32) for a in (1.0 + 0.3 * rng.standard_normal(C), rng.standard_normal(C),
                                                rng.standard_normal(C), 1.0 + rng.random(C)))


def reference(x, dy, z, act, scale, bias, running_mean, running_var):
    """float64 channels-last BatchNorm over the batch x with y = act(bn(x) + z) (act None or "relu"):
    (y, running_mean, running_var, dx, dz, dscale, dbias); dz = dy * act'(v) (dy without an activation)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    bn, rm, rv, mean, invstd = reference_nhwc.forward_train(x, scale, bias, running_mean, running_var, EPS, FACTOR)
    v = bn + (0.0 if z is None else z.astype(np.float64))
    y, g = (np.maximum(v, 0.0), dy * (v > 0)) if act == "relu" else (v, dy)
    dx, ds, db = reference_nhwc.backward(x, g, scale, mean, invstd)
    return y, rm, rv, dx, g, ds, db
