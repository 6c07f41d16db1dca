"""Shared helpers of the BatchNorm kernel tests: inputs, GPU round trips, tolerances."""
import numpy as np

from cybn.testing import reference as ref
from cybn import batchnorm, gpuarray

# fp32: statistics are accumulated in fp32 (Welford), so the mean/invstd carry ~1e-6 relative error
# and y = scale * xhat + bias inherits it; 1e-4 leaves headroom while still catching any real bug.
# fp16: y is rounded to fp16 (relative 2^-11 = 4.9e-4, half an ulp), and |y| up to ~4 has an ulp of
# 2^-9 ~ 2e-3: 2e-3 absolute + relative is about one fp16 ulp at the values the tests produce.
TOL = {np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4), np.dtype(np.float16): dict(rtol=2e-3, atol=4e-3)}
STAT_TOL = dict(rtol=1e-4, atol=1e-5)  # fp32 statistics, for either data type


def params(rng, K):
    """scale, bias, running_mean, running_var (float32, K each)."""
    return (rng.uniform(0.5, 1.5, K).astype(np.float32), rng.standard_normal(K).astype(np.float32),
            (0.1 * rng.standard_normal(K)).astype(np.float32), rng.uniform(0.5, 2.0, K).astype(np.float32))


def gpu(a):
    return gpuarray.to_gpu(np.ascontiguousarray(a))


def run_forward_train(x, scale, bias, rm, rv, eps, factor, mode, **kw):
    """Run forward_train on host inputs; returns host (y, running_mean, running_var, save_mean, save_invstd)."""
    g_rm, g_rv = gpu(rm), gpu(rv)
    y, sm, si = batchnorm.forward_train(gpu(x), None if scale is None else gpu(scale),
                                        None if bias is None else gpu(bias), g_rm, g_rv, eps, factor,
                                        mode=mode, **kw)
    return y.get(), g_rm.get(), g_rv.get(), sm.get(), si.get()


def check_forward_train(rng, shape, mode="spatial", dtype=np.float32, eps=1e-5, factor=0.1, offset=0.0,
                        affine=True):
    """One training forward on random data against the float64 reference; returns the device results."""
    _, _, K, _ = ref.layout(shape, mode)
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    scale, bias, rm, rv = params(rng, K)
    if not affine:
        scale = bias = None
    got = run_forward_train(x, scale, bias, rm, rv, eps, factor, mode)
    want = ref.forward_train(x, scale, bias, rm, rv, eps, factor, mode)
    assert_forward(got, want, x.dtype)
    return got


def assert_forward(got, want, dtype):
    y, rm, rv, sm, si = got
    wy, wrm, wrv, wmean, winvstd = want
    assert y.dtype == dtype and y.shape == wy.shape
    assert np.all(np.isfinite(y)), "non-finite output"
    np.testing.assert_allclose(y.astype(np.float64), wy, **TOL[np.dtype(dtype)], err_msg="y")
    np.testing.assert_allclose(sm, wmean, **STAT_TOL, err_msg="save_mean")
    np.testing.assert_allclose(si, winvstd, **STAT_TOL, err_msg="save_invstd")
    np.testing.assert_allclose(rm, wrm, **STAT_TOL, err_msg="running_mean")
    np.testing.assert_allclose(rv, wrv, **STAT_TOL, err_msg="running_var")


def batch_stats(x, mode, eps):
    """float32 (mean, invstd) of x computed by numpy in float64: inputs for the backward tests."""
    _, _, _, mean, invstd = ref.forward_train(x, None, None, 0.0, 0.0, eps, 0.0, mode)
    return mean.astype(np.float32), invstd.astype(np.float32)


def exact_mean(x, mode="spatial"):
    """The float64 batch mean: what the backward differentiates with. It is handed save_mean (the float32
    rounding) and recovers the exact mean as save_mean + mean(x - save_mean) in its own reduction."""
    return ref.forward_train(x, None, None, 0.0, 0.0, 1.0, 0.0, mode)[3]
