"""Comparison of a face's results with a framework's golden arrays, in float32 (or float16) ulps of the
array's largest magnitude: two correct float32 implementations differ by a few such ulps (each is within
~1e-7..1e-6 relative of the exact result, peer-semantics.md)."""
import numpy as np

# Stated tolerances, in ulps of max|golden| of the array's dtype: y, mean/invstd and running statistics
# (one rounding chain each) 8; gradients (sums of M products, then a difference of such sums) 16.
ULPS = {"y": 8, "stat": 8, "grad": 16}


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def ulp_error(got, want, dtype=None):
    """max|got - want| in ulps of max|want| (of `dtype`, by default want's: float16 data counts every
    result, its float32 parameter gradients too, in float16 ulps, the precision the data carries)."""
    got, want = host(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / (np.finfo(dtype or want.dtype).eps * scale)


def assert_close(got, want, what, kind, dtype=None):
    e = ulp_error(got, want, dtype)
    assert e <= ULPS[kind], f"{what}: {e:.1f} ulps of max|golden| from the framework (allowed {ULPS[kind]})"


def nrel(got, ref):
    return float(np.abs(host(got).astype(np.float64) - ref).max() / np.abs(ref).max())
