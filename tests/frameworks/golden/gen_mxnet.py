"""Generate mxnet.npz, the golden file of MXNet's BatchNorm operator (mx.nd.BatchNorm + autograd), from the
real framework. Not part of the test suite; run it by hand when a case is added:

    python3 -m venv /tmp/venv-mxnet
    /tmp/venv-mxnet/bin/pip install mxnet==1.9.1 'numpy<1.24'
    /tmp/venv-mxnet/bin/python tests/frameworks/golden/gen_mxnet.py

(mxnet 1.9.1's manylinux wheel installed and ran on this Debian machine with no extra system package; on
a system without them, libquadmath0 and libgfortran5 come from apt-get.) Writes mxnet.npz beside this file.

A case is a sequence of steps on the same gamma/beta/moving statistics. Each step is what an MXNet user
writes: `with autograd.record(train_mode=...)`: out = mx.nd.BatchNorm(...); then y.backward(dy) (unless
the case is forward-only), recording y, dx, dgamma, dbeta, the moving statistics and gamma afterwards
(and mean/invstd with output_mean_var). Eval without backward runs outside autograd.record.
"""
import os
import sys

import numpy as np
import mxnet as mx
from mxnet import autograd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import HARD_OFFSETS, HARD_SHAPE, SHAPES, STEPS, Writer, channels_last, inputs  # noqa: E402

DEFAULTS = dict(eps=1e-3, momentum=0.9, fix_gamma=True, use_global_stats=False, output_mean_var=False, axis=1)


def run_case(w, name, shape, seed, steps=STEPS, train=True, backward=True, dtype=np.float32, offset=0.0,
             data=None, **op):
    params = dict(DEFAULTS, **op)
    ax = params["axis"]
    pdtype = np.float32 if dtype == np.float16 else dtype  # MXNet: fp16 data needs fp32 parameters
    d = inputs(seed, shape, ax, dtype=pdtype, steps=steps, offset=offset) if data is None else data
    for k in range(steps):
        d[f"x.{k}"] = d[f"x.{k}"].astype(dtype)
        d[f"dy.{k}"] = d[f"dy.{k}"].astype(dtype)
    G = mx.nd.array(d["gamma"], dtype=pdtype)
    B = mx.nd.array(d["beta"], dtype=pdtype)
    MM = mx.nd.array(d["mean0"], dtype=pdtype)
    MV = mx.nd.array(d["var0"], dtype=pdtype)
    G.attach_grad()
    B.attach_grad()
    rec = {}
    for k in range(steps):
        X = mx.nd.array(d[f"x.{k}"], dtype=dtype)
        X.attach_grad()
        if backward:
            with autograd.record(train_mode=train):
                out = mx.nd.BatchNorm(X, G, B, MM, MV, **params)
            y = out[0] if params["output_mean_var"] else out
            y.backward(mx.nd.array(d[f"dy.{k}"], dtype=dtype))
            rec[f"dx.{k}"] = X.grad.asnumpy()
            rec[f"dgamma.{k}"] = G.grad.asnumpy()
            rec[f"dbeta.{k}"] = B.grad.asnumpy()
        elif train:  # a training forward with no backward
            with autograd.record(train_mode=True):
                out = mx.nd.BatchNorm(X, G, B, MM, MV, **params)
        else:
            out = mx.nd.BatchNorm(X, G, B, MM, MV, **params)
        if params["output_mean_var"]:
            rec[f"y.{k}"], rec[f"mean.{k}"], rec[f"invstd.{k}"] = (o.asnumpy() for o in out)
        else:
            rec[f"y.{k}"] = out.asnumpy()
        rec[f"moving_mean.{k}"] = MM.asnumpy()
        rec[f"moving_var.{k}"] = MV.asnumpy()
        rec[f"gamma.{k}"] = G.asnumpy()
    meta = dict(params, shape=list(shape), dtype=np.dtype(dtype).name, steps=steps, train=train,
                backward=backward)
    w.add(name, meta, {**d, **rec})
    return d, rec


def hard_error(d, rec, eps):
    """The framework's float32 error against float64 numpy, as the golden test computes it again."""
    x = d["x.0"].astype(np.float64)
    dy = d["dy.0"].astype(np.float64)
    axes = (0, 2, 3)
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    dx = (dy - dy.mean(axes, keepdims=True) - xhat * (dy * xhat).mean(axes, keepdims=True)) / np.sqrt(var + eps)
    nrel = lambda a, r: float(np.abs(a - r).max() / np.abs(r).max())  # noqa: E731
    return {"err_y": nrel(rec["y.0"], xhat), "err_dx": nrel(rec["dx.0"], dx),
            "err_mean": float(np.abs(rec["mean.0"] - mean.ravel()).max() / np.abs(mean).max())}


def main():
    w = Writer()
    seed = 100
    for nd, shape in SHAPES.items():
        for layout, axis in (("first", 1), ("last", -1)):
            shp = shape if axis == 1 else channels_last(shape)
            for m in (0.9, 0.5, 0.99):
                seed += 1
                run_case(w, f"train_{nd}d_{layout}_m{m}", shp, seed, momentum=m, fix_gamma=False, axis=axis)
            seed += 1
            run_case(w, f"eval_{nd}d_{layout}", shp, seed, steps=1, train=False, backward=False,
                     fix_gamma=False, axis=axis)
            seed += 1
            run_case(w, f"evalbwd_{nd}d_{layout}", shp, seed, steps=1, train=False, fix_gamma=False, axis=axis)
        seed += 1
        run_case(w, f"fixgamma_{nd}d", shape, seed, steps=2)  # the operator's default fix_gamma=True
        seed += 1
        run_case(w, f"globalstats_{nd}d", shape, seed, steps=2, use_global_stats=True, fix_gamma=False)
        seed += 1
        run_case(w, f"meanvar_{nd}d", shape, seed, steps=2, output_mean_var=True, fix_gamma=False)
    # Another channel axis than 1 / -1 (4-d, channel at axis 2), and axis=3 written positively.
    run_case(w, "train_4d_axis2", (4, 5, 3, 4), 201, fix_gamma=False, axis=2)
    run_case(w, "train_4d_axis3", channels_last(SHAPES[4]), 202, fix_gamma=False, axis=3)
    run_case(w, "meanvar_eval_4d", SHAPES[4], 203, steps=1, train=False, backward=False, output_mean_var=True,
             fix_gamma=False)
    run_case(w, "meanvar_globalstats_4d", SHAPES[4], 204, steps=1, output_mean_var=True, use_global_stats=True,
             fix_gamma=False)
    run_case(w, "fwdonly_4d", SHAPES[4], 205, steps=2, backward=False, fix_gamma=False)
    run_case(w, "fixgamma_eval_4d", SHAPES[4], 206, steps=1, train=False)
    run_case(w, "eps1e-5_4d", SHAPES[4], 207, eps=1e-5, fix_gamma=False)
    run_case(w, "float16_4d", SHAPES[4], 208, dtype=np.float16, fix_gamma=False)
    run_case(w, "float16_eval_4d", SHAPES[4], 209, steps=1, train=False, backward=False, dtype=np.float16,
             fix_gamma=False)
    run_case(w, "float64_4d", SHAPES[4], 210, dtype=np.float64, fix_gamma=False)
    run_case(w, "float64_last_4d", channels_last(SHAPES[4]), 211, dtype=np.float64, fix_gamma=False, axis=-1)
    for off in HARD_OFFSETS:
        d = inputs(300, HARD_SHAPE, 1, steps=1, offset=off)
        d["gamma"][:] = 1
        d["beta"][:] = 0
        name = f"hard_{off:.0e}".replace("+0", "")
        d, rec = run_case(w, name, HARD_SHAPE, 0, steps=1, data=d, output_mean_var=True, fix_gamma=False,
                          momentum=0.0)
        err = hard_error(d, rec, DEFAULTS["eps"])
        w.add(name + "_err", {"of": name}, err)
        print(name, err)
    w.save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mxnet.npz"))


if __name__ == "__main__":
    main()
