"""The NCHW spatial kernels walk a channel with 32-bit offsets wherever its offsets fit (every tensor the
tests can allocate) and with 64-bit ones beyond (cybn_walk32_reach in batchnorm.cu, 2^32 units). The
tests lower that reach to 0 so the 64-bit walk runs on small tensors: both walks must give bit-identical
results (the same units in the same order) that match the float64 reference, on every spatial path
(16-byte units, scalar elements, N = 1 rows with a scalar head and tail; fused and split; in place and
out of place) under two randomised schedules; the instruction counts differ, so the lowered reach
really switched the walk."""
import contextlib

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn.testing import reference as ref
from bn_helpers import TOL, batch_stats, exact_mean, gpu, params
from cybn import batchnorm, kernels, softgpu

# (4, 3, 144): 16-byte units; (4, 3, 143): scalar elements; (1, 4, 1030): N = 1, a row between a scalar
# head and tail (1030 floats: 16-byte units in the aligned middle).
SHAPES = [(4, 3, 144), (4, 3, 143), (1, 4, 1030)]
PLANS = {"fused": {"group": 32}, "split": {"group": 32, "split": 3}}


@contextlib.contextmanager
def walk_reach(units):
    """cybn_walk32_reach of the float32/float16 batchnorm.cu program set to `units` for the block."""
    _, module = kernels.get_module("batchnorm.cu", batchnorm.compile_options(), batchnorm.kernel_expressions())
    ptr, size = module.get_global("cybn_walk32_reach")
    assert size == 8

    def put(v):
        assert cu.cuMemcpyHtoD(ptr, np.array([v], np.int64), 8)[0] == cu.CUresult.CUDA_SUCCESS

    old = np.zeros(1, np.int64)
    assert cu.cuMemcpyDtoH(old, ptr, 8)[0] == cu.CUresult.CUDA_SUCCESS
    assert old[0] == 1 << 32
    put(units)
    try:
        yield
    finally:
        put(int(old[0]))


def _calls(x, dy, scale, bias, rm, rv, in_place):
    out = {}
    gx = gpu(x)
    out["infer"] = batchnorm.forward_infer(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5,
                                           out=gx if in_place else None).get()
    gx, grm, grv = gpu(x), gpu(rm), gpu(rv)
    y, sm, si = batchnorm.forward_train(gx, gpu(scale), gpu(bias), grm, grv, 1e-5, 0.1, out=gx if in_place else None)
    out.update(train=y.get(), mean=sm.get(), invstd=si.get(), rm=grm.get(), rv=grv.get())
    gdy = gpu(dy)
    dx, ds, db = batchnorm.backward(gpu(x), gdy, gpu(scale), sm, si, out=gdy if in_place else None)
    out.update(dx=dx.get(), ds=ds.get(), db=db.get())
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_64_bit_walk_matches_the_32_bit_walk(rng, shape, plan, dtype):
    in_place = shape[2] % 2 == 0  # in place for two of the shapes, out of place for the third
    x = (rng.standard_normal(shape) + 3.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = params(rng, shape[1])
    runs, instructions = {}, {}
    for reach in (1 << 32, 0):
        for seed in (1, 2):
            with walk_reach(reach), softgpu.seed(seed), batchnorm.plan_override(**PLANS[plan]), softgpu.measure() as m:
                runs[reach, seed] = _calls(x, dy, scale, bias, rm, rv, in_place)
            instructions[reach, seed] = m.instructions
    first = runs[1 << 32, 1]
    for key, r in runs.items():
        for k in first:
            np.testing.assert_array_equal(r[k], first[k], err_msg=f"{k}, reach/seed {key}")
    assert instructions[0, 1] != instructions[1 << 32, 1], "the lowered reach did not switch the walk"
    tol = TOL[np.dtype(dtype)]
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(first["infer"], ref.forward_infer(x64, scale, bias, rm, rv, 1e-5), **tol)
    wy, wrm, wrv, wmean, winvstd = ref.forward_train(x64, scale, bias, rm, rv, 1e-5, 0.1)
    np.testing.assert_allclose(first["train"], wy, **tol)
    np.testing.assert_allclose(first["mean"], wmean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(first["invstd"], winvstd, rtol=1e-5)
    np.testing.assert_allclose(first["rv"], wrv, rtol=1e-5)
    wdx, wds, wdb = ref.backward(x64, dy.astype(np.float64), scale, exact_mean(x64), batch_stats(x64, "spatial", 1e-5)[1])
    np.testing.assert_allclose(first["dx"], wdx, **tol)
    np.testing.assert_allclose(first["ds"], wds, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first["db"], wdb, rtol=1e-4, atol=1e-4)
