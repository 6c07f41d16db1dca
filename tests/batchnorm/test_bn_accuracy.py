"""Elementwise accuracy of a training step (forward_train, then backward from its saved statistics) in units
of the output dtype's ulps, against the float64 reference of the maths, for data centred at 0 and at large
offsets, on every plan: one CTA per channel (fused), split over CTAs, per-activation (fused and split), and
N = 1 (each channel one row: 16-byte units between a scalar head and tail).

Bounds asserted (the measured maxima, 2026-12-01, are in the README):
- y: within Y_ULPS ulps of max(|y|, |bias|) elementwise (outputs near the bias keep their own precision);
- dx: within DX_ULPS ulps of the channel's max |dx|;
- dscale, dbias: within 1e-6 relative of the reference.
float16 data: y and dx within FP16_ULPS of the fp16 ulp (the float32 result rounded once to fp16).
Offsets for float16 stop at 1e3: at 1e4 unit-variance data rounds to a constant (fp16 spacing 8 there),
and 1e6, 1e7 are beyond its range (65504)."""
import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import gpu
from cybn import batchnorm

Y_ULPS, DX_ULPS, GRAD_REL, FP16_ULPS = 6.0, 4.0, 1e-6, 0.51

PLANS = {
    "fused": ((8, 4, 16, 16), "spatial", {}),
    "fused-long-walk": ((16, 2, 32, 32), "spatial", {"group": 32}),   # 128 units per thread, replayed
    "split": ((8, 4, 16, 16), "spatial", {"split": 4}),
    "per-activation": ((256, 24), "per_activation", {}),
    "per-activation-split": ((256, 24), "per_activation", {"split": 4}),
    "N=1": ((1, 4, 1030), "spatial", {}),
    "N=1-split": ((1, 4, 1030), "spatial", {"split": 3}),
}
OFFSETS = {np.float32: (0.0, 1e2, 1e4, 1e6, 1e7), np.float16: (0.0, 1e2, 1e3)}


def ulps_of(err, magnitude, dtype):
    return err / np.spacing(np.abs(magnitude).astype(dtype)).astype(np.float64)


def training_step(shape, mode, dtype, offset, override, seed):
    rng = np.random.default_rng(seed)
    _, pshape, K, _ = ref.layout(shape, mode)
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale = rng.uniform(0.5, 1.5, K).astype(np.float32)
    bias = rng.standard_normal(K).astype(np.float32)
    rm, rv = np.zeros(K, np.float32), np.ones(K, np.float32)
    with batchnorm.plan_override(**override):
        y, sm, si = batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, 0.1, mode=mode)
        dx, ds, db = batchnorm.backward(gpu(x), gpu(dy), gpu(scale), sm, si, mode=mode)
    got = [a.get().astype(np.float64) for a in (y, dx, ds, db)]
    wy, _, _, wmean, winvstd = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, mode)
    want = [wy, *ref.backward(x, dy, scale, wmean, winvstd, mode)]
    return got, want, bias.reshape(pshape)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_elementwise_accuracy(plan, dtype):
    shape, mode, override = PLANS[plan]
    axes = (0,) + tuple(range(2, len(shape))) if mode == "spatial" else (0,)
    for offset in OFFSETS[dtype]:
        (y, dx, ds, db), (wy, wdx, wds, wdb), bias = training_step(shape, mode, dtype, offset, override, seed=7)
        where = f"{plan}, {np.dtype(dtype).name}, offset {offset:g}"
        ey = ulps_of(np.abs(y - wy), np.maximum(np.abs(wy), np.abs(bias)), dtype).max()
        edx = ulps_of(np.abs(dx - wdx), np.abs(wdx).max(axis=axes, keepdims=True), dtype).max()
        bound_y, bound_dx = (Y_ULPS, DX_ULPS) if dtype == np.float32 else (FP16_ULPS, FP16_ULPS)
        assert ey <= bound_y, f"y: {ey:.2f} ulps of max(|y|, |bias|) ({where})"
        assert edx <= bound_dx, f"dx: {edx:.2f} ulps of the channel's max |dx| ({where})"
        for name, g, w in (("dscale", ds, wds), ("dbias", db, wdb)):
            rel = (np.abs(g - w) / np.abs(w)).max()
            assert rel <= GRAD_REL, f"{name}: {rel:.2e} relative ({where})"


def test_outputs_near_the_bias_keep_their_precision():
    """Data centred at 0 with outputs crossing the bias: the old (x - shift) - mean form lost hundreds of
    ulps of the small outputs there; (x - hi) - lo keeps them within the bound, elementwise."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 10)).astype(np.float32)
    scale, bias = np.ones(10, np.float32), np.zeros(10, np.float32)
    y, _, _ = batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), gpu(np.zeros(10, np.float32)),
                                      gpu(np.ones(10, np.float32)), 1e-5, 0.1, mode="per_activation")
    wy = ref.forward_train(x, scale, bias, 0.0, 1.0, 1e-5, 0.1, "per_activation")[0]
    assert ulps_of(np.abs(y.get() - wy), wy, np.float32).max() <= Y_ULPS


@pytest.mark.parametrize("mode,shape,override", [("spatial", (8, 1, 512), {}), ("spatial", (8, 1, 512), {"split": 4}),
                                                 ("per_activation", (4096, 2), {}),
                                                 ("per_activation", (4096, 2), {"split": 3}),
                                                 ("spatial", (1, 1, 4096), {})])
def test_large_variance(mode, shape, override):
    """4096 values of std 3e17 (variance 9e34: M2 = variance * 4096 would be past FLT_MAX) and of std 1e19
    (variance 1e38, still below FLT_MAX = 3.4e38) give finite statistics matching float64 and y ~ N(0, 1);
    std 3e19 (variance 9e38, beyond float32) gives running_var = inf honestly while invstd (3e-20) and y
    stay finite and right, and no NaN anywhere. The backward of each is finite and accurate too."""
    rng = np.random.default_rng(1)
    K = shape[1]
    for std in (3e17, 1e19, 3e19):
        x = (rng.standard_normal(shape) * std).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        g_rm, g_rv = gpu(np.zeros(K, np.float32)), gpu(np.ones(K, np.float32))
        with batchnorm.plan_override(**override):
            y, sm, si = batchnorm.forward_train(gpu(x), None, None, g_rm, g_rv, 1e-5, 1.0, mode=mode)
            dx, ds, db = batchnorm.backward(gpu(x), gpu(dy), None, sm, si, mode=mode)
        wy, wrm, wrv, wmean, winvstd = ref.forward_train(x, None, None, 0.0, 1.0, 1e-5, 1.0, mode)
        y, rv = y.get(), g_rv.get()
        np.testing.assert_allclose(si.get(), winvstd, rtol=1e-6, err_msg=f"invstd, std {std:g}")
        np.testing.assert_allclose(sm.get(), wmean, rtol=1e-6, atol=1e-6 * std, err_msg=f"mean, std {std:g}")
        if std < 2e19:
            np.testing.assert_allclose(rv, wrv, rtol=1e-6, err_msg=f"running_var, std {std:g}")
        else:
            assert np.all(wrv > np.finfo(np.float32).max) and np.all(rv == np.inf), rv
        assert np.all(np.isfinite(y)), f"std {std:g}"
        np.testing.assert_allclose(y, wy, rtol=0, atol=1e-6, err_msg=f"y, std {std:g}")
        assert abs(y.mean()) < 1e-6 and abs(y.std() - 1) < 1e-4
        wdx, wds, wdb = ref.backward(x, dy, None, wmean, winvstd, mode)
        np.testing.assert_allclose(dx.get(), wdx, rtol=0, atol=1e-5, err_msg=f"dx, std {std:g}")
        np.testing.assert_allclose(ds.get(), wds, rtol=1e-6, err_msg=f"dscale, std {std:g}")
        np.testing.assert_allclose(db.get(), wdb, rtol=1e-6, err_msg=f"dbias, std {std:g}")


def test_constant_channel_at_large_offset_is_exact():
    """A channel constant at 1e7 has mean exactly 1e7 (hi 1e7, lo 0), variance 0: y is exactly the bias and
    dx exactly 0, on the fused and the split plan."""
    x = np.full((4, 2, 64), 1e7, np.float32)
    bias = np.array([0.25, -3.0], np.float32)
    for override in ({}, {"split": 3}):
        with batchnorm.plan_override(**override):
            y, sm, si = batchnorm.forward_train(gpu(x), gpu(np.ones(2, np.float32)), gpu(bias),
                                                gpu(np.zeros(2, np.float32)), gpu(np.ones(2, np.float32)), 1e-5, 0.1)
            dx, _, _ = batchnorm.backward(gpu(x), gpu(np.ones_like(x)), gpu(np.ones(2, np.float32)), sm, si)
        assert np.array_equal(sm.get(), [1e7, 1e7])
        assert np.array_equal(y.get(), np.broadcast_to(bias.reshape(1, 2, 1), x.shape))
        assert np.array_equal(dx.get(), np.zeros_like(x))


STAT_ULPS = 2.5  # measured maxima 2026-12-02 over 5 seeds: invstd 1.9, running_var 2.0 float32 ulps


@pytest.mark.parametrize("plan", [{"group": 32}, {"group": 32, "split": 4}, {}], ids=["long-walk", "split", "default"])
@pytest.mark.parametrize("dtype,offset,std", [(np.float32, 0.0, 1.0), (np.float32, 1e3, 1e-3), (np.float32, 1e6, 1.0),
                                              (np.float32, 1e7, 1e3), (np.float32, -5e4, 1e-2),
                                              (np.float16, 0.0, 1.0), (np.float16, 1e3, 1.0), (np.float16, 100.0, 0.05)])
def test_statistics_on_hard_inputs(plan, dtype, offset, std):
    """The batch statistics (Welford per 16-byte unit: one division per unit) against float64 on large
    offsets, tiny variances (std 1e-6 of the offset) and long walks (128 units per thread): save_invstd
    and running_var (unbiased, factor 1) within STAT_ULPS float32 ulps, save_mean within one ulp."""
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal((16, 3, 1024)) * std + offset).astype(dtype)
        g_rm, g_rv = gpu(np.zeros(3, np.float32)), gpu(np.ones(3, np.float32))
        with batchnorm.plan_override(**plan):
            _, sm, si = batchnorm.forward_train(gpu(x), None, None, g_rm, g_rv, 1e-30, 1.0)
        _, _, wrv, wmean, winvstd = ref.forward_train(x.astype(np.float64), None, None, 0.0, 1.0, 1e-30, 1.0, "spatial")
        where = f"{np.dtype(dtype).name}, offset {offset:g}, std {std:g}, seed {seed}"
        assert ulps_of(np.abs(si.get() - winvstd), winvstd, np.float32).max() <= STAT_ULPS, f"invstd ({where})"
        assert ulps_of(np.abs(g_rv.get() - wrv), wrv, np.float32).max() <= STAT_ULPS, f"running_var ({where})"
        assert ulps_of(np.abs(sm.get() - wmean), wmean, np.float32).max() <= 1.0 if offset else \
            np.abs(sm.get() - wmean).max() <= 1e-6 * std, f"mean ({where})"
