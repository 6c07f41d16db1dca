"""Properties of the functional API against the float64 reference: any shape, dtype, epsilon, factor, offset
and forced launch plan gives the maths' answer (forward_train, running statistics, backward, forward_infer)."""
import numpy as np
from hypothesis import given

from cybn.testing import reference as ref
from strategies import at_offset, problems
from cybn import batchnorm

# Tolerances: float32 statistics (Welford) carry ~1e-6 relative error; float16 data is rounded to half an ulp.
TOL = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-4), np.dtype(np.float16): dict(rtol=4e-3, atol=8e-3)}
STAT = dict(rtol=2e-4, atol=2e-5)


def setup(p):
    """(rng, shape, mode, dtype, K, M, x, scale, bias) of a drawn problem."""
    rng = np.random.default_rng(p["seed"])
    shape, mode, dtype = p["shape"], p["mode"], p["dtype"]
    _, _, K, M = ref.layout(shape, mode)
    x = (rng.standard_normal(shape) + p["center"]).astype(dtype)
    scale, bias = rng.uniform(0.5, 1.5, K).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    return rng, shape, mode, dtype, K, M, x, scale, bias


@given(problems())
def test_forward_train_and_backward_match_float64(p):
    rng, shape, mode, dtype, K, M, x, scale, bias = setup(p)
    keep = []
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = rng.standard_normal(K).astype(np.float32), rng.uniform(0.5, 2, K).astype(np.float32)
    g = {k: at_offset(v, p["offset"], keep) for k, v in dict(x=x, dy=dy, scale=scale, bias=bias, rm=rm, rv=rv).items()}

    with batchnorm.plan_override(**p["plan"]):
        y, sm, si = batchnorm.forward_train(g["x"], g["scale"], g["bias"], g["rm"], g["rv"], p["epsilon"],
                                            p["factor"], mode=mode)
        dx, ds, db = batchnorm.backward(g["x"], g["dy"], g["scale"], sm, si, mode=mode)

    want_y, want_rm, want_rv, mean, invstd = ref.forward_train(x, scale, bias, rm, rv, p["epsilon"], p["factor"], mode)
    np.testing.assert_allclose(y.get().astype(np.float64), want_y.reshape(shape), **TOL[dtype])
    np.testing.assert_allclose(g["rm"].get(), want_rm, **STAT)
    np.testing.assert_allclose(g["rv"].get(), want_rv, rtol=1e-3 if dtype == np.float16 else 2e-4, atol=1e-4)
    np.testing.assert_allclose(sm.get(), mean, **STAT)
    np.testing.assert_allclose(si.get(), invstd, rtol=1e-3, atol=1e-4)

    want_dx, want_ds, want_db = ref.backward(x, dy, scale, mean, invstd, mode)
    scale_dx = np.abs(want_dx).max() + 1
    np.testing.assert_allclose(dx.get().astype(np.float64) / scale_dx, want_dx / scale_dx, **TOL[dtype])
    bound = np.sqrt(M) * (np.abs(want_ds).max() + 1)  # sums of M terms: absolute error grows like sqrt(M)
    np.testing.assert_allclose(ds.get() / bound, want_ds / bound, atol=2e-4 if dtype == np.float32 else 4e-3)
    np.testing.assert_allclose(db.get(), want_db, rtol=2e-4, atol=2e-4 * np.sqrt(M))


@given(problems())
def test_forward_infer_matches_float64(p):
    rng, shape, mode, dtype, K, _, x, scale, bias = setup(p)
    keep = []
    rm = (rng.standard_normal(K) + p["center"]).astype(np.float32)
    rv = rng.uniform(0.5, 2, K).astype(np.float32)
    g = {k: at_offset(v, p["offset"], keep) for k, v in dict(x=x, scale=scale, bias=bias, rm=rm, rv=rv).items()}
    with batchnorm.plan_override(**p["plan"]):
        y = batchnorm.forward_infer(g["x"], g["scale"], g["bias"], g["rm"], g["rv"], p["epsilon"], mode=mode)
    want = ref.forward_infer(x, scale, bias, rm, rv, p["epsilon"], mode)
    np.testing.assert_allclose(y.get().astype(np.float64), want.reshape(shape), **TOL[dtype])
