"""Every dtype x activation x residual combination of forward_train, backward, forward_infer and
backward_infer, spatial and per-activation, against float64 references from the maths
(cybn/testing/bn_ref_epilogue.py); then the plans (fused with/without the replay cache, split, 16-byte
units, N = 1, odd C, C = 1) for a representative subset."""
import numpy as np
import pytest

from cybn import batchnorm
from bn_epilogue_cases import BF16, step

DTYPES = [np.float32, np.float16, np.float64, pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    BF16 is None, reason="ml_dtypes (the test extra) not installed"))]
ACTS = [None, "relu", "relu6", "clipped_relu", "leaky_relu", "elu", "sigmoid", "tanh", "swish", "silu"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape,mode", [((3, 5, 4, 4), "spatial"), ((6, 7), "per_activation")])
def test_epilogue_matrix(rng, dtype, act, residual, shape, mode):
    step(rng, shape, dtype, act, residual, mode)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "elu"])
def test_backward_recomputes_without_y(rng, dtype, act):
    """No saved output: the derivative comes from the pre-activation recomputed from x (and z)."""
    step(rng, (4, 3, 5), dtype, act, True, use_y=False)
    step(rng, (9, 4), dtype, act, True, "per_activation", use_y=False)


PLANS = [
    ((2, 3, 8, 8), {}),                        # fused, x (and dy / g) replayed from the cache, 16-byte units
    ((2, 3, 8, 8), {"cache": 0}),              # fused, no cache: the replay reloads and recomputes g
    ((4, 3, 16, 16), {"cache": 1, "group": 32}),  # part cached, part recomputed
    ((4, 3, 8, 8), {"split": 3, "group": 32}),  # split: partials, last-CTA combine, second launches
    ((1, 3, 37), {}),                          # N = 1: 16-byte middle between scalar head and tail
    ((1, 3, 37), {"split": 2, "group": 32}),
    ((3, 7, 5), {}),                           # odd C, S not a multiple of the vector width: elements
    ((5, 1, 6, 3), {"split": 2, "group": 32}),  # C = 1, split
    ((2, 1, 3), {}),                           # C = 1, tiny
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,override", PLANS, ids=[f"{s}-{o}" for s, o in PLANS])
# act' from y (relu) and from the recomputed v (swish), both with the residual's extra streams.
@pytest.mark.parametrize("act,residual", [("relu", True), ("swish", True)])
def test_epilogue_plans(rng, dtype, shape, override, act, residual):
    with batchnorm.plan_override(**override):
        step(rng, shape, dtype, act, residual)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("override", [{}, {"split": 3}, {"cache": 0}])
def test_epilogue_plans_per_activation(rng, dtype, override):
    with batchnorm.plan_override(**override):
        step(rng, (12, 3, 5), dtype, "elu", True, "per_activation")
        step(rng, (7, 6), dtype, "relu", False, "per_activation")
        step(rng, (2, 5), dtype, "sigmoid", True, "per_activation")


def test_float64_keeps_double_precision(rng):
    """float64 data is normalised in double: at an offset of 1e9 with unit spread the training outputs match
    the float64 reference at 1e-10 (float32 statistics would lose every digit of x - mean). The reference runs
    on x - 1e9 (exact in float64 here, Sterbenz), since BatchNorm's y and gradients are shift-invariant and
    numpy's own mean of the offset data is only good to an ulp of 1e9 (1.2e-7). Through swish the backward
    recomputes v from x - save_mean (the mean's low part is known only after its reduction), so v, and through
    act'(v) the gradients, carry up to half an ulp of the mean times scale * invstd: 6e-8 here, asserted 1e-6."""
    from cybn import gpuarray
    from cybn.testing import bn_ref_epilogue as R
    shape, K = (4, 3, 6, 6), 3
    u = rng.standard_normal(shape)
    x = u + 1e9
    z, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    scale, bias = rng.uniform(0.5, 1.5, K), rng.standard_normal(K)
    g = gpuarray.to_gpu
    for act in ("relu", "swish"):
        y, sm, si = batchnorm.forward_train(g(x), g(scale), g(bias), g(np.zeros(K)), g(np.ones(K)), 1e-5, 0.1,
                                            activation=act, residual=g(z))
        ry, _, _, mean, invstd, v = R.forward_train(x - 1e9, scale, bias, np.zeros(K), np.ones(K), 1e-5, 0.1,
                                                    act, 0.0, z)
        np.testing.assert_allclose(y.get(), ry, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(sm.get(), mean + 1e9, rtol=1e-15)
        np.testing.assert_allclose(si.get(), invstd, rtol=1e-12)
        dx, dz, ds, db = batchnorm.backward(g(x), g(dy), g(scale), sm, si, activation=act, y=y, residual=g(z),
                                            bias=g(bias))
        rdx, rdz, rds, rdb = R.backward(x - 1e9, dy, scale, mean, invstd, v, act)
        tol = 1e-10 if act == "relu" else 1e-6
        for got, ref in ((dx, rdx), (dz, rdz), (ds, rds), (db, rdb)):
            np.testing.assert_allclose(got.get(), ref, rtol=tol, atol=tol)
