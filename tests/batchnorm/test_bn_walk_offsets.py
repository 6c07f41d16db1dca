"""The NCHW spatial kernels walk a channel with 32-bit offsets wherever its offsets fit (every tensor the
tests can allocate) and with 64-bit ones beyond (CYBN_WALK32_REACH in batchnorm.cu, 2^32 units). A fresh
process compiles the kernels with a reach of 0, so the 64-bit walk runs on small tensors: both walks must
give bit-identical results (the same units in the same order) that match the float64 reference, on every
spatial path (16-byte units, scalar elements, N = 1 rows with a scalar head and tail; fused and split; in
place and out of place) under two randomised schedules; the instruction counts differ, so the child
really ran the other walk."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import TOL, batch_stats, exact_mean, gpu, params
from cybn import batchnorm, paths, softgpu

# (4, 3, 144): 16-byte units; (4, 3, 143): scalar elements; (1, 4, 1030): N = 1, a row between a scalar
# head and tail (1030 floats: 16-byte units in the aligned middle).
SHAPES = [(4, 3, 144), (4, 3, 143), (1, 4, 1030)]
PLANS = {"fused": {"group": 32}, "split": {"group": 32, "split": 3}}
DTYPES = (np.float32, np.float16)
HERE = os.path.dirname(os.path.abspath(__file__))


def inputs(shape, dtype):
    rng = np.random.default_rng(sum(shape) + np.dtype(dtype).itemsize)
    x = (rng.standard_normal(shape) + 3.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return (x, dy) + params(rng, shape[1])


def calls(shape, dtype, plan):
    """{name: host array} of inference, training forward and backward (in place for two of the shapes),
    and the instruction count, on both schedule seeds (asserted bit-identical)."""
    x, dy, scale, bias, rm, rv = inputs(shape, dtype)
    in_place = shape[2] % 2 == 0
    runs = []
    for seed in (1, 2):
        out = {}
        with softgpu.seed(seed), batchnorm.plan_override(**PLANS[plan]), softgpu.measure() as m:
            gx = gpu(x)
            out["infer"] = batchnorm.forward_infer(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5,
                                                   out=gx if in_place else None).get()
            gx, grm, grv = gpu(x), gpu(rm), gpu(rv)
            y, sm, si = batchnorm.forward_train(gx, gpu(scale), gpu(bias), grm, grv, 1e-5, 0.1,
                                                out=gx if in_place else None)
            out.update(train=y.get(), mean=sm.get(), invstd=si.get(), rv=grv.get())
            gdy = gpu(dy)
            dx, ds, db = batchnorm.backward(gpu(x), gdy, gpu(scale), sm, si, out=gdy if in_place else None)
            out.update(dx=dx.get(), ds=ds.get(), db=db.get())
        out["instructions"] = np.array(m.instructions)
        runs.append(out)
    for k in runs[0]:
        if k != "instructions":
            np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=f"{k}: schedules differ")
    return runs[0]


def cases():
    return [(shape, dtype, plan) for shape in SHAPES for dtype in DTYPES for plan in PLANS]


def key(shape, dtype, plan):
    return f"{'x'.join(map(str, shape))}-{np.dtype(dtype).name}-{plan}"


@pytest.fixture(scope="module")
def walk64(tmp_path_factory):
    """The results of every case from a fresh process whose batchnorm.cu has CYBN_WALK32_REACH 0."""
    kdir = tmp_path_factory.mktemp("kernels64")
    for f in os.listdir(paths.kernel_dir()):
        if f.endswith((".cu", ".cuh", ".h")):
            shutil.copy(os.path.join(paths.kernel_dir(), f), kdir / f)
    text = (kdir / "batchnorm.cu").read_text()
    (kdir / "batchnorm.cu").write_text("#define CYBN_WALK32_REACH 0\n" + text)
    out = kdir / "walk64.npz"
    script = f"""
        import sys
        import numpy as np
        from cybn import paths, softgpu
        softgpu.load()  # with the checks on: CYBN_SOFTGPU_CHECKS comes from this session's environment
        paths.kernel_dir = lambda: {str(kdir)!r}
        sys.path.insert(0, {HERE!r})
        import test_bn_walk_offsets as t
        res = {{}}
        for shape, dtype, plan in t.cases():
            for k, v in t.calls(shape, dtype, plan).items():
                res[t.key(shape, dtype, plan) + ":" + k] = v
        np.savez({str(out)!r}, **res)
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(paths.kernel_dir())),
                                                        os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as z:
        return dict(z)


@pytest.mark.parametrize("shape,dtype,plan", cases(), ids=[key(*c) for c in cases()])
def test_64_bit_walk_matches_the_32_bit_walk(walk64, shape, dtype, plan):
    got = calls(shape, dtype, plan)
    name = key(shape, dtype, plan)
    for k, v in got.items():
        if k != "instructions":
            np.testing.assert_array_equal(walk64[f"{name}:{k}"], v, err_msg=f"{k}: 64-bit vs 32-bit walk")
    assert walk64[f"{name}:instructions"] != got["instructions"], "the child did not run the 64-bit walk"
    x, dy, scale, bias, rm, rv = (a.astype(np.float64) for a in inputs(shape, dtype))
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got["infer"], ref.forward_infer(x, scale, bias, rm, rv, 1e-5), **tol)
    wy, _, wrv, wmean, winvstd = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
    np.testing.assert_allclose(got["train"], wy, **tol)
    np.testing.assert_allclose(got["mean"], wmean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["invstd"], winvstd, rtol=1e-5)
    np.testing.assert_allclose(got["rv"], wrv, rtol=1e-5)
    wdx, wds, wdb = ref.backward(x, dy, scale, exact_mean(x), batch_stats(x, "spatial", 1e-5)[1])
    np.testing.assert_allclose(got["dx"], wdx, **tol)
    np.testing.assert_allclose(got["ds"], wds, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["db"], wdb, rtol=1e-4, atol=1e-4)
