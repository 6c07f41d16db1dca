"""bfloat16 data with float32 parameters in the MXNet face (like float16). There is no golden file for it
(MXNet 1.9.1's CPU BatchNorm was not measured with bfloat16), so the reference is float64 numpy from the
maths (cybn.testing.reference) on the bfloat16 inputs as stored; outputs within bfloat16's tolerance
(cybn.testing.bn_ref_epilogue: 2e-2), the float32 statistics and moving averages within float32's."""
import numpy as np
import pytest

from cybn import gpuarray
from cybn.array.dtypes import BFLOAT16
from cybn.mxnet import BatchNorm as mx_bn, MXNetError, autograd
from cybn.testing import bn_ref_epilogue, reference

pytestmark = pytest.mark.skipif(BFLOAT16 is None, reason="bfloat16 needs ml_dtypes (in the test extra)")
TOL16 = bn_ref_epilogue.tolerances("bfloat16") if BFLOAT16 is not None else None
STAT = dict(rtol=1e-5, atol=1e-6)


def _inputs(rng, shape, axis):
    C = shape[axis]
    x = rng.normal(0.5, 2.0, shape).astype(BFLOAT16)
    dy = rng.normal(0, 1, shape).astype(BFLOAT16)
    p = (rng.uniform(0.5, 1.5, C), rng.normal(0, 0.5, C), rng.normal(0, 0.3, C), rng.uniform(0.5, 1.5, C))
    return (x, dy) + tuple(a.astype(np.float32) for a in p)


def _nc(a, axis):
    """The reference's view: channel at 1 (the last axis moved there; a middle one with the axes before it
    folded into N, as the face views it)."""
    a = np.asarray(a, np.float64)
    if axis % a.ndim == a.ndim - 1 and a.ndim > 2:
        return np.moveaxis(a, -1, 1)
    return a if axis == 1 else a.reshape(int(np.prod(a.shape[:axis])), a.shape[axis], -1)


def _back(a, want, axis):
    """want (the reference's layout) in the face's output layout."""
    return np.moveaxis(want, 1, -1) if axis % a.ndim == a.ndim - 1 and a.ndim > 2 else want


def _close(got, want, tol=TOL16):
    np.testing.assert_allclose(got.get().astype(np.float64).reshape(np.shape(want)), want, *tol)


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((2, 3, 4, 5), 2), ((8, 4), 1), ((2, 3, 2, 3, 4), 1),
                                        ((4, 5, 3), -1), ((2, 3, 4, 5), 3)])
@pytest.mark.parametrize("fix_gamma", [False, True])
def test_bfloat16_train(rng, shape, axis, fix_gamma):
    x, dy, g, b, mm, mv = _inputs(rng, shape, axis)
    gx, dg_, mm_, mv_ = gpuarray.to_gpu(x), gpuarray.to_gpu(g), gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
    with autograd.record() as tape:
        y, mean, invstd = mx_bn(gx, dg_, gpuarray.to_gpu(b), mm_, mv_, fix_gamma=fix_gamma, output_mean_var=True,
                                axis=axis)
    dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
    assert y.dtype == dx.dtype == BFLOAT16 and y.shape == x.shape
    assert mean.dtype == invstd.dtype == dgamma.dtype == dbeta.dtype == mm_.dtype == np.float32
    scale = np.ones_like(g) if fix_gamma else g
    xs, dys = _nc(x, axis), _nc(dy, axis)
    ry, _, _, rmean, rinv = reference.forward_train(xs, scale, b, mm, mv, 1e-3, 0.1, running_var_unbiased=False)
    rdx, rdg, rdb = reference.backward(xs, dys, scale, rmean, rinv)
    _close(y, _back(x, ry, axis))
    _close(dx, _back(x, rdx, axis))
    np.testing.assert_allclose(mean.get(), rmean, **STAT)
    np.testing.assert_allclose(invstd.get(), rinv, rtol=1e-5)
    np.testing.assert_allclose(dbeta.get(), rdb, rtol=1e-5, atol=1e-4)
    if fix_gamma:
        np.testing.assert_array_equal(dgamma.get(), 0.0)
        np.testing.assert_array_equal(dg_.get(), 1.0)
    else:
        np.testing.assert_allclose(dgamma.get(), rdg, rtol=1e-4, atol=1e-3)
    m = float(np.float32(0.9))
    np.testing.assert_allclose(mm_.get(), m * mm + (1 - m) * rmean, **STAT)
    np.testing.assert_allclose(mv_.get(), m * mv + (1 - m) * (1 / rinv ** 2 - 1e-3), rtol=1e-5)


@pytest.mark.parametrize("use_global_stats", [False, True])
def test_bfloat16_eval_and_its_backward(rng, use_global_stats):
    """Inference forward; its backward is MXNet's eval backward (the training formula at the moving
    statistics, moving statistics moved towards themselves), or with use_global_stats the frozen one."""
    x, dy, g, b, mm, mv = _inputs(rng, (4, 3, 2, 5), 1)
    mm_, mv_ = gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
    with autograd.record() as tape:
        y = mx_bn(gpuarray.to_gpu(x), gpuarray.to_gpu(g), gpuarray.to_gpu(b), mm_, mv_, fix_gamma=False,
                  use_global_stats=use_global_stats, training=False)
    dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
    xs, dys = _nc(x, 1), _nc(dy, 1)
    if use_global_stats:
        rdx, rdg, rdb = reference.backward_infer(xs, dys, g, mm, mv, 1e-3)
    else:
        rdx, rdg, rdb = reference.backward(xs, dys, g, mm, 1 / np.sqrt(mv.astype(np.float64) + 1e-3))
    _close(y, reference.forward_infer(xs, g, b, mm, mv, 1e-3))
    _close(dx, rdx)
    np.testing.assert_allclose(dgamma.get(), rdg, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbeta.get(), rdb, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm_.get(), mm, rtol=1e-6)
    np.testing.assert_allclose(mv_.get(), mv, rtol=1e-6)


def test_bfloat16_parameters_must_be_float32():
    x = gpuarray.to_gpu(np.ones((4, 3, 5), BFLOAT16))
    g = gpuarray.to_gpu(np.full(3, 2.0, BFLOAT16))
    b, mm, mv = (gpuarray.to_gpu(np.full(3, v, np.float32)) for v in (0.0, 0.0, 1.0))
    with autograd.record() as tape:
        with pytest.raises(MXNetError, match="gamma must be float32.*bfloat16 data"):
            mx_bn(x, g, b, mm, mv)
    assert tape._saved == []
    np.testing.assert_array_equal(g.get().astype(np.float32), 2.0)
