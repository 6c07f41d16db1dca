"""cybn.paddle.BatchNorm and functional.batch_norm against PaddlePaddle 3.3.1's own results
(golden/paddle.npz), every case the engine supports (NCHW and NHWC); the others must be refused with EngineFeatureMissing
(or, where Paddle itself refuses, with ValueError) and change nothing."""
import os

import numpy as np
import pytest

from golden_common import load
from golden_compare import assert_close, nrel
from cybn import gpuarray
from cybn.frameworks import EngineFeatureMissing
from cybn.paddle import FUSED, BatchNorm, batch_norm

CASES = load(os.path.join(os.path.dirname(__file__), "golden", "paddle.npz"))
LAYER = sorted(n for n, (p, _) in CASES.items() if not p.get("functional"))
FUNCTIONAL = sorted(n for n, (p, _) in CASES.items() if p.get("functional"))


def needs(p):
    """The missing engine feature a layer case needs, or None."""
    if p.get("error"):
        return None
    if p["act"] is not None and p["act"] not in FUSED:
        return "an activation the core's epilogue lacks"
    return None


# Left out of the golden comparison (refusal asserted in test_unsupported_refused), by needs():
#   act_{gelu,hard_sigmoid,hard_swish,mish,selu,softsign,tanh_shrink}_4d (Paddle runs them, the core's
#   epilogue has no such activation).
# Compared: channels-last (data_layout NHWC of 3-d..5-d input, the core's layout="NHWC"):
#   train_{3,4,5}d_NHWC_m{0.9,0.5,0.99}, eval_{3,4,5}d_NHWC, float64_4d_NHWC, and the functional
#   NLC/NHWC/NDHWC cases;
#   float64_{2,3,4,5}d, float64_eval_4d, act_{relu,relu6,elu,sigmoid,tanh,swish,silu}_4d,
#   act_relu_eval_4d, act_sigmoid_float64_4d (fused activation, its backward through act').
#   (2-d NHWC is channel axis 1.)
# Refused by Paddle itself, and by the face with ValueError: layout_NCL_3d, act_no_such_act_4d,
#   act_leaky_relu_4d, act_softplus_4d (Paddle fails on its own attributes).
# In place: y is compared; the backward after an in-place forward is refused (inplace_4d, see below).
HARD = ["hard_1e4", "hard_1e6"]  # against float64 numpy, in test_hard_inputs_not_worse_than_paddle
SUPPORTED = [n for n in LAYER if needs(CASES[n][0]) is None and not CASES[n][0].get("error") and n not in HARD]
UNSUPPORTED = [n for n in LAYER if needs(CASES[n][0]) is not None]
REFUSED_BY_PADDLE = [n for n in LAYER if CASES[n][0].get("error")]
CHANNELS_LAST = [n for n in SUPPORTED if CASES[n][0]["data_layout"] == "NHWC" and len(CASES[n][0]["shape"]) > 2]


def test_case_counts():
    assert (len(SUPPORTED), len(UNSUPPORTED), len(REFUSED_BY_PADDLE)) == (60, 7, 4)
    assert len(CHANNELS_LAST) == 13 and len(FUNCTIONAL) == 16


def _layer(p, a):
    kw = {k: p[k] for k in ("act", "is_test", "momentum", "epsilon", "dtype", "data_layout", "in_place",
                            "use_global_stats", "trainable_statistics")}
    bn = BatchNorm(p["shape"][-1 if p["data_layout"] == "NHWC" else 1], **kw)
    bn.set_state_dict({"weight": a["gamma"], "bias": a["beta"], "_mean": a["mean0"], "_variance": a["var0"]})
    return bn.train() if p["train"] else bn.eval()


KINDS = {"y": "y", "mean": "stat", "variance": "stat", "dx": "grad", "dgamma": "grad", "dbeta": "grad"}


@pytest.mark.parametrize("name", SUPPORTED)
def test_golden(name):
    p, a = CASES[name]
    bn = _layer(p, a)
    assert list(bn.state_dict()) == p["state_dict_keys"]
    for k in range(p["steps"]):
        x = gpuarray.to_gpu(a[f"x.{k}"])
        r = {"y": bn(x)}
        if p["in_place"]:
            np.testing.assert_array_equal(x.get(), r["y"].get())  # written into the input (Paddle's dygraph: not)
            with pytest.raises(RuntimeError, match="in_place=True"):
                bn.backward(gpuarray.to_gpu(a[f"dy.{k}"]))
        elif p["backward"]:
            r["dx"] = bn.backward(gpuarray.to_gpu(a[f"dy.{k}"]))
            r["dgamma"], r["dbeta"] = bn.weight.grad, bn.bias.grad
            bn.clear_gradients()  # as the generator did: each step's gradients on their own
        r["mean"], r["variance"] = bn._mean.value, bn._variance.value
        for what, got in r.items():
            assert_close(got, a[f"{what}.{k}"], f"{name} step {k} {what}", KINDS[what])


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_refused(name):
    p, a = CASES[name]
    bn = None
    with pytest.raises(EngineFeatureMissing, match="engine does not have yet"):
        bn = _layer(p, a)
        bn(gpuarray.to_gpu(a["x.0"]))
    if bn is not None:  # refused by the forward: the layer is as it was
        np.testing.assert_array_equal(bn._mean.numpy(), a["mean0"])
        np.testing.assert_array_equal(bn._variance.numpy(), a["var0"])
        assert bn._saved is None


@pytest.mark.parametrize("name", REFUSED_BY_PADDLE)
def test_refused_like_paddle(name):
    p, a = CASES[name]
    with pytest.raises(ValueError):
        _layer(p, a)


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_golden(name):
    p, a = CASES[name]
    rm, rv = gpuarray.to_gpu(a["mean0"]), gpuarray.to_gpu(a["var0"])
    y = batch_norm(gpuarray.to_gpu(a["x.0"]), rm, rv, gpuarray.to_gpu(a["gamma"]), gpuarray.to_gpu(a["beta"]),
                   training=p["training"], momentum=p["momentum"], epsilon=p["epsilon"], data_format=p["data_format"],
                   use_global_stats=p["use_global_stats"])
    assert_close(y, a["y.0"], f"{name} y", "y")
    assert_close(rm, a["mean.0"], f"{name} running_mean", "stat")
    assert_close(rv, a["variance.0"], f"{name} running_var", "stat")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", HARD)
def test_hard_inputs_not_worse_than_paddle(name, layout):
    """Offsets 1e4 / 1e6: cybn's float32 error against float64 numpy is no larger than Paddle's own (its
    NCHW run), in NCHW and with the same data transposed to NHWC (the core's channels-last kernels)."""
    p, a = CASES[name]
    nhwc = layout == "NHWC"
    cl = lambda v: np.ascontiguousarray(np.moveaxis(v, 1, -1)) if nhwc else v  # noqa: E731
    back = lambda v: np.moveaxis(v.get(), -1, 1) if nhwc else v  # noqa: E731
    x, dy = a["x.0"].astype(np.float64), a["dy.0"].astype(np.float64)
    axes, eps = (0, 2, 3), p["epsilon"]
    mean, var = x.mean(axes), x.var(axes)
    m4, v4 = mean.reshape(1, -1, 1, 1), var.reshape(1, -1, 1, 1)
    xhat = (x - m4) / np.sqrt(v4 + eps)
    dx = (dy - dy.mean(axes, keepdims=True) - xhat * (dy * xhat).mean(axes, keepdims=True)) / np.sqrt(v4 + eps)
    bn = _layer(dict(p, data_layout=layout, shape=list(cl(a["x.0"]).shape)), a)
    r = {"y": back(bn(gpuarray.to_gpu(cl(a["x.0"]))))}
    r["dx"] = back(bn.backward(gpuarray.to_gpu(cl(a["dy.0"]))))
    r["mean"], r["variance"] = bn._mean.value, bn._variance.value  # momentum 0: the batch statistics
    for what, ref in (("y", xhat), ("dx", dx), ("mean", mean), ("variance", var)):
        theirs, ours = nrel(a[f"{what}.0"], ref), nrel(r[what], ref)
        assert ours <= theirs, f"{name} {what} ({layout}): cybn {ours:.2e} vs Paddle {theirs:.2e}"


def test_gradients_accumulate_until_cleared():
    p, a = CASES["train_4d_NCHW_m0.9"]
    bn = _layer(p, a)
    x, dy = gpuarray.to_gpu(a["x.0"]), gpuarray.to_gpu(a["dy.0"])
    bn(x)
    bn.backward(dy)
    bn.backward(dy)  # Paddle: .grad += this gradient
    assert_close(bn.weight.grad, 2 * a["dgamma.0"], "weight.grad twice", "grad")
    assert_close(bn.bias.grad, 2 * a["dbeta.0"], "bias.grad twice", "grad")
    bn.clear_gradients()
    assert bn.weight.grad is None and bn.bias.grad is None


def test_defaults_and_frozen_parameters():
    bn = BatchNorm(3)
    np.testing.assert_array_equal(bn.weight.numpy(), 1.0)
    np.testing.assert_array_equal(bn.bias.numpy(), 0.0)
    np.testing.assert_array_equal(bn._mean.numpy(), 0.0)
    np.testing.assert_array_equal(bn._variance.numpy(), 1.0)
    assert bn._momentum == float(np.float32(0.9)) and bn.training
    frozen = BatchNorm(3, param_attr=False, bias_attr=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(frozen.bias.numpy(), [1.0, 2.0, 3.0])
    x = gpuarray.to_gpu(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32))
    frozen(x)
    frozen.backward(gpuarray.to_gpu(np.ones((4, 3, 5), np.float32)))
    assert frozen.weight.grad is None and frozen.bias.grad is not None
    assert frozen.parameters() == [frozen.bias]


def _state(bn):
    return [t.numpy().copy() for t in bn.state_dict().values()]


@pytest.mark.parametrize("call,match", [
    (lambda bn: bn(gpuarray.to_gpu(np.ones((4, 5, 2), np.float32))), "5 channels"),
    (lambda bn: bn(gpuarray.to_gpu(np.ones((4, 3, 2), np.float16))), "must be float32"),
    (lambda bn: bn(gpuarray.to_gpu(np.ones((4,), np.float32))), "dimension of input must be >= 2"),
    (lambda bn: bn(np.ones((4, 3, 2), np.float32)), "must be a device array"),
    (lambda bn: bn(gpuarray.to_gpu(np.ones((1, 3, 1), np.float32))), "more than one value per statistic"),
    (lambda bn: bn.set_state_dict({"bias": np.ones(3), "weight": np.ones(4)}), "weight: the value must have shape"),
    (lambda bn: bn.backward(gpuarray.to_gpu(np.ones((4, 3, 2), np.float32))), "no forward"),
    (lambda bn: BatchNorm(3, act="no_such_act"), "unknown act"),
    (lambda bn: BatchNorm(3, data_layout="NCL"), "unknown data layout"),
    (lambda bn: BatchNorm(3, momentum=2), "momentum must be in"),
    (lambda bn: BatchNorm(3, dtype="int32"), "dtype must be"),
    (lambda bn: batch_norm(gpuarray.to_gpu(np.ones((4, 3, 2), np.float32)), bn._mean, bn._variance, None, None,
                           training=True, data_format="NCW"), "data_format must be"),
])
def test_bad_input_raises_and_changes_nothing(call, match):
    bn = BatchNorm(3)
    before = _state(bn)
    with pytest.raises((ValueError, RuntimeError), match=match):
        call(bn)
    for b, a in zip(before, _state(bn)):
        np.testing.assert_array_equal(a, b)
    assert bn.weight.grad is None and bn._saved is None
