"""The faces' channel-last paths (MXNet axis=-1 / the last axis, Paddle data_layout='NHWC' and the functional's
NLC/NHWC/NDHWC) in the combinations the golden files do not hold: fix_gamma, use_global_stats,
output_mean_var, float16 and float64 data in MXNet; in_place, use_global_stats, trainable_statistics and the
fused act (float32, float64) in Paddle; that the face hands the core the caller's memory (layout="NHWC", no
transpose, no copy); bad input specific to the channel last.
References: float64 numpy from the maths (cybn.testing.reference, written for the channel at axis 1, applied
to np.moveaxis(x, -1, 1)), not the kernels' own output."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray, softgpu
from cybn.mxnet import BatchNorm as mx_bn, MXNetError, autograd
from cybn.paddle import BatchNorm as PaddleBN, batch_norm
from cybn.testing import bn_ref_epilogue, reference

TOL = {np.dtype(np.float32): (2e-5, 2e-5), np.dtype(np.float16): (1e-2, 1e-2)}
TOL64 = bn_ref_epilogue.tolerances(np.float64)
EPS32 = float(np.float32(1e-5))  # Paddle's float32 epsilon attribute
M32 = float(np.float32(0.9))


def _nc(a):
    """Channel last -> channel at axis 1 (the reference's layout)."""
    return np.moveaxis(a, -1, 1)


def _cl(a):
    return np.moveaxis(a, 1, -1)


def _inputs(rng, shape, dtype=np.float32, pdtype=np.float32):
    C = shape[-1]
    return (rng.normal(0.5, 2.0, shape).astype(dtype), rng.normal(0, 1, shape).astype(dtype),
            rng.uniform(0.5, 1.5, C).astype(pdtype), rng.normal(0, 0.5, C).astype(pdtype),
            rng.normal(0, 0.3, C).astype(pdtype), rng.uniform(0.5, 1.5, C).astype(pdtype))


def _close(got, want, dtype=np.float32):
    np.testing.assert_allclose(got.get() if hasattr(got, "get") else got, want, *TOL[np.dtype(dtype)])


# ------------------------------------------------------------------------------------------------- MXNet
@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 3, 4, 5), (2, 2, 3, 2, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_mxnet_last_axis_fix_gamma_train(rng, shape, dtype):
    """fix_gamma=True (the default) with axis=-1: gamma = 1 forward, dgamma 0, gamma overwritten with ones,
    the moving statistics moved (biased variance) in the backward; float16 data keeps float32 parameters."""
    x, dy, g, b, mm, mv = _inputs(rng, shape, dtype)
    C = shape[-1]
    dg_, mm_, mv_ = gpuarray.to_gpu(g), gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
    with autograd.record() as tape:
        y, mean, invstd = mx_bn(gpuarray.to_gpu(x), dg_, gpuarray.to_gpu(b), mm_, mv_, momentum=0.9,
                                output_mean_var=True, axis=-1)
    np.testing.assert_array_equal(mm_.get(), mm)  # MXNet moves them in the backward only
    dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
    ones = np.ones(C)
    ry, _, _, rmean, rinv = reference.forward_train(_nc(x), ones, b, mm, mv, 1e-3, 0.1, running_var_unbiased=False)
    rdx, _, rdb = reference.backward(_nc(x), _nc(dy), ones, rmean, rinv)
    assert y.shape == x.shape and y.dtype == dtype and mean.dtype == dgamma.dtype == np.float32
    _close(y, _cl(ry), dtype)
    _close(mean, rmean)
    np.testing.assert_allclose(invstd.get(), rinv, rtol=2e-4 if dtype == np.float16 else 2e-5)
    _close(dx, _cl(rdx), dtype)
    np.testing.assert_allclose(dbeta.get(), rdb, rtol=2e-3 if dtype == np.float16 else 2e-5, atol=1e-3)
    np.testing.assert_array_equal(dgamma.get(), 0.0)
    np.testing.assert_array_equal(dg_.get(), 1.0)
    var_b = _nc(x).astype(np.float64).var(axis=(0,) + tuple(range(2, len(shape))))
    np.testing.assert_allclose(mm_.get(), M32 * mm + (1 - M32) * rmean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mv_.get(), M32 * mv + (1 - M32) * var_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_mxnet_last_axis_global_stats_and_mean_var(rng, training):
    """use_global_stats with axis=3 of 4-d data: moving statistics normalise, the backward is frozen
    (dy * gamma * invstd), nothing moves; output_mean_var returns the moving mean and its invstd."""
    x, dy, g, b, mm, mv = _inputs(rng, (2, 3, 4, 5))
    mm_, mv_ = gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
    with autograd.record() as tape:
        y, mean, invstd = mx_bn(gpuarray.to_gpu(x), gpuarray.to_gpu(g), gpuarray.to_gpu(b), mm_, mv_,
                                fix_gamma=False, use_global_stats=True, output_mean_var=True, axis=3,
                                training=training)
    dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
    rdx, rdg, rdb = reference.backward_infer(_nc(x), _nc(dy), g, mm, mv, 1e-3)
    _close(y, _cl(reference.forward_infer(_nc(x), g, b, mm, mv, 1e-3)))
    _close(dx, _cl(rdx))
    _close(dgamma, rdg)
    _close(dbeta, rdb)
    _close(mean, mm)
    _close(invstd, 1 / np.sqrt(mv.astype(np.float64) + 1e-3))
    np.testing.assert_array_equal(mm_.get(), mm)
    np.testing.assert_array_equal(mv_.get(), mv)


def test_mxnet_last_axis_eval_output_mean_var_fix_gamma(rng):
    x, _, g, b, mm, mv = _inputs(rng, (4, 5, 3))
    dg_ = gpuarray.to_gpu(g)
    y, mean, invstd = mx_bn(gpuarray.to_gpu(x), dg_, gpuarray.to_gpu(b), gpuarray.to_gpu(mm), gpuarray.to_gpu(mv),
                            output_mean_var=True, axis=-1)  # outside record(): inference
    _close(y, _cl(reference.forward_infer(_nc(x), np.ones(3), b, mm, mv, 1e-3)))
    _close(mean, mm)
    _close(invstd, 1 / np.sqrt(mv.astype(np.float64) + 1e-3))
    np.testing.assert_array_equal(dg_.get(), 1.0)


def test_mxnet_last_axis_is_the_callers_memory(rng):
    """axis=-1 reaches the core as layout="NHWC" on data itself: the face's inference forward is the core's one
    launch over x and y (no transpose, no copy), with the same traffic as the core called directly."""
    x, _, g, b, mm, mv = _inputs(rng, (4, 6, 5, 8))
    gx, p = gpuarray.to_gpu(x), [gpuarray.to_gpu(a) for a in (g, b, mm, mv)]
    with softgpu.measure() as face:
        y = mx_bn(gx, *p, fix_gamma=False, axis=-1, training=False)
    with softgpu.measure() as core:
        batchnorm.forward_infer(gx, *p, 1e-3, layout="NHWC")
    assert face.launches_count == core.launches_count == 1
    assert (face.load_bytes, face.store_bytes) == (core.load_bytes, core.store_bytes) <= (4 * x.size + 64 * 8,) * 2
    _close(y, _cl(reference.forward_infer(_nc(x), g, b, mm, mv, 1e-3)))


@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 3, 4, 5)])
def test_mxnet_last_axis_float64_train(rng, shape):
    """float64 data with the channel last, float64 everything: three steps compounding the moving
    statistics, each forward + backward, against float64 numpy."""
    x, dy, g, b, mm, mv = _inputs(rng, shape, np.float64, np.float64)
    g_, b_, mm_, mv_ = (gpuarray.to_gpu(a) for a in (g, b, mm, mv))
    rmm, rmv = mm.copy(), mv.copy()
    for step in range(3):
        xs = x + step
        with autograd.record() as tape:
            y = mx_bn(gpuarray.to_gpu(xs), g_, b_, mm_, mv_, fix_gamma=False, momentum=0.5, axis=-1)
        dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
        ry, _, _, mean, invstd = reference.forward_train(_nc(xs), g, b, rmm, rmv, 1e-3, 0.5,
                                                         running_var_unbiased=False)
        rdx, rdg, rdb = reference.backward(_nc(xs), _nc(dy), g, mean, invstd)
        rmm, rmv = 0.5 * rmm + 0.5 * mean, 0.5 * rmv + 0.5 * (1 / invstd ** 2 - 1e-3)
        assert y.dtype == dx.dtype == dgamma.dtype == np.float64
        for got, want in ((y, _cl(ry)), (dx, _cl(rdx)), (dgamma, rdg), (dbeta, rdb), (mm_, rmm), (mv_, rmv)):
            np.testing.assert_allclose(got.get(), want, *TOL64)


@pytest.mark.parametrize("bad,match", [
    (dict(gamma=np.ones(4, np.float32)), "gamma must have 5 elements"),  # C of axis 1, not of the last axis
    (dict(moving_mean=np.ones(4, np.float32)), "moving_mean must have 5 elements"),
    (dict(axis=4), "axis 4 is out of range"),
    (dict(axis=-5), "axis -5 is out of range"),
])
def test_mxnet_last_axis_bad_input(bad, match):
    rng = np.random.default_rng(3)
    shape = (2, 4, 3, 5)  # channel last: 5
    args = dict(data=gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32)), axis=-1,
                gamma=gpuarray.to_gpu(np.full(5, 2.0, np.float32)), beta=gpuarray.to_gpu(np.zeros(5, np.float32)),
                moving_mean=gpuarray.to_gpu(np.zeros(5, np.float32)), moving_var=gpuarray.to_gpu(np.ones(5, np.float32)))
    keep = dict(args)
    for k, v in bad.items():
        args[k] = gpuarray.to_gpu(v) if isinstance(v, np.ndarray) else v
    with autograd.record() as tape:
        with pytest.raises(MXNetError, match=match):
            mx_bn(**args)
    assert tape._saved == []
    np.testing.assert_array_equal(keep["gamma"].get(), 2.0)
    np.testing.assert_array_equal(keep["moving_mean"].get(), 0.0)
    np.testing.assert_array_equal(keep["moving_var"].get(), 1.0)


def test_mxnet_last_axis_out_grad_shape():
    """A gradient in the channel-first shape of channel-last data is refused; the statistics do not move."""
    x = gpuarray.to_gpu(np.random.default_rng(4).standard_normal((2, 4, 3, 5)).astype(np.float32))
    g, b, mm, mv = (gpuarray.to_gpu(np.full(5, v, np.float32)) for v in (1.0, 0.0, 0.0, 1.0))
    with autograd.record() as tape:
        y = mx_bn(x, g, b, mm, mv, fix_gamma=False, axis=-1)
    with pytest.raises(MXNetError, match=r"out_grad must have the output's shape \(2, 4, 3, 5\)"):
        tape.backward(y, gpuarray.to_gpu(np.ones((2, 5, 4, 3), np.float32)))
    np.testing.assert_array_equal(mm.get(), 0.0)


# ------------------------------------------------------------------------------------------------ Paddle
def _paddle(C, w, b, rm, rv, **kw):
    bn = PaddleBN(C, data_layout="NHWC", **kw)
    bn.set_state_dict({"weight": w, "bias": b, "_mean": rm, "_variance": rv})
    return bn


@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 3, 4, 5), (2, 2, 3, 2, 4)])
def test_paddle_nhwc_in_place(rng, shape):
    """in_place=True with NHWC: y is written into the input's memory (the same pointer), as the running
    statistics move; the backward is refused (the input is gone)."""
    x, dy, w, b, rm, rv = _inputs(rng, shape)
    bn = _paddle(shape[-1], w, b, rm, rv, in_place=True)
    gx = gpuarray.to_gpu(x)
    y = bn(gx)
    ry, rrm, _, mean, invstd = reference.forward_train(_nc(x), w, b, rm, rv, EPS32, 1 - M32)
    assert y.ptr == gx.ptr and y.shape == gx.shape
    _close(gx, _cl(ry))
    _close(bn._mean.value, rrm)
    _close(bn._variance.value, M32 * rv + (1 - M32) * (1 / invstd ** 2 - EPS32))
    with pytest.raises(RuntimeError, match="in_place=True"):
        bn.backward(gpuarray.to_gpu(dy))


@pytest.mark.parametrize("train", [True, False])
def test_paddle_nhwc_use_global_stats(rng, train):
    x, dy, w, b, rm, rv = _inputs(rng, (2, 3, 4, 5))
    bn = _paddle(5, w, b, rm, rv, use_global_stats=True)
    bn.train() if train else bn.eval()
    y = bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    rdx, rdw, rdb = reference.backward_infer(_nc(x), _nc(dy), w, rm, rv, EPS32)
    _close(y, _cl(reference.forward_infer(_nc(x), w, b, rm, rv, EPS32)))
    _close(dx, _cl(rdx))
    _close(bn.weight.grad, rdw)
    _close(bn.bias.grad, rdb)
    np.testing.assert_array_equal(bn._mean.numpy(), rm)
    np.testing.assert_array_equal(bn._variance.numpy(), rv)


def test_paddle_nhwc_trainable_statistics_eval(rng):
    """eval() with trainable_statistics: batch statistics normalise and move the running ones; the backward
    is the frozen one with the running statistics as the forward left them."""
    x, dy, w, b, rm, rv = _inputs(rng, (4, 5, 3))
    bn = _paddle(3, w, b, rm, rv, trainable_statistics=True).eval()
    y = bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    ry, rrm, _, mean, invstd = reference.forward_train(_nc(x), w, b, rm, rv, EPS32, 1 - M32)
    rrv = M32 * rv + (1 - M32) * (1 / invstd ** 2 - EPS32)
    rdx, rdw, rdb = reference.backward_infer(_nc(x), _nc(dy), w, rrm, rrv, EPS32)
    _close(y, _cl(ry))
    _close(bn._mean.value, rrm)
    _close(bn._variance.value, rrv)
    _close(dx, _cl(rdx))
    _close(bn.weight.grad, rdw)
    _close(bn.bias.grad, rdb)


def test_paddle_nhwc_is_the_callers_memory(rng):
    """data_layout NHWC reaches the core as layout="NHWC" on the input itself: the layer's training forward
    launches and moves exactly what the core's does when called directly (no transpose, no copy)."""
    x, _, w, b, rm, rv = _inputs(rng, (2, 6, 5, 8))
    bn, gx = _paddle(8, w, b, rm, rv), gpuarray.to_gpu(x)
    p = [gpuarray.to_gpu(a) for a in (w, b, rm, rv)]
    with softgpu.measure() as face:
        bn(gx)
    with softgpu.measure() as core:
        batchnorm.forward_train(gx, *p, EPS32, 1 - M32, running_var_unbiased=False, layout="NHWC")
    assert face.launches_count == core.launches_count
    assert (face.load_bytes, face.store_bytes) == (core.load_bytes, core.store_bytes)


@pytest.mark.parametrize("act,alpha", [("relu", 0.0), ("relu6", 6.0), ("elu", 1.0), ("sigmoid", 0.0),
                                       ("tanh", 0.0), ("swish", 0.0), ("silu", 0.0)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_paddle_nhwc_act(rng, act, alpha, dtype):
    """act fused with NHWC: a training step (y = act(bn(x)), the backward through act') then an eval step
    (the frozen backward through act' at the running statistics), against float64 numpy."""
    dt = np.dtype(dtype)
    x, dy, w, b, rm, rv = _inputs(rng, (2, 3, 4, 5), dt, dt)
    x = x * 3  # past relu6's ceiling too
    tol = TOL64 if dt == np.float64 else (2e-4, 2e-4)
    bn = _paddle(5, w, b, rm, rv, act=act, dtype=dtype)
    y = bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    ry, rrm, _, mean, invstd, v = bn_ref_epilogue.forward_train(_nc(x), w, b, rm, rv, EPS32, 1 - M32, act, alpha)
    rrv = M32 * rv + (1 - M32) * (1 / invstd ** 2 - EPS32)
    rdx, _, rdw, rdb = bn_ref_epilogue.backward(_nc(x), _nc(dy), w, mean, invstd, v, act, alpha)
    for got, want in ((y, _cl(ry)), (dx, _cl(rdx)), (bn.weight.grad, rdw), (bn.bias.grad, rdb),
                      (bn._mean.value, rrm), (bn._variance.value, rrv)):
        np.testing.assert_allclose(got.get(), want, *tol)
    bn.clear_gradients()
    bn.eval()
    y = bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    v = reference.forward_infer(_nc(x), w, b, rrm, rrv, EPS32)
    rdx, _, rdw, rdb = bn_ref_epilogue.backward_infer(_nc(x), _nc(dy), w, rrm, rrv, EPS32, v, act, alpha)
    np.testing.assert_allclose(y.get(), _cl(bn_ref_epilogue.act_forward(act, v, alpha)), *tol)
    for got, want in ((dx, _cl(rdx)), (bn.weight.grad, rdw), (bn.bias.grad, rdb)):
        np.testing.assert_allclose(got.get(), want, *tol)


@pytest.mark.parametrize("call,match", [
    (lambda bn: bn(gpuarray.to_gpu(np.ones((2, 3, 4, 3), np.float32))), "3 channels on its last axis, the layer 5"),
    (lambda bn: bn(gpuarray.to_gpu(np.ones((2, 5, 4, 3), np.float32))), "3 channels on its last axis"),  # NCHW data
    (lambda bn: bn.backward(gpuarray.to_gpu(np.ones((2, 5, 4, 3), np.float32))), "no forward"),
    (lambda bn: batch_norm(gpuarray.to_gpu(np.ones((2, 4, 3, 3), np.float32)), bn._mean, bn._variance, None, None,
                           training=True, data_format="NHWC"), "running_mean must have 3 elements.*channel axis last"),
    (lambda bn: batch_norm(gpuarray.to_gpu(np.ones((2, 4, 5), np.float32)), bn._mean, bn._variance, bn.weight,
                           bn.bias, training=True, data_format="NCL"), "running_mean must have 4 elements.*axis 1"),
])
def test_paddle_nhwc_bad_input(call, match):
    bn = PaddleBN(5, data_layout="NHWC")
    before = [t.numpy().copy() for t in bn.state_dict().values()]
    with pytest.raises((ValueError, RuntimeError), match=match):
        call(bn)
    for b0, t in zip(before, bn.state_dict().values()):
        np.testing.assert_array_equal(t.numpy(), b0)
    assert bn._saved is None and bn.weight.grad is None


def test_paddle_nhwc_backward_grad_shape(rng):
    x, _, w, b, rm, rv = _inputs(rng, (2, 3, 4, 5))
    bn = _paddle(5, w, b, rm, rv)
    bn(gpuarray.to_gpu(x))
    with pytest.raises(ValueError, match=r"grad must have the input's shape \[2, 3, 4, 5\]"):
        bn.backward(gpuarray.to_gpu(np.ones((2, 5, 3, 4), np.float32)))
    assert bn.weight.grad is None
