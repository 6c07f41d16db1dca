"""Forward (training and inference) against the float64 reference, for every shape class the launch
heuristic distinguishes, both modes, fp32 and fp16."""
import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import STAT_TOL, TOL, check_forward_train, gpu, params, run_forward_train
from cybn import batchnorm

SPATIAL_SHAPES = [
    (2, 3, 4, 5),        # small: several channels per CTA, one launch
    (1, 1, 2),           # C=1, two elements (M = 1 is refused: test_batch_of_one_value_per_statistic)
    (3, 5, 1),           # one spatial element
    (2, 3, 7, 9),        # S not a multiple of 4 (scalar path)
    (4, 2, 33),          # S odd, not a multiple of 32
    (2, 1000, 3),        # many channels, tiny M
    (3, 7, 16, 16),      # C not a power of two, 16-byte units
    (2, 6, 40, 41),      # whole channel per CTA with a partial replay cache
]


@pytest.mark.parametrize("shape", SPATIAL_SHAPES)
def test_spatial_train_fp32(rng, shape):
    check_forward_train(rng, shape, "spatial")


@pytest.mark.parametrize("shape", [(5, 6), (2, 6), (3, 4, 5), (7, 33), (2, 1000), (64, 3, 3)])
def test_per_activation_train_fp32(rng, shape):
    check_forward_train(rng, shape, "per_activation")


@pytest.mark.parametrize("shape,mode", [((2, 3, 8, 8), "spatial"), ((3, 5, 7), "spatial"), ((2, 4, 17), "spatial"),
                                        ((9, 5), "per_activation"), ((4, 3, 6), "per_activation")])
def test_train_fp16(rng, shape, mode):
    check_forward_train(rng, shape, mode, dtype=np.float16)


def test_non_affine(rng):
    check_forward_train(rng, (2, 3, 5, 4), "spatial", affine=False)
    check_forward_train(rng, (6, 5), "per_activation", affine=False)


def test_puzzlelib_example():
    """PuzzleLib's BatchNorm(6) example: arange(18).reshape(3, 6) with factor 1 -> running mean 6..11."""
    x = np.arange(18, dtype=np.float32).reshape(3, 6)
    y, rm, rv, sm, si = run_forward_train(x, np.ones(6, np.float32), np.zeros(6, np.float32),
                                          np.zeros(6, np.float32), np.ones(6, np.float32), 1e-5, 1.0,
                                          "per_activation")
    np.testing.assert_array_equal(rm, np.arange(6, 12, dtype=np.float32))
    np.testing.assert_allclose(rv, np.full(6, 36.0), rtol=1e-6)  # unbiased: (36 + 0 + 36) / (3 - 1)
    np.testing.assert_allclose(y[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(y[2], np.full(6, np.sqrt(1.5)), rtol=1e-5)


def test_batch_of_one_value_per_statistic(rng):
    """M = 1 (per-activation N = 1, or spatial N * S = 1): the batch variance is undefined (cuDNN and PuzzleLib
    refuse it); refused with a ValueError before anything runs."""
    for shape, mode in (((1, 7), "per_activation"), ((1, 7, 1), "spatial")):
        scale, bias, rm, rv = params(rng, 7)
        g = [gpu(a) for a in (rng.standard_normal(shape).astype(np.float32), scale, bias, rm, rv)]
        with pytest.raises(ValueError, match="more than one value per statistic"):
            batchnorm.forward_train(*g, 1e-5, 0.3, mode=mode)
        np.testing.assert_array_equal(g[3].get(), rm)
        np.testing.assert_array_equal(g[4].get(), rv)


def test_constant_channel_at_1e7(rng):
    """A channel constant at 1e7: Welford keeps mean exactly 1e7 and M2 exactly 0, so y is exactly bias."""
    x = rng.standard_normal((4, 3, 6, 5)).astype(np.float32)
    x[:, 1] = 1e7
    scale, bias, rm, rv = params(rng, 3)
    for kw in ({}, {"split": 3, "group": 32}):
        with batchnorm.plan_override(**kw):
            y, _, nrv, sm, si = run_forward_train(x, scale, bias, rm, rv, 1e-5, 1.0, "spatial")
        np.testing.assert_array_equal(y[:, 1], np.full((4, 6, 5), bias[1], np.float32))
        assert sm[1] == np.float32(1e7) and nrv[1] == 0.0


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_large_offsets(rng, offset):
    """Mean 1e4 / 1e6 with unit variance: batch variance within 1e-3 relative (no sum-of-squares
    cancellation), fused and split plans alike; y within fp32's resolution of x at that offset."""
    shape = (8, 2, 32, 33)
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    scale, bias, rm, rv = params(rng, 2)
    want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 1.0, "spatial")
    M = x.size // 2
    for kw in ({}, {"split": 5}, {"split": 2, "cache": 0}):
        with batchnorm.plan_override(**kw):
            y, nrm, nrv, sm, si = run_forward_train(x, scale, bias, rm, rv, 1e-5, 1.0, "spatial")
        batch_var = nrv * (M - 1) / M  # factor 1: running var is the unbiased batch variance
        np.testing.assert_allclose(batch_var, want[2] * (M - 1) / M, rtol=1e-3)
        np.testing.assert_allclose(sm, want[3], rtol=1e-7)
        # x itself is quantised to ulp(offset) (0.0625 at 1e6), which the reference shares exactly.
        np.testing.assert_allclose(y, want[0], atol=2e-3 * scale.max())


def test_successive_steps_changing_factor(rng):
    """Several training steps with PuzzleLib's factor schedule; running statistics checked each step."""
    shape, K = (3, 4, 5, 6), 4
    scale, bias, rm, rv = params(rng, K)
    g_rm, g_rv = gpu(rm), gpu(rv)
    want_rm, want_rv = rm.astype(np.float64), rv.astype(np.float64)
    for step, factor in enumerate([1.0, 0.5, 1 / 3, 0.25, 0.1]):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        y, sm, si = batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), g_rm, g_rv, 1e-5, factor)
        wy, want_rm, want_rv, wmean, winvstd = ref.forward_train(x, scale, bias, want_rm, want_rv, 1e-5, factor)
        np.testing.assert_allclose(g_rm.get(), want_rm, **STAT_TOL, err_msg=f"step {step}")
        np.testing.assert_allclose(g_rv.get(), want_rv, **STAT_TOL, err_msg=f"step {step}")
        np.testing.assert_allclose(y.get(), wy, **TOL[np.dtype(np.float32)])


@pytest.mark.parametrize("shape,mode,dtype", [((2, 3, 4, 5), "spatial", np.float32), ((3, 5, 7), "spatial", np.float16),
                                              ((6, 4, 3), "per_activation", np.float32)])
def test_inference_and_in_place(rng, shape, mode, dtype):
    _, _, K, _ = ref.layout(shape, mode)
    x = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = params(rng, K)
    want = ref.forward_infer(x, scale, bias, rm, rv, 1e-3, mode)
    y = batchnorm.forward_infer(gpu(x), gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-3, mode=mode)
    np.testing.assert_allclose(y.get().astype(np.float64), want, **TOL[np.dtype(dtype)])
    gx = gpu(x)
    out = batchnorm.forward_infer(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-3, out=gx, mode=mode)
    assert out is gx
    np.testing.assert_array_equal(gx.get(), y.get())


def test_train_in_place(rng):
    x = rng.standard_normal((3, 4, 9)).astype(np.float32)
    scale, bias, rm, rv = params(rng, 4)
    want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.2)
    for kw in ({}, {"split": 3}):
        gx = gpu(x)
        with batchnorm.plan_override(**kw):
            y, sm, si = batchnorm.forward_train(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, 0.2, out=gx)
        assert y is gx
        np.testing.assert_allclose(gx.get(), want[0], **TOL[np.dtype(np.float32)])


def test_mode_enum_and_stats_shapes(rng):
    """Mode members work like their strings; statistics may come in the layer's (1, C, 1, 1) shape."""
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    scale, bias, rm, rv = params(rng, 3)
    want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.5)
    y, sm, si = batchnorm.forward_train(gpu(x), gpu(scale.reshape(1, 3, 1, 1)), gpu(bias.reshape(1, 3, 1, 1)),
                                        gpu(rm.reshape(1, 3, 1, 1)), gpu(rv.reshape(1, 3, 1, 1)), 1e-5, 0.5,
                                        mode=batchnorm.Mode.spatial)
    np.testing.assert_allclose(y.get(), want[0], **TOL[np.dtype(np.float32)])
    assert sm.shape == (3,) and si.shape == (3,)
