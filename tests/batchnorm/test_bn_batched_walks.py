"""The streaming kernels (normalize, bwd_dx) walk a channel in batches of four units per thread, all
loaded before any is used: whole batches and a remainder, 16-byte and scalar units, out of place and in
place (y over x, dx over dy), against the float64 reference under two randomised schedules, with
bit-identical results across the schedules."""
import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import TOL, batch_stats, exact_mean, gpu, params
from cybn import batchnorm, softgpu

# 32 threads per channel: (4, 3, 144) has 144 16-byte units per channel (4.5 per thread: a whole batch
# for every thread, a second unit for half of them); (4, 3, 143) walks 572 scalar elements (17.9 each).
SHAPES = [(4, 3, 144), (4, 3, 143)]


def _calls(x, dy, scale, bias, rm, rv, in_place):
    gx, gdy = gpu(x), gpu(dy)
    out = {}
    y = batchnorm.forward_infer(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, out=gx if in_place else None)
    out["infer"] = y.get()
    gx = gpu(x)
    y, sm, si = batchnorm.forward_train(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, 0.1,
                                        out=gx if in_place else None)
    out["train"] = y.get()
    mean, invstd = batch_stats(x, "spatial", 1e-5)
    dx, ds, db = batchnorm.backward(gpu(x), gdy, gpu(scale), gpu(mean), gpu(invstd), out=gdy if in_place else None)
    out["dx"] = dx.get()
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_place", [False, True])
def test_batched_streaming_walks(rng, shape, in_place):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    scale, bias, rm, rv = params(rng, shape[1])
    runs = []
    for seed in (1, 2):
        with softgpu.seed(seed), batchnorm.plan_override(group=32, split=2):
            assert batchnorm.plan(shape, np.float32, kernel="forward_infer")["vec"] == (shape[2] % 4 == 0)
            runs.append(_calls(x, dy, scale, bias, rm, rv, in_place))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
    tol = TOL[np.dtype(np.float32)]
    np.testing.assert_allclose(runs[0]["infer"], ref.forward_infer(x, scale, bias, rm, rv, 1e-5), **tol)
    np.testing.assert_allclose(runs[0]["train"], ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)[0], **tol)
    _, invstd = batch_stats(x, "spatial", 1e-5)
    np.testing.assert_allclose(runs[0]["dx"], ref.backward(x, dy, scale, exact_mean(x), invstd)[0], **tol)
