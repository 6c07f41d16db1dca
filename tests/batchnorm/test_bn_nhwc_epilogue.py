"""Channels-last (layout="NHWC") with every dtype x activation x residual: forward_train, backward,
forward_infer and backward_infer against float64 references from the maths (cybn.testing.bn_ref_epilogue on
the same data moved to channels-first: BatchNorm's maths do not depend on where the channel axis lies), at
fused, cached, uncached and split plans, 16-byte units and element loads (odd C, C = 1), 1-d to 3-d data;
and the counters: in channels-last too, the activation moves no byte, a residual adds exactly one read of z
forward and one write of dz backward."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray, softgpu
from cybn.testing import bn_ref_epilogue as R
from bn_epilogue_cases import ALPHA, BF16, _check_grads, _close

DTYPES = [np.float32, np.float16, np.float64, pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    BF16 is None, reason="ml_dtypes (the test extra) not installed"))]
ACTS = [None, "relu", "relu6", "clipped_relu", "leaky_relu", "elu", "sigmoid", "tanh", "swish", "silu"]


def _cf(a):
    """(N, *spatial, C) -> (N, C, *spatial): the reference's layout."""
    return None if a is None else np.moveaxis(a, -1, 1)


def _cl(a):
    return np.moveaxis(a, 1, -1)


def step(rng, shape, dtype, act, residual, use_y=True):
    """The four calls in channels-last with activation `act` and a residual (bool), every output checked."""
    dtype = np.dtype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    K = shape[-1]
    alpha = ALPHA.get(act, 0.0)
    x = (rng.standard_normal(shape) * 1.5).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype) if residual else None
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias = rng.uniform(0.5, 1.5, K).astype(pdt), rng.standard_normal(K).astype(pdt)
    rm, rv = rng.standard_normal(K).astype(pdt), rng.uniform(0.5, 2.0, K).astype(pdt)
    g = gpuarray.to_gpu
    gz = None if z is None else g(z)
    grm, grv = g(rm), g(rv)
    x64, z64, dy64 = _cf(x.astype(np.float64)), _cf(None if z is None else z.astype(np.float64)), _cf(dy.astype(np.float64))
    kw = dict(layout="NHWC", activation=act, activation_alpha=alpha)

    y, sm, si = batchnorm.forward_train(g(x), g(scale), g(bias), grm, grv, 1e-5, 0.1, residual=gz, **kw)
    ry, rrm, rrv, mean, invstd, v = R.forward_train(x64, scale, bias, rm, rv, 1e-5, 0.1, act, alpha, z64)
    assert y.dtype == dtype and y.shape == shape and sm.dtype == pdt and si.dtype == pdt
    for name, got, ref in (("y", y, _cl(ry)), ("save_mean", sm, mean), ("save_invstd", si, invstd),
                           ("running_mean", grm, rrm), ("running_var", grv, rrv)):
        _close(name, got, ref, dtype if name == "y" else pdt)

    epi = act is not None or residual
    recompute = act is not None and (not use_y or act in ("swish", "silu", "relu6", "clipped_relu"))
    res_arg = (gz if recompute else True) if residual else False
    outs = batchnorm.backward(g(x), g(dy), g(scale), sm, si, y=y if (use_y and epi) else None, residual=res_arg,
                              bias=g(bias), **kw)
    rdx, rdz, rds, rdb = R.backward(x64, dy64, scale, mean, invstd, v, act, alpha)
    _check_grads(outs, (_cl(rdx), _cl(rdz), rds, rdb), residual, dtype, pdt)

    yi = batchnorm.forward_infer(g(x), g(scale), g(bias), grm, grv, 1e-5, residual=gz, **kw)
    vi = R.forward_infer(x64, scale, bias, rrm, rrv, 1e-5, None, 0.0, z64)
    _close("y_infer", yi, _cl(R.act_forward(act, vi, alpha)), dtype)
    outs = batchnorm.backward_infer(g(x), g(dy), g(scale), grm, grv, 1e-5, y=yi if (use_y and epi) else None,
                                    residual=res_arg, bias=g(bias), **kw)
    rdx, rdz, rds, rdb = R.backward_infer(x64, dy64, scale, rrm, rrv, 1e-5, vi, act, alpha)
    _check_grads(outs, (_cl(rdx), _cl(rdz), rds, rdb), residual, dtype, pdt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", [False, True])
def test_nhwc_epilogue_matrix(rng, dtype, act, residual):
    step(rng, (3, 4, 4, 8), dtype, act, residual)  # C = 8: 16-byte units in every dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "elu"])
def test_nhwc_backward_recomputes_without_y(rng, dtype, act):
    step(rng, (4, 5, 8), dtype, act, True, use_y=False)


PLANS = [
    ((2, 6, 6, 16), {}),                          # fused, every row cached
    ((2, 6, 6, 16), {"cache": 0}),                # fused, no cache: the replay reloads and recomputes g
    ((4, 8, 8, 8), {"cache": 1, "group": 4}),     # part cached, part recomputed
    ((4, 8, 8, 8), {"split": 3}),                 # split: partials, last-CTA combine, second launches
    ((3, 5, 7), {}),                              # odd C: element loads
    ((3, 5, 7), {"split": 2}),
    ((6, 4, 1), {"split": 2}),                    # C = 1, split
    ((2, 3, 2, 2, 6), {}),                        # 3-d (N, D, H, W, C), C not a power of two
    ((2, 3, 512), {}),                            # large C, few rows
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,override", PLANS, ids=[f"{s}-{o}" for s, o in PLANS])
@pytest.mark.parametrize("act,residual", [("relu", True), ("swish", True), ("tanh", False)])
def test_nhwc_epilogue_plans(rng, dtype, shape, override, act, residual):
    with batchnorm.plan_override(**override):
        step(rng, shape, dtype, act, residual)


def _measure(shape, dtype, override, op, act, residual):
    rng = np.random.default_rng(0)
    K = shape[-1]
    g = gpuarray.to_gpu
    x, z, dy = (g(rng.standard_normal(shape).astype(dtype)) for _ in range(3))
    scale, bias, rm = (g(rng.standard_normal(K).astype(np.float32)) for _ in range(3))
    rv = g(rng.uniform(0.5, 2, K).astype(np.float32))
    y, sm, si = gpuarray.empty(shape, dtype), gpuarray.empty((K,), np.float32), gpuarray.empty((K,), np.float32)
    out, dz = gpuarray.empty(shape, dtype), gpuarray.empty(shape, dtype)
    sg, bg = gpuarray.empty((K,), np.float32), gpuarray.empty((K,), np.float32)
    kw = dict(layout="NHWC", activation=act)
    with batchnorm.plan_override(**override):
        batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=y, save_mean=sm, save_invstd=si,
                                residual=z if residual else None, **kw)  # compiles, and the saved statistics
        with softgpu.measure() as m:
            if op == "forward_train":
                batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=out, save_mean=sm, save_invstd=si,
                                        residual=z if residual else None, **kw)
            elif op == "forward_infer":
                batchnorm.forward_infer(x, scale, bias, rm, rv, 1e-5, out=out, residual=z if residual else None, **kw)
            else:
                batchnorm.backward(x, dy, scale, sm, si, out=out, scale_grad=sg, bias_grad=bg,
                                   y=y if (act or residual) else None, residual=residual,
                                   grad_residual=dz if residual else None, **kw)
    return m.load_bytes, m.store_bytes, m.launches_count


@pytest.mark.parametrize("shape,override", [((4, 8, 8, 16), {}), ((4, 8, 8, 16), {"split": 3}), ((4, 6, 7), {})],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nhwc_residual_adds_one_read_forward_one_write_backward(shape, override, dtype):
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    for op in ("forward_train", "forward_infer"):
        plain = _measure(shape, dtype, override, op, None, False)
        act = _measure(shape, dtype, override, op, "relu", False)
        res = _measure(shape, dtype, override, op, "relu", True)
        assert act == plain, (op, act, plain)  # the activation itself moves nothing
        assert res == (plain[0] + nbytes, plain[1], plain[2]), (op, res, plain)  # + one read of z
    act = _measure(shape, dtype, override, "backward", "relu", False)
    res = _measure(shape, dtype, override, "backward", "relu", True)
    assert res == (act[0], act[1] + nbytes, act[2]), (res, act)  # + one write of dz, same launches
