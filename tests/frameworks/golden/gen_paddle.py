"""Generate paddle.npz, the golden file of PaddlePaddle's paddle.nn.BatchNorm layer (dygraph, CPU) and of
paddle.nn.functional.batch_norm, from the real framework. Not part of the test suite; run it by hand when a
case is added:

    python3 -m venv /tmp/venv-paddle
    /tmp/venv-paddle/bin/pip install paddlepaddle==3.3.1
    /tmp/venv-paddle/bin/python tests/frameworks/golden/gen_paddle.py

(paddlepaddle 3.3.1's CPU wheel installed and ran on this machine with no extra system package.) Writes
paddle.npz beside this file.

A layer case is a sequence of steps on one layer: y = layer(x); y.backward(dy) (gradients cleared after
each step, so each step's dx/dgamma/dbeta are that step's), recording y, dx, dgamma, dbeta, _mean and
_variance afterwards, and x afterwards (in_place). A case whose construction or forward raises records
the exception's type and first line instead ("error" in its params).
"""
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import HARD_OFFSETS, HARD_SHAPE, SHAPES, STEPS, Writer, channels_last, inputs  # noqa: E402

paddle.set_device("cpu")
LAYER_DEFAULTS = dict(act=None, is_test=False, momentum=0.9, epsilon=1e-5, dtype="float32", data_layout="NCHW",
                      in_place=False, use_global_stats=False, trainable_statistics=False)
# The activations paddle.nn.BatchNorm's act runs in 3.3.1 (any name of paddle's legacy op table; leaky_relu
# and softplus are in the table but fail there for want of their attributes, recorded as errors).
ACTS = ("relu", "sigmoid", "tanh", "relu6", "elu", "swish", "gelu", "hard_sigmoid", "hard_swish", "silu", "mish",
        "selu", "softsign", "tanh_shrink", "leaky_relu", "softplus", "no_such_act")


def _t(a, grad=False):
    return paddle.to_tensor(a, stop_gradient=not grad)


def run_layer(w, name, shape, seed, steps=STEPS, train=True, backward=True, offset=0.0, data=None, **kw):
    params = dict(LAYER_DEFAULTS, **kw)
    cl = params["data_layout"] == "NHWC"
    dtype = np.dtype(params["dtype"])
    d = inputs(seed, shape, -1 if cl else 1, dtype=dtype, steps=steps, offset=offset) if data is None else data
    meta = dict(params, shape=list(shape), steps=steps, train=train, backward=backward)
    rec = {}
    try:
        bn = paddle.nn.BatchNorm(shape[-1 if cl else 1], **params)
        bn.weight.set_value(d["gamma"])
        bn.bias.set_value(d["beta"])
        bn._mean.set_value(d["mean0"])
        bn._variance.set_value(d["var0"])
        bn.train() if train else bn.eval()
        for k in range(steps):
            x = _t(d[f"x.{k}"], backward)
            y = bn(x)
            if backward:
                y.backward(_t(d[f"dy.{k}"]))
                rec[f"dx.{k}"] = x.grad.numpy()
                rec[f"dgamma.{k}"] = bn.weight.grad.numpy()
                rec[f"dbeta.{k}"] = bn.bias.grad.numpy()
                bn.clear_gradients()
            rec[f"y.{k}"] = y.numpy()
            rec[f"x_after.{k}"] = x.numpy()
            rec[f"mean.{k}"] = bn._mean.numpy()
            rec[f"variance.{k}"] = bn._variance.numpy()
        meta["state_dict_keys"] = list(bn.state_dict().keys())
    except Exception as e:  # noqa: BLE001 - the framework's refusal is the golden result
        meta["error"] = [type(e).__name__, str(e).strip().splitlines()[0][:200]]
        rec = {}
    w.add(name, meta, {**d, **rec})
    return d, rec


def run_functional(w, name, shape, seed, data_format, training, use_global_stats=None, momentum=0.9, eps=1e-5):
    cl = not data_format.startswith("NC")
    d = inputs(seed, shape, -1 if cl else 1, steps=1)
    rm, rv = _t(d["mean0"]), _t(d["var0"])
    x = _t(d["x.0"], True)
    weight, bias = _t(d["gamma"], True), _t(d["beta"], True)
    y = F.batch_norm(x, rm, rv, weight, bias, training=training, momentum=momentum, epsilon=eps,
                     data_format=data_format, use_global_stats=use_global_stats)
    y.backward(_t(d["dy.0"]))
    rec = {"y.0": y.numpy(), "dx.0": x.grad.numpy(), "dgamma.0": weight.grad.numpy(),
           "dbeta.0": bias.grad.numpy(), "mean.0": rm.numpy(), "variance.0": rv.numpy()}
    w.add(name, dict(shape=list(shape), data_format=data_format, training=training,
                     use_global_stats=use_global_stats, momentum=momentum, epsilon=eps, functional=True), {**d, **rec})


def main():
    w = Writer()
    seed = 1000
    for nd, shape in SHAPES.items():
        for layout in ("NCHW", "NHWC"):  # the layer takes these two names for every rank (NHWC: channel last)
            shp = shape if layout == "NCHW" else channels_last(shape)
            tag = f"{nd}d_{layout}"
            for m in (0.9, 0.5, 0.99):
                seed += 1
                run_layer(w, f"train_{tag}_m{m}", shp, seed, momentum=m, data_layout=layout)
            seed += 1
            run_layer(w, f"eval_{tag}", shp, seed, steps=1, train=False, data_layout=layout)
        seed += 1
        run_layer(w, f"globalstats_{nd}d", shape, seed, steps=2, use_global_stats=True)
        seed += 1
        run_layer(w, f"trainstats_eval_{nd}d", shape, seed, steps=2, train=False, trainable_statistics=True)
        seed += 1
        run_layer(w, f"float64_{nd}d", shape, seed, dtype="float64")
    run_layer(w, "float64_4d_NHWC", channels_last(SHAPES[4]), 1100, dtype="float64", data_layout="NHWC")
    run_layer(w, "float64_eval_4d", SHAPES[4], 1101, steps=1, train=False, dtype="float64")
    run_layer(w, "inplace_4d", SHAPES[4], 1102, steps=2, in_place=True)
    run_layer(w, "inplace_eval_4d", SHAPES[4], 1103, steps=1, train=False, in_place=True)
    run_layer(w, "is_test_4d", SHAPES[4], 1104, steps=1, is_test=True)  # dygraph: no effect
    run_layer(w, "fwdonly_4d", SHAPES[4], 1105, steps=2, backward=False)
    run_layer(w, "trainstats_train_4d", SHAPES[4], 1106, steps=1, trainable_statistics=True)
    run_layer(w, "layout_NCL_3d", SHAPES[3], 1107, steps=1, data_layout="NCL")  # the layer refuses it
    for i, act in enumerate(ACTS):
        run_layer(w, f"act_{act}_4d", SHAPES[4], 1200 + i, steps=1, act=act)
    run_layer(w, "act_relu_eval_4d", SHAPES[4], 1250, steps=1, train=False, act="relu")
    run_layer(w, "act_sigmoid_float64_4d", SHAPES[4], 1251, steps=1, act="sigmoid", dtype="float64")
    fmts = {2: ("NC",), 3: ("NCL", "NLC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}
    for nd, names in fmts.items():
        for f in names:
            shp = SHAPES[nd] if f.startswith("NC") else channels_last(SHAPES[nd])
            run_functional(w, f"functional_train_{f}", shp, 1300 + nd, f, True)
            run_functional(w, f"functional_eval_{f}", shp, 1310 + nd, f, False)
    run_functional(w, "functional_globalstats_NCHW", SHAPES[4], 1320, "NCHW", True, use_global_stats=True)
    run_functional(w, "functional_m0.5_NCHW", SHAPES[4], 1321, "NCHW", True, momentum=0.5)
    for off in HARD_OFFSETS:
        d = inputs(300, HARD_SHAPE, 1, steps=1, offset=off)
        d["gamma"][:] = 1
        d["beta"][:] = 0
        d["mean0"][:] = 0
        d["var0"][:] = 1
        run_layer(w, f"hard_{off:.0e}".replace("+0", ""), HARD_SHAPE, 0, steps=1, data=d, momentum=0.0)
    w.save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "paddle.npz"))


if __name__ == "__main__":
    main()
