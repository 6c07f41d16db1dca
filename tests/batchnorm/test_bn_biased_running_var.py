"""forward_train(running_var_unbiased=False): the biased batch variance goes into running_var (MXNet's and
Paddle's convention), in every plan, against float64 numpy written from the maths."""
import numpy as np
import pytest

from bn_helpers import STAT_TOL, TOL, params, run_forward_train
from cybn import batchnorm


def reference(x, scale, bias, rm, rv, eps, factor, axes):
    x = x.astype(np.float64)
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)  # biased: divided by M, never M - 1
    y = scale.reshape(mean.shape) * (x - mean) / np.sqrt(var + eps) + bias.reshape(mean.shape)
    return y, (1 - factor) * rm + factor * mean.ravel(), (1 - factor) * rv + factor * var.ravel()


CASES = [((4, 3, 4, 5), "spatial", {}), ((2, 3, 7, 9), "spatial", {}), ((8, 4), "spatial", {}),
         ((2, 6, 40, 41), "spatial", dict(group=64, split=5, cache=0)),  # split: two launches
         ((9, 5), "per_activation", {}), ((6, 3, 4), "per_activation", dict(split=3))]


@pytest.mark.parametrize("shape,mode,plan", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_biased_running_var(rng, shape, mode, plan, dtype):
    axes = (0,) + tuple(range(2, len(shape))) if mode == "spatial" else (0,)
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    scale, bias, rm, rv = params(rng, K)
    with batchnorm.plan_override(**plan):
        y, grm, grv, _, _ = run_forward_train(x, scale, bias, rm, rv, 1e-3, 0.1, mode, running_var_unbiased=False)
        _, _, urv, _, _ = run_forward_train(x, scale, bias, rm, rv, 1e-3, 0.1, mode)
    wy, wrm, wrv = reference(x, scale, bias, rm, rv, 1e-3, 0.1, axes)
    np.testing.assert_allclose(y.astype(np.float64), wy, **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(grm, wrm, **STAT_TOL)
    np.testing.assert_allclose(grv, wrv, rtol=2e-6, atol=1e-7)
    # The default is still the unbiased (M - 1) update, and the two differ by that factor here.
    M = x.size // K
    assert not np.allclose(urv, wrv, rtol=1e-5, atol=0)
    np.testing.assert_allclose(urv - 0.9 * rv, (grv - 0.9 * rv) * M / (M - 1), rtol=1e-5)


def test_default_is_unbiased_with_the_keyword_spelled_out(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    scale, bias, rm, rv = params(rng, 3)
    a = run_forward_train(x, scale, bias, rm, rv, 1e-5, 0.5, "spatial")
    b = run_forward_train(x, scale, bias, rm, rv, 1e-5, 0.5, "spatial", running_var_unbiased=True)
    np.testing.assert_array_equal(a[2], b[2])
