"""Backward (from saved batch statistics) and eval-mode backward (frozen running statistics) against the
float64 reference."""
import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import TOL, batch_stats, exact_mean, gpu, params
from cybn import batchnorm


def grad_tol(M, dtype):
    """dscale/dbias are sums of M terms: fp32 accumulation error grows with M (and fp16 inputs carry
    their own rounding into dx), so the absolute tolerance scales with M."""
    return dict(rtol=1e-4, atol=1e-5 * M if dtype == np.float32 else 1e-4 * M)


def check_backward(rng, shape, mode="spatial", dtype=np.float32, affine=True, **override):
    axes, pshape, K, M = ref.layout(shape, mode)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale = params(rng, K)[0] if affine else None
    mean, invstd = batch_stats(x, mode, 1e-5)
    with batchnorm.plan_override(**override):
        dx, ds, db = batchnorm.backward(gpu(x), gpu(dy), None if scale is None else gpu(scale), gpu(mean),
                                        gpu(invstd), mode=mode)
    wdx, wds, wdb = ref.backward(x, dy, scale, exact_mean(x, mode), invstd, mode)
    assert dx.dtype == dtype and dx.shape == shape and ds.shape == (K,) and db.shape == (K,)
    np.testing.assert_allclose(dx.get().astype(np.float64), wdx, **TOL[np.dtype(dtype)], err_msg="grad_x")
    tol = grad_tol(M, dtype)
    np.testing.assert_allclose(ds.get(), wds, **tol, err_msg="scale_grad")
    np.testing.assert_allclose(db.get(), wdb, **tol, err_msg="bias_grad")


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1), (3, 5, 1), (2, 3, 7, 9), (2, 1000, 3),
                                   (3, 7, 16, 16), (2, 6, 40, 41)])
def test_spatial_fp32(rng, shape):
    check_backward(rng, shape, "spatial")


@pytest.mark.parametrize("shape", [(5, 6), (1, 6), (7, 33), (2, 1000), (64, 3, 3)])
def test_per_activation_fp32(rng, shape):
    check_backward(rng, shape, "per_activation")


@pytest.mark.parametrize("shape,mode", [((2, 3, 8, 8), "spatial"), ((3, 5, 7), "spatial"), ((9, 5), "per_activation")])
def test_fp16(rng, shape, mode):
    check_backward(rng, shape, mode, np.float16)


def test_non_affine(rng):
    check_backward(rng, (2, 3, 5, 4), affine=False)


@pytest.mark.parametrize("shape,mode,override", [
    ((4, 3, 16, 8), "spatial", {"split": 4}),
    ((4, 3, 5, 7), "spatial", {"split": 3, "group": 64}),
    ((3, 2, 40), "spatial", {"cache": 0}),
    ((4, 2, 64), "spatial", {"cache": 1}),         # partly replayed from the cache, partly re-read
    ((300, 5), "per_activation", {"split": 6}),
    ((40, 3, 2), "per_activation", {"split": 2, "group": 4}),
])
def test_plans(rng, shape, mode, override):
    check_backward(rng, shape, mode, **override)
    check_backward(rng, shape, mode, np.float16, **override)


@pytest.mark.parametrize("shape,mode,override", [((2, 3, 4, 5), "spatial", {}), ((3, 4, 33), "spatial", {"split": 3}),
                                                 ((7, 5), "per_activation", {}), ((50, 4), "per_activation", {"split": 4})])
def test_backward_infer(rng, shape, mode, override):
    """Eval-mode backward: dx = scale * dy / sqrt(running_var + eps); sums over frozen statistics."""
    _, _, K, M = ref.layout(shape, mode)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    scale, _, rm, rv = params(rng, K)
    with batchnorm.plan_override(**override):
        dx, ds, db = batchnorm.backward_infer(gpu(x), gpu(dy), gpu(scale), gpu(rm), gpu(rv), 1e-3, mode=mode)
    wdx, wds, wdb = ref.backward_infer(x, dy, scale, rm, rv, 1e-3, mode)
    np.testing.assert_allclose(dx.get(), wdx, **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(ds.get(), wds, rtol=1e-4, atol=1e-5 * M)
    np.testing.assert_allclose(db.get(), wdb, rtol=1e-4, atol=1e-5 * M)


def test_outputs_given_and_in_place(rng):
    """Caller-provided grad buffers are filled; grad_x may overwrite grad_y."""
    shape = (3, 4, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    scale = params(rng, 4)[0]
    mean, invstd = batch_stats(x, "spatial", 1e-5)
    gdy, sg, bg = gpu(dy), gpu(np.full(4, 7, np.float32)), gpu(np.full(4, 7, np.float32))
    dx, ds, db = batchnorm.backward(gpu(x), gdy, gpu(scale), gpu(mean), gpu(invstd), out=gdy, scale_grad=sg,
                                    bias_grad=bg)
    assert dx is gdy and ds is sg and db is bg
    wdx, wds, wdb = ref.backward(x, dy, scale, exact_mean(x), invstd)
    np.testing.assert_allclose(gdy.get(), wdx, **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(sg.get(), wds, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bg.get(), wdb, rtol=1e-4, atol=1e-4)
