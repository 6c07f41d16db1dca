"""racecheck: a shared-memory exchange without __syncthreads fails with CUDA_ERROR_LAUNCH_FAILED and a
report naming the kernel and the check; with racecheck off the same kernel runs; the synchronised
version is correct with racecheck on."""
import re

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, Kernels, Params, code, ctx, from_device, launch, ok, primary, to_device  # noqa: F401

SOURCE = r"""
extern "C" __global__ void reverse_racy(int* out) {
    __shared__ int s[128];
    s[threadIdx.x] = threadIdx.x;
    // missing __syncthreads(): another warp's element may not be written yet
    out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void reverse_synced(int* out) {
    __shared__ int s[128];
    s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
"""


@pytest.fixture
def kernels(ctx):
    k = Kernels(SOURCE)
    yield k
    k.close()


@pytest.fixture
def out(ctx):
    p = to_device(np.full(128, -1, np.int32))
    yield p
    ok(cu.cuMemFree(p))


def test_missing_syncthreads_is_a_race(kernels, out):
    assert launch(kernels.fn("reverse_racy"), (1,), (128,), Params((out, np.uint64))) == R.CUDA_ERROR_LAUNCH_FAILED
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_LAUNCH_FAILED
    ok(cu.cuCtxSynchronize())
    report = softgpu.last_report()
    assert "reverse_racy" in report and re.search("race", report, re.I), report
    # Still usable, and the correct version is right with racecheck on.
    assert launch(kernels.fn("reverse_synced"), (1,), (128,), Params((out, np.uint64))) == R.CUDA_SUCCESS
    np.testing.assert_array_equal(from_device(out, 128, np.int32), np.arange(127, -1, -1, dtype=np.int32))


def test_racecheck_off_runs_the_racy_kernel(kernels, out):
    with softgpu.checks_set(racecheck=False):
        assert not softgpu.checks()["racecheck"]
        assert launch(kernels.fn("reverse_racy"), (1,), (128,), Params((out, np.uint64))) == R.CUDA_SUCCESS
        ok(cu.cuCtxSynchronize())
    assert softgpu.checks()["racecheck"]
    values = from_device(out, 128, np.int32)
    assert set(values.tolist()) <= set(range(128))  # every thread stored something it read
