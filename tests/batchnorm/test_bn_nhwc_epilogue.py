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
from bn_epilogue_cases import ALPHA, BF16, _close

DTYPES = [np.float32, np.float16, np.float64, pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    BF16 is None, reason="ml_dtypes (the test extra) not installed"))]
ACTS = [None, "relu", "relu6", "clipped_relu", "leaky_relu", "elu", "sigmoid", "tanh", "swish", "silu"]


def _cf(a):
    """(N, *spatial, C) -> (N, C, *spatial): the reference's layout."""
    return None if a is None else np.moveaxis(a, -1, 1)


def _cl(a):
    return np.moveaxis(a, 1, -1)


FROM_Y = ("relu", "leaky_relu", "elu", "sigmoid", "tanh")  # act' read from the forward's output y when given


def _check_grads(outs, ref, residual, dtype, pdt, dy, xhat, rounded):
    """dz and dx at the data type's tolerance; dscale and dbias, P sums over M rows, at P's tolerance plus,
    where act' was read from a y rounded to a half-precision type (`rounded`), the bound that rounding puts
    on them: each term's act' off by at most the type's tolerance t (|d act'/dy| |dy| <= 2 * 2^-9 for
    tanh near |y| = 1), so dscale by t * sum |dy xhat| and dbias by t * sum |dy| per channel."""
    rdx, rdz, rds, rdb = ref
    assert len(outs) == (4 if residual else 3)  # (dx, dz, dscale, dbias) with a residual
    ds, db = outs[-2:]
    for name, got, want in (("dx", outs[0], rdx),) + ((("dz", outs[1], rdz),) if residual else ()):
        _close(name, got, want, dtype)
    rtol, atol = R.tolerances(pdt)
    t = R.tolerances(dtype)[1] if rounded and dtype.itemsize < 4 else 0.0
    axes = tuple(range(dy.ndim - 1))
    for name, got, want, w in (("scale_grad", ds, rds, np.abs(dy * xhat).sum(axes)),
                               ("bias_grad", db, rdb, np.abs(dy).sum(axes))):
        err = np.abs(np.asarray(got.get(), np.float64) - want)
        bound = atol + rtol * np.abs(want) + t * w
        assert np.all(err <= bound), f"{name}: worst {(err / bound).max():.3g} x bound at channel {(err / bound).argmax()}"


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
    dyl, rounded = dy.astype(np.float64), use_y and act in FROM_Y
    xhat = (x.astype(np.float64) - mean) * invstd
    _check_grads(outs, (_cl(rdx), _cl(rdz), rds, rdb), residual, dtype, pdt, dyl, xhat, rounded)

    yi = batchnorm.forward_infer(g(x), g(scale), g(bias), grm, grv, 1e-5, residual=gz, **kw)
    vi = R.forward_infer(x64, scale, bias, rrm, rrv, 1e-5, None, 0.0, z64)
    _close("y_infer", yi, _cl(R.act_forward(act, vi, alpha)), dtype)
    outs = batchnorm.backward_infer(g(x), g(dy), g(scale), grm, grv, 1e-5, y=yi if (use_y and epi) else None,
                                    residual=res_arg, bias=g(bias), **kw)
    rdx, rdz, rds, rdb = R.backward_infer(x64, dy64, scale, rrm, rrv, 1e-5, vi, act, alpha)
    xhat = (x.astype(np.float64) - rrm) / np.sqrt(rrv + 1e-5)
    _check_grads(outs, (_cl(rdx), _cl(rdz), rds, rdb), residual, dtype, pdt, dyl, xhat, rounded)


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
    ((2, 5, 24), {"split": 2}),                   # C = 24: units in every dtype, not a power of two
    ((1, 5, 5, 16), {}),                          # N = 1
    ((1, 9, 13), {"split": 2}),                   # N = 1, odd C, split
    ((2, 3, 512), {}),                            # large C, few rows
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,override", PLANS, ids=[f"{s}-{o}" for s, o in PLANS])
@pytest.mark.parametrize("act,residual", [(None, False), ("relu", True), ("swish", True), ("tanh", False)])
def test_nhwc_epilogue_plans(rng, dtype, shape, override, act, residual):
    with batchnorm.plan_override(**override):
        step(rng, shape, dtype, act, residual)


def _measure(shape, dtype, override, op, act, residual):
    rng = np.random.default_rng(0)
    K = shape[-1]
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    g = gpuarray.to_gpu
    x, z, dy = (g(rng.standard_normal(shape).astype(dtype)) for _ in range(3))
    scale, bias, rm = (g(rng.standard_normal(K).astype(pdt)) for _ in range(3))
    rv = g(rng.uniform(0.5, 2, K).astype(pdt))
    y, sm, si = gpuarray.empty(shape, dtype), gpuarray.empty((K,), pdt), gpuarray.empty((K,), pdt)
    out, dz = gpuarray.empty(shape, dtype), gpuarray.empty(shape, dtype)
    sg, bg = gpuarray.empty((K,), pdt), gpuarray.empty((K,), pdt)
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
@pytest.mark.parametrize("dtype", DTYPES)
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
