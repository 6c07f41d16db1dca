"""Channels-last (layout="NHWC") bfloat16 data (float32 statistics and parameters) and float64 data (float64
everything) without an epilogue, against the float64 reference from the maths (cybn.testing.reference_nhwc):
forward-train, backward, inference and eval-mode backward at shapes taking every channels-last plan (fused
with and without the replay cache, split over the rows, N = 1, odd C, C = 1, C not a power of two, large C;
16-byte units and element loads), for (N, C), 1-d, 2-d and 3-d data, on the software GPU with its checks on."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray
from cybn.testing import reference_nhwc as ref
from bn_epilogue_cases import BF16

DTYPES = [np.float64, pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    BF16 is None, reason="ml_dtypes (the test extra) not installed"))]

# (rtol, atol) of the outputs (one rounding to the data type after P maths), the statistics and the parameter
# gradients (P sums of M terms of exact products of the inputs). float64: the kernels compute in double.
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "bfloat16": dict(rtol=2e-2, atol=2e-2)}
STAT_TOL = {"float64": dict(rtol=1e-11, atol=1e-12), "bfloat16": dict(rtol=1e-4, atol=1e-5)}
GRAD_TOL = {"float64": dict(rtol=1e-10, atol=1e-9), "bfloat16": dict(rtol=1e-4, atol=1e-3)}

SHAPES = [
    (64, 12),            # (N, C)
    (3, 40, 8),          # 1-d (N, L, C): 16-byte units in every dtype
    (2, 5, 7, 16),       # 2-d (N, H, W, C)
    (2, 3, 4, 5, 24),    # 3-d (N, D, H, W, C), C not a power of two (units: 24 % 8 == 0)
    (4, 6, 6, 7),        # odd C: element loads
    (3, 9, 6),           # C a multiple of float64's unit (2), not of bfloat16's (8)
    (1, 37, 1),          # N = 1, C = 1
    (1, 5, 5, 16),       # N = 1, 16-byte units
    (1, 5, 5, 13),       # N = 1, odd C
    (2, 3, 2048),        # large C, few rows
]
PLANS = [dict(), dict(split=3), dict(split=2, cache=0), dict(cache=0), dict(group=4, cache=1)]
PLAN_IDS = ["auto", "split3", "split2-nocache", "fused-nocache", "lanes4-cache1"]


def _key(dtype):
    return str(np.dtype(dtype))


def _pdt(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _params(rng, C, pdt):
    return (rng.uniform(0.5, 1.5, C).astype(pdt), rng.standard_normal(C).astype(pdt),
            (0.1 * rng.standard_normal(C)).astype(pdt), rng.uniform(0.5, 2.0, C).astype(pdt))


def _g(a):
    return gpuarray.to_gpu(np.ascontiguousarray(a))


def _close(got, want, tol, what):
    np.testing.assert_allclose(np.asarray(got.get(), np.float64), want, **tol, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_train_step(rng, shape, plan, dtype):
    dtype, pdt, k = np.dtype(dtype), _pdt(dtype), _key(dtype)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 1.5 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = _params(rng, C, pdt)
    grm, grv = _g(rm), _g(rv)
    with batchnorm.plan_override(**plan):
        y, sm, si = batchnorm.forward_train(_g(x), _g(scale), _g(bias), grm, grv, 1e-5, 0.1, layout="NHWC")
        assert y.dtype == dtype and y.shape == shape and sm.dtype == pdt and si.dtype == pdt
        wy, wrm, wrv, wmean, winvstd = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
        _close(y, wy, TOL[k], "y")
        for name, got, want in (("save_mean", sm, wmean), ("save_invstd", si, winvstd), ("running_mean", grm, wrm),
                                ("running_var", grv, wrv)):
            _close(got, want, STAT_TOL[k], name)
        dx, ds, db = batchnorm.backward(_g(x), _g(dy), _g(scale), sm, si, layout="NHWC")
    assert dx.dtype == dtype and ds.dtype == pdt and db.dtype == pdt
    wdx, wds, wdb = ref.backward(x, dy, scale, wmean, winvstd)
    _close(dx, wdx, TOL[k], "dx")
    _close(ds, wds, GRAD_TOL[k], "dscale")
    _close(db, wdb, GRAD_TOL[k], "dbias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plan", [dict(), dict(split=2)], ids=["auto", "split2"])
@pytest.mark.parametrize("shape", [(5, 12), (2, 9, 8), (2, 3, 5, 7), (1, 2, 3, 4, 16), (1, 1, 4096), (3, 1)], ids=str)
def test_inference_and_eval_backward(rng, shape, plan, dtype):
    dtype, pdt, k = np.dtype(dtype), _pdt(dtype), _key(dtype)
    C = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = _params(rng, C, pdt)
    with batchnorm.plan_override(**plan):
        y = batchnorm.forward_infer(_g(x), _g(scale), _g(bias), _g(rm), _g(rv), 1e-5, layout="NHWC")
        dx, ds, db = batchnorm.backward_infer(_g(x), _g(dy), _g(scale), _g(rm), _g(rv), 1e-5, layout="NHWC")
    _close(y, ref.forward_infer(x, scale, bias, rm, rv, 1e-5), TOL[k], "y")
    wdx, wds, wdb = ref.backward_infer(x, dy, scale, rm, rv, 1e-5)
    _close(dx, wdx, TOL[k], "dx")
    _close(ds, wds, GRAD_TOL[k], "dscale")
    _close(db, wdb, GRAD_TOL[k], "dbias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_plans_for_the_new_dtypes(dtype):
    """16-byte units exactly when C is a multiple of the dtype's unit (float64: 2, bfloat16: 8); the shapes
    above include fused and naturally split plans in both."""
    unit = 16 // np.dtype(dtype).itemsize
    assert batchnorm.plan((2, 4, 4, unit), dtype, layout="NHWC")["vec"] == 1
    assert batchnorm.plan((2, 4, 4, unit + 1), dtype, layout="NHWC")["vec"] == 0
    assert batchnorm.plan((2, 4, 4, 16), dtype, layout="NHWC")["split"] == 1
    assert batchnorm.plan((8, 32, 32, 4), dtype, layout="NHWC")["split"] > 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_natural_split(rng, dtype):
    """A shape the heuristic itself splits, both reductions, against the reference."""
    dtype, pdt, k = np.dtype(dtype), _pdt(dtype), _key(dtype)
    shape = (8, 32, 32, 4)
    assert batchnorm.plan(shape, dtype, layout="NHWC", kernel="backward")["split"] > 1
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = _params(rng, 4, pdt)
    y, sm, si = batchnorm.forward_train(_g(x), _g(scale), _g(bias), _g(rm), _g(rv), 1e-5, 0.1, layout="NHWC")
    wy, _, _, wmean, winvstd = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
    _close(y, wy, TOL[k], "y")
    _close(sm, wmean, STAT_TOL[k], "save_mean")
    dx, ds, db = batchnorm.backward(_g(x), _g(dy), _g(scale), sm, si, layout="NHWC")
    wdx, wds, wdb = ref.backward(x, dy, scale, wmean, winvstd)
    _close(dx, wdx, TOL[k], "dx")
    grad_tol = dict(GRAD_TOL[k], atol=GRAD_TOL[k]["atol"] * 10)  # sums of 8192 terms
    _close(ds, wds, grad_tol, "dscale")
    _close(db, wdb, grad_tol, "dbias")
