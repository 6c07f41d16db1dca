"""SyncBatchNorm's per-rank data (the MPI worker builds its slice, the test the concatenated batch, from the
same seeds) and the float64 numpy BatchNorm the results are compared with."""
import ml_dtypes  # noqa: F401  (registers np.dtype("bfloat16"))
import numpy as np

C, SPATIAL = 3, (2, 3)
DTYPES = ("float32", "float16", "bfloat16", "float64")
STEPS = 3            # training steps (forward + backward) with the running statistics carried over
EPS, FACTOR = 1e-5, 0.3
# Samples per rank: uneven, a rank with 1 sample and (from 3 ranks on) one with 0.
COUNTS = {2: (1, 6), 3: (0, 1, 9), 4: (5, 0, 1, 12)}


def rank_data(size, rank, dtype, step):
    """This rank's (x, dy) of a step, in `dtype` (N may be 0)."""
    rng = np.random.default_rng([7, size, rank, DTYPES.index(dtype), step])
    n = COUNTS[size][rank]
    x = 3.0 + rng.standard_normal((n, C) + SPATIAL) * np.array([1.0, 0.5, 2.0])[:, None, None]
    dy = rng.standard_normal((n, C) + SPATIAL)
    return x.astype(dtype), dy.astype(dtype)


def params(dtype="float32"):
    """scale, bias, the initial running mean and variance (the same on every rank): float32, float64 for
    float64 data."""
    rng = np.random.default_rng(99)
    p = np.float64 if dtype == "float64" else np.float32
    return tuple(a.astype(p) for a in (1.0 + 0.3 * rng.standard_normal(C), rng.standard_normal(C),
                                                rng.standard_normal(C), 1.0 + rng.random(C)))


def reference(x, dy, scale, bias, running_mean, running_var, factor=FACTOR, unbiased=True):
    """float64 BatchNorm (spatial) over the batch x: y, the updated running statistics, dx, dscale, dbias."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = (0, 2, 3)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = x.mean(axes), x.var(axes)
    b = lambda a: a[None, :, None, None]  # noqa: E731
    invstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - b(mean)) * b(invstd)
    y = xhat * b(scale) + b(bias)
    rm = (1 - factor) * running_mean + factor * mean
    rv = (1 - factor) * running_var + factor * (var * m / (m - 1) if unbiased else var)
    dbias, dscale = dy.sum(axes), (dy * xhat).sum(axes)
    dx = b(scale * invstd) * (dy - b(dbias / m) - xhat * b(dscale / m))
    return y, rm, rv, dx, dscale, dbias


# The fused epilogue through comm= (one step): (activation, residual, pass y to backward). Under mpiexec in
# float32 (each rank loads each epilogue program: seconds); the other dtypes in test_sync_local.py (one rank).
EPILOGUES = (("swish", True, False), ("relu6", True, True), ("sigmoid", False, True))
EPI_DTYPES = ("float32",)


def epilogue_data(size, rank, dtype, k):
    """This rank's residual z of epilogue case k (the x and dy are rank_data's step 0)."""
    rng = np.random.default_rng([11, size, rank, k])
    return rng.standard_normal((COUNTS[size][rank], C) + SPATIAL).astype(dtype)
