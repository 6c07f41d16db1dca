"""The engine's checks from the kernel side: shared-memory bounds, warp-level ordering in racecheck
(a __syncwarp orders lanes of one warp, nothing orders lanes without it), atomics never race with
each other, and initcheck names the first unwritten address."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, launch, run

R = cu.CUresult

SOURCE = r"""
extern "C" __global__ void shared_oob(float* out, int k) {
    extern __shared__ float s[];
    s[threadIdx.x + k] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}
extern "C" __global__ void neighbour(int* out, int sync) {
    __shared__ int s[32];
    s[threadIdx.x] = threadIdx.x;
    if (sync) __syncwarp();
    out[threadIdx.x] = s[(threadIdx.x + 1) & 31];
}
extern "C" __global__ void shared_atomic_count(unsigned* out) {
    __shared__ unsigned c;
    if (threadIdx.x == 0) c = 0;
    __syncthreads();
    atomicAdd(&c, 1u);
    __syncthreads();
    if (threadIdx.x == 0) out[0] = c;
}
extern "C" __global__ void copy(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x]; }
"""


@pytest.fixture
def mod(ctx):
    m = Module(compile_ptx(SOURCE))
    yield m
    m.close()
    cu.cuCtxSynchronize()


def test_shared_access_past_the_dynamic_window(mod):
    with Device() as d:
        p = d.alloc(4 * 32)
        run(mod.fn("shared_oob"), (1,), (32,), p, np.int32(0), smem=128)
        r = launch(mod.fn("shared_oob"), (1,), (32,), p, np.int32(1), smem=128)
        assert r == R.CUDA_ERROR_ILLEGAL_ADDRESS
        report = softgpu.last_report()
        assert "memcheck" in report and "shared" in report and "thread (31,0,0)" in report, report


def test_syncwarp_orders_lanes_of_a_warp(mod):
    with Device() as d:
        p = d.alloc(4 * 32)
        run(mod.fn("neighbour"), (1,), (32,), p, np.int32(1))
        np.testing.assert_array_equal(d.get(p, 32, np.int32), (np.arange(32) + 1) % 32)
        r = launch(mod.fn("neighbour"), (1,), (32,), p, np.int32(0))
        assert r == R.CUDA_ERROR_LAUNCH_FAILED
        assert "racecheck" in softgpu.last_report()


def test_shared_atomics_do_not_race(mod):
    with Device() as d:
        p = d.zeros(1, np.uint32)
        run(mod.fn("shared_atomic_count"), (2,), (96,), p)
        assert d.get(p, 1, np.uint32)[0] == 96


def test_initcheck_names_the_first_unwritten_address(mod):
    with Device() as d:
        px, py = d.alloc(4 * 32), d.alloc(4 * 32)
        cu.cuMemcpyHtoD(px, np.zeros(8, np.float32), 32)  # only the first 8 floats written
        r = launch(mod.fn("copy"), (1,), (32,), px, py)
        assert r == R.CUDA_ERROR_LAUNCH_FAILED
        report = softgpu.last_report()
        assert "initcheck" in report and hex(int(px) + 32) in report and "thread (8,0,0)" in report, report
