"""fix_gamma=True (MXNet's): the scale is 1 and not read, its gradient is written 0 (beta * old with
cuDNN's accumulation), in every plan, layout, dtype and through the fused epilogue, against the float64
reference of the same BatchNorm with scale = 1 (cybn.testing)."""
import ml_dtypes
import numpy as np
import pytest

import cybn
from cybn import batchnorm
from cybn.testing import bn_ref_epilogue as epi, reference_nhwc as nhwc

BF16 = np.dtype(ml_dtypes.bfloat16)
GARBAGE = 7.0  # the scale array a fix_gamma call is given: never read, so it changes nothing


def gpu(a):
    return cybn.to_gpu(np.ascontiguousarray(a))


def inputs(rng, shape, dtype, K):
    p = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    bias = rng.standard_normal(K).astype(p)
    rm, rv = (0.1 * rng.standard_normal(K)).astype(p), rng.uniform(0.5, 2.0, K).astype(p)
    return x, dy, bias, rm, rv, p


def close(got, want, dtype, what, stats=False):
    rtol, atol = epi.tolerances(dtype)
    if stats and np.dtype(dtype) in (np.float16, BF16):
        rtol = atol = 2e-3  # statistics and gradients of rounded data, reduced in float32
    want = np.asarray(want, np.float64).ravel()
    np.testing.assert_allclose(np.asarray(got, np.float64).ravel(), want, rtol=rtol,
                               atol=atol * max(1.0, np.abs(want).max()), err_msg=what)


CASES = [((4, 3, 5, 6), "spatial", {}), ((2, 3, 40, 41), "spatial", dict(group=64, split=5, cache=0)),
         ((9, 5), "per_activation", {}), ((6, 3, 4), "per_activation", dict(split=3))]


@pytest.mark.parametrize("shape, mode, plan", CASES, ids=["spatial", "spatial-split", "per_act", "per_act-split"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64], ids=str)
@pytest.mark.parametrize("given", [None, GARBAGE], ids=["scale-None", "scale-ignored"])
def test_fix_gamma_train_and_infer(rng, shape, mode, plan, dtype, given):
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    x, dy, bias, rm, rv, p = inputs(rng, shape, dtype, K)
    scale = None if given is None else gpu(np.full(K, given, p))
    ones = np.ones(K)
    g_rm, g_rv = gpu(rm), gpu(rv)
    with batchnorm.plan_override(**plan):
        y, sm, si = batchnorm.forward_train(gpu(x), scale, gpu(bias), g_rm, g_rv, 1e-3, 0.25, mode=mode,
                                            fix_gamma=True)
        dx, sg, bg = batchnorm.backward(gpu(x), gpu(dy), scale, sm, si, mode=mode, fix_gamma=True)
        yi = batchnorm.forward_infer(gpu(x), scale, gpu(bias), g_rm, g_rv, 1e-3, mode=mode, fix_gamma=True)
        dxi, sgi, bgi = batchnorm.backward_infer(gpu(x), gpu(dy), scale, g_rm, g_rv, 1e-3, mode=mode,
                                                 fix_gamma=True)
    wy, wrm, wrv, mean, invstd, v = epi.forward_train(x, ones, bias, rm, rv, 1e-3, 0.25, mode=mode)
    wdx, _, wsg, wbg = epi.backward(x, dy, ones, mean, invstd, v, mode=mode)
    assert np.abs(wsg).max() > 0.1  # the gradient a free scale would get: the zeros below are not a coincidence
    close(y.get(), wy, dtype, "y")
    close(g_rm.get(), wrm, dtype, "running_mean", True)
    close(dx.get(), wdx, dtype, "dx")
    close(bg.get(), wbg, dtype, "bias_grad", True)
    np.testing.assert_array_equal(sg.get(), np.zeros(K))
    wyi = epi.forward_infer(x, ones, bias, wrm, wrv, 1e-3, mode=mode)
    vi = wyi
    wdxi, _, _, wbgi = epi.backward_infer(x, dy, ones, wrm, wrv, 1e-3, vi, mode=mode)
    close(yi.get(), wyi, dtype, "y_infer")
    close(dxi.get(), wdxi, dtype, "dx_infer")
    close(bgi.get(), wbgi, dtype, "bias_grad_infer", True)
    np.testing.assert_array_equal(sgi.get(), np.zeros(K))


@pytest.mark.parametrize("plan", [{}, dict(group=64, split=5, cache=0)], ids=["fused", "split"])
def test_fix_gamma_accumulates_beta_times_old_and_batch_grads(rng, plan):
    shape, K = (2, 3, 40, 41), 3
    x, dy, bias, rm, rv, _ = inputs(rng, shape, np.float32, K)
    old_sg, old_bg = rng.standard_normal(K).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    sg, bg = gpu(old_sg), gpu(old_bg)
    bsg, bbg = gpu(np.full(K, np.nan, np.float32)), cybn.zeros(K)
    with batchnorm.plan_override(**plan):
        _, sm, si = batchnorm.forward_train(gpu(x), None, gpu(bias), gpu(rm), gpu(rv), 1e-3, 0.25, fix_gamma=True)
        batchnorm.backward(gpu(x), gpu(dy), None, sm, si, scale_grad=sg, bias_grad=bg, scale_grad_alpha=0.5,
                           scale_grad_beta=0.9, bias_grad_alpha=0.5, bias_grad_beta=0.9, batch_grads=(bsg, bbg),
                           fix_gamma=True)
    wbg = dy.astype(np.float64).sum((0, 2, 3))
    np.testing.assert_allclose(sg.get(), 0.9 * old_sg.astype(np.float64), rtol=1e-6)  # beta * old + alpha * 0
    np.testing.assert_allclose(bg.get(), 0.5 * wbg + 0.9 * old_bg, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(bsg.get(), np.zeros(K))  # the plain batch dscale is 0 too (NaN overwritten)
    np.testing.assert_allclose(bbg.get(), wbg, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act, alpha, keep_y", [("relu", 0.0, True), ("swish", 0.0, False), ("elu", 1.0, False)])
def test_fix_gamma_through_the_fused_epilogue(rng, act, alpha, keep_y):
    """The backward recomputes v = bn(x) * 1 + bias (+ z) where it needs it: with the fixed scale."""
    shape, K = (3, 4, 5, 6), 4
    x, dy, bias, rm, rv, _ = inputs(rng, shape, np.float32, K)
    z = rng.standard_normal(shape).astype(np.float32)
    ones, scale = np.ones(K), gpu(np.full(K, GARBAGE, np.float32))
    y, sm, si = batchnorm.forward_train(gpu(x), scale, gpu(bias), gpu(rm), gpu(rv), 1e-3, 0.25, activation=act,
                                        activation_alpha=alpha, residual=gpu(z), fix_gamma=True)
    dx, dz, sg, bg = batchnorm.backward(gpu(x), gpu(dy), scale, sm, si, activation=act, activation_alpha=alpha,
                                        y=y if keep_y else None, residual=gpu(z), bias=gpu(bias), fix_gamma=True)
    wy, _, _, mean, invstd, v = epi.forward_train(x, ones, bias, rm, rv, 1e-3, 0.25, act, alpha, z)
    wdx, wdz, _, wbg = epi.backward(x, dy, ones, mean, invstd, v, act, alpha)
    for name, got, want in (("y", y, wy), ("dx", dx, wdx), ("dz", dz, wdz), ("bias_grad", bg, wbg)):
        close(got.get(), want, np.float32, name)
    np.testing.assert_array_equal(sg.get(), np.zeros(K))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("plan", [{}, dict(split=3)], ids=["auto", "split3"])
def test_fix_gamma_channels_last(rng, dtype, plan):
    shape, C = (4, 5, 6, 8), 8
    x, dy, bias, rm, rv, _ = inputs(rng, shape, dtype, C)
    g_rm, g_rv = gpu(rm), gpu(rv)
    with batchnorm.plan_override(**plan):
        y, sm, si = batchnorm.forward_train(gpu(x), None, gpu(bias), g_rm, g_rv, 1e-3, 0.25, layout="NHWC",
                                            fix_gamma=True)
        dx, sg, bg = batchnorm.backward(gpu(x), gpu(dy), None, sm, si, layout="NHWC", fix_gamma=True)
        dxi, sgi, _ = batchnorm.backward_infer(gpu(x), gpu(dy), None, g_rm, g_rv, 1e-3, layout="NHWC",
                                               fix_gamma=True)
    wy, wrm, wrv, mean, invstd = nhwc.forward_train(x, None, bias, rm, rv, 1e-3, 0.25)
    wdx, _, _ = nhwc.backward(x, dy, None, mean, invstd)
    wdxi, _, _ = nhwc.backward_infer(x, dy, None, wrm, wrv, 1e-3)
    close(y.get(), wy, dtype, "y")
    close(dx.get(), wdx, dtype, "dx")
    close(dxi.get(), wdxi, dtype, "dx_infer")
    np.testing.assert_array_equal(sg.get(), np.zeros(C))
    np.testing.assert_array_equal(sgi.get(), np.zeros(C))


def test_default_and_false_read_the_scale(rng):
    """Control: without fix_gamma the same call reads the scale (7) and writes its real gradient."""
    shape, K = (4, 3, 5), 3
    x, dy, bias, rm, rv, _ = inputs(rng, shape, np.float32, K)
    scale = gpu(np.full(K, GARBAGE, np.float32))
    y, sm, si = batchnorm.forward_train(gpu(x), scale, gpu(bias), gpu(rm), gpu(rv), 1e-3, 0.25, fix_gamma=False)
    _, sg, _ = batchnorm.backward(gpu(x), gpu(dy), scale, sm, si)
    wy, _, _, mean, invstd, v = epi.forward_train(x, np.full(K, GARBAGE), bias, rm, rv, 1e-3, 0.25)
    close(y.get(), wy, np.float32, "y")
    assert np.abs(sg.get()).max() > 0.1


def test_fix_gamma_is_checked_and_a_bad_value_changes_nothing(rng):
    x, _, bias, rm, rv, _ = inputs(rng, (4, 3, 5), np.float32, 3)
    g_rm = gpu(rm)
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="fix_gamma must be True or False"):
            batchnorm.forward_train(gpu(x), None, gpu(bias), g_rm, gpu(rv), 1e-3, 0.25, fix_gamma=bad)
    np.testing.assert_array_equal(g_rm.get(), rm)
    with pytest.raises(TypeError, match="fix_gamma must be True or False"):
        batchnorm.backward(gpu(x), gpu(x), None, gpu(rm), gpu(rv), fix_gamma=0)
    # without fix_gamma the pair rule stands: a bias without a scale is refused
    with pytest.raises(TypeError, match="scale and bias must both be given"):
        batchnorm.forward_train(gpu(x), None, gpu(bias), g_rm, gpu(rv), 1e-3, 0.25)
