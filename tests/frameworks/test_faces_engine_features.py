"""The faces over the core's float64 and fused-activation features, in cases the golden files do not hold
(float64 eval backward, middle channel axes, the functional float64 path, activations in eval mode),
against float64 numpy references written from the documented/measured semantics (peer-semantics.md), NOT
from the frameworks' own output:
- MXNet's eval-mode backward is the training gradient formula with the moving mean and
  1/sqrt(moving_var + eps) in place of the batch statistics: cybn.testing.reference.backward(x, dy, gamma,
  moving_mean, invstd(moving_var)), the formula written from the maths;
- Paddle's epsilon and momentum are float32 attributes (the float64 golden cases match only with
  epsilon rounded to float32), its eval-mode backward through act is act' times the frozen-statistics one:
  cybn.testing.bn_ref_epilogue.backward_infer."""
import numpy as np
import pytest

from cybn import gpuarray
from cybn.frameworks import EngineFeatureMissing
from cybn.mxnet import BatchNorm as mx_bn, MXNetError, autograd
from cybn.paddle import BatchNorm as PaddleBN, batch_norm
from cybn.testing import bn_ref_epilogue, reference

TOL64 = bn_ref_epilogue.tolerances(np.float64)


def _mx_inputs(rng, shape, axis, dtype):
    C = shape[axis]
    return (rng.normal(0.5, 2.0, shape).astype(dtype), rng.normal(0, 1, shape).astype(dtype),
            rng.uniform(0.5, 1.5, C).astype(dtype), rng.normal(0, 0.5, C).astype(dtype),
            rng.normal(0, 0.3, C).astype(dtype), rng.uniform(0.5, 1.5, C).astype(dtype))


def _to_nc(a, axis):
    """a with the channel axis at 1: the last one moved there, a middle one with the axes before it folded
    into N (the face's view)."""
    if axis % a.ndim == a.ndim - 1 and a.ndim > 2:
        return np.moveaxis(a, -1, 1)
    return a if axis == 1 else a.reshape(int(np.prod(a.shape[:axis])), a.shape[axis], -1)


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((2, 3, 4, 5), 2), ((6, 4), 1), ((2, 3, 4, 5), 1),
                                        ((4, 5, 3), -1), ((2, 3, 4, 5), 3)])
@pytest.mark.parametrize("fix_gamma", [False, True])
def test_mxnet_eval_backward_float64(rng, shape, axis, fix_gamma):
    x, dy, g, b, mm, mv = _mx_inputs(rng, shape, axis, np.float64)
    eps, m = 1e-3, 0.9
    dg_, mm_, mv_ = gpuarray.to_gpu(g), gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
    with autograd.record() as tape:
        y = mx_bn(gpuarray.to_gpu(x), dg_, gpuarray.to_gpu(b), mm_, mv_, eps=eps, momentum=m, fix_gamma=fix_gamma,
                  axis=axis, training=False)
    dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
    xs, dys = _to_nc(x, axis), _to_nc(dy, axis)
    scale = np.ones_like(g) if fix_gamma else g
    invstd = 1.0 / np.sqrt(mv + eps)
    rdx, rdg, rdb = reference.backward(xs, dys, scale, mm, invstd)  # the training formula, moving statistics
    np.testing.assert_allclose(_to_nc(y.get(), axis), reference.forward_infer(xs, scale, b, mm, mv, eps),
                               *TOL64)
    np.testing.assert_allclose(_to_nc(dx.get(), axis), rdx, *TOL64)
    np.testing.assert_allclose(dbeta.get(), rdb, *TOL64)
    np.testing.assert_allclose(dgamma.get(), 0.0 if fix_gamma else rdg, *TOL64)
    assert dx.dtype == dgamma.dtype == np.float64
    # the moving statistics move towards themselves: m * v + (1 - m) * v
    m32 = float(np.float32(m))
    np.testing.assert_allclose(mm_.get(), m32 * mm + (1 - m32) * mm, *TOL64)
    np.testing.assert_allclose(mv_.get(), m32 * mv + (1 - m32) * mv, *TOL64)
    # and differs from the frozen-statistics gradient dy * gamma * invstd that Paddle/torch give
    assert np.abs(rdx - reference.backward_infer(xs, dys, scale, mm, mv, eps)[0]).max() > 1e-3


def test_mxnet_global_stats_backward_is_frozen_float64(rng):
    """use_global_stats=True, in training or not: dx = dy * gamma * invstd, nothing moves."""
    x, dy, g, b, mm, mv = _mx_inputs(rng, (4, 3, 5), 1, np.float64)
    for training in (True, False):
        mm_, mv_ = gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
        with autograd.record() as tape:
            y, mean, invstd = mx_bn(gpuarray.to_gpu(x), gpuarray.to_gpu(g), gpuarray.to_gpu(b), mm_, mv_,
                                    fix_gamma=False, use_global_stats=True, output_mean_var=True, training=training)
        dx, dgamma, dbeta = tape.backward(y, gpuarray.to_gpu(dy))
        rdx, rdg, rdb = reference.backward_infer(x, dy, g, mm, mv, 1e-3)
        np.testing.assert_allclose(dx.get(), rdx, *TOL64)
        np.testing.assert_allclose(dgamma.get(), rdg, *TOL64)
        np.testing.assert_allclose(invstd.get(), 1 / np.sqrt(mv + 1e-3), *TOL64)
        assert invstd.dtype == mean.dtype == np.float64
        np.testing.assert_array_equal(mm_.get(), mm)
        np.testing.assert_array_equal(mv_.get(), mv)


@pytest.mark.parametrize("data,param,match", [
    (np.float64, np.float32, "must be float64"),
    (np.float32, np.float64, "must be float32"),
    (np.float16, np.float64, "must be float32"),
    (np.int32, np.float32, "data must be float32, float16, bfloat16 or float64"),
])
def test_mxnet_uniform_type_rule(data, param, match):
    x = gpuarray.to_gpu(np.ones((4, 3, 5), data))
    g, mm, mv = (gpuarray.to_gpu(np.full(3, v, param)) for v in (2.0, 0.0, 1.0))
    b = gpuarray.to_gpu(np.zeros(3, param))
    with autograd.record() as tape:
        with pytest.raises(MXNetError, match=match):
            mx_bn(x, g, b, mm, mv)
    assert tape._saved == []
    np.testing.assert_array_equal(g.get(), 2.0)  # fix_gamma's overwrite did not happen
    np.testing.assert_array_equal(mm.get(), 0.0)


@pytest.mark.parametrize("fmt", ["NC", "NCL", "NCHW", "NCDHW"])
@pytest.mark.parametrize("training", [True, False])
def test_paddle_functional_float64(rng, fmt, training):
    shape = {"NC": (8, 4), "NCL": (4, 3, 5), "NCHW": (2, 3, 4, 5), "NCDHW": (2, 3, 2, 3, 4)}[fmt]
    C = shape[1]
    x = rng.normal(1.0, 2.0, shape)
    w, b, rm, rv = rng.uniform(0.5, 1.5, C), rng.normal(0, 1, C), rng.normal(0, 0.3, C), rng.uniform(0.5, 1.5, C)
    rm_, rv_ = gpuarray.to_gpu(rm), gpuarray.to_gpu(rv)
    y = batch_norm(gpuarray.to_gpu(x), rm_, rv_, gpuarray.to_gpu(w), gpuarray.to_gpu(b), training=training,
                   momentum=0.9, epsilon=1e-5, data_format=fmt)
    eps, m = float(np.float32(1e-5)), float(np.float32(0.9))  # Paddle's float32 attributes
    if training:
        ry, rrm, rrv, mean, invstd = reference.forward_train(x, w, b, rm, rv, eps, 1 - m)
        var_b = 1 / invstd ** 2 - eps
        rrv = m * rv + (1 - m) * var_b  # the biased batch variance
    else:
        ry, rrm, rrv = reference.forward_infer(x, w, b, rm, rv, eps), rm, rv
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.get(), ry, *TOL64)
    np.testing.assert_allclose(rm_.get(), rrm, *TOL64)
    np.testing.assert_allclose(rv_.get(), rrv, *TOL64)


@pytest.mark.parametrize("act,alpha", [("relu", 0.0), ("relu6", 6.0), ("elu", 1.0), ("sigmoid", 0.0), ("tanh", 0.0),
                                       ("swish", 0.0), ("silu", 0.0)])
@pytest.mark.parametrize("mode", ["eval", "trainable_statistics"])
def test_paddle_act_frozen_backward_float64(rng, act, alpha, mode):
    """Eval (and eval with trainable_statistics, whose backward Paddle runs frozen on the running statistics
    the forward left): y = act(bn(x)), dx = act'(v) * dy * weight * invstd(running)."""
    shape, C = (4, 3, 2, 5), 3
    x, dy = rng.normal(0.5, 2.0, shape) * 3, rng.normal(0, 1, shape)  # * 3: values past relu6's ceiling too
    w, b, rm, rv = rng.uniform(0.5, 1.5, C), rng.normal(0, 1, C), rng.normal(0, 0.3, C), rng.uniform(0.5, 1.5, C)
    bn = PaddleBN(C, act=act, dtype="float64", trainable_statistics=mode == "trainable_statistics")
    bn.set_state_dict({"weight": w, "bias": b, "_mean": rm, "_variance": rv})
    bn.eval()
    y = bn(gpuarray.to_gpu(x))
    dx = bn.backward(gpuarray.to_gpu(dy))
    eps = float(np.float32(1e-5))
    if mode == "eval":
        rm_after, rv_after, ry = rm, rv, bn_ref_epilogue.forward_infer(x, w, b, rm, rv, eps, act, alpha)
    else:
        m = float(np.float32(0.9))
        ry, rm_after, _, mean, invstd, _ = bn_ref_epilogue.forward_train(x, w, b, rm, rv, eps, 1 - m, act, alpha)
        rv_after = m * rv + (1 - m) * (1 / invstd ** 2 - eps)
    v = reference.forward_infer(x, w, b, rm_after, rv_after, eps) if mode == "eval" else \
        bn_ref_epilogue.forward_train(x, w, b, rm, rv, eps, 1 - m)[5]
    rdx, _, rdw, rdb = bn_ref_epilogue.backward_infer(x, dy, w, rm_after, rv_after, eps, v, act, alpha)
    np.testing.assert_allclose(y.get(), ry, *TOL64)
    np.testing.assert_allclose(bn._mean.numpy(), rm_after, *TOL64)
    np.testing.assert_allclose(bn._variance.numpy(), rv_after, *TOL64)
    np.testing.assert_allclose(dx.get(), rdx, *TOL64)
    np.testing.assert_allclose(bn.weight.grad.get(), rdw, *TOL64)
    np.testing.assert_allclose(bn.bias.grad.get(), rdb, *TOL64)


def test_paddle_act_in_place(rng):
    x = rng.normal(0, 2, (4, 3, 5)).astype(np.float32)
    bn = PaddleBN(3, act="relu", in_place=True)
    gx = gpuarray.to_gpu(x)
    y = bn(gx)
    ref = bn_ref_epilogue.forward_train(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), float(np.float32(1e-5)),
                                        0.1, "relu")[0]
    np.testing.assert_allclose(y.get(), ref, *bn_ref_epilogue.tolerances(np.float32))
    np.testing.assert_array_equal(gx.get(), y.get())


@pytest.mark.parametrize("act,kind,match", [
    ("gelu", EngineFeatureMissing, "relu, relu6, elu, sigmoid, tanh, swish, silu"),
    ("mish", EngineFeatureMissing, "fused epilogue"),
    ("leaky_relu", ValueError, "Paddle's layer fails"),
    ("softplus", ValueError, "Paddle's layer fails"),
    ("no_such_act", ValueError, "unknown act"),
])
def test_paddle_act_refusals(act, kind, match):
    with pytest.raises(kind, match=match):
        PaddleBN(3, act=act)


def test_paddle_float64_layer_checks_dtype():
    bn = PaddleBN(3, dtype="float64")
    assert bn.weight.dtype == bn._mean.dtype == np.float64
    with pytest.raises(ValueError, match="must be float64 like the layer"):
        bn(gpuarray.to_gpu(np.ones((4, 3, 2), np.float32)))
    np.testing.assert_array_equal(bn._mean.numpy(), 0.0)
    assert bn._saved is None
