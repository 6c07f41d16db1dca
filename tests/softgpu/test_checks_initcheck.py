"""initcheck: a kernel reading device memory nothing wrote fails with CUDA_ERROR_LAUNCH_FAILED; what
counts as written (HtoD copies, memsets, kernel stores, DtoD copies carrying the source's state)."""
import re

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import (R, Kernels, Params, code, ctx, device_alloc, from_device, launch, ok,  # noqa: F401
                        primary, to_device)

SOURCE = r"""
extern "C" __global__ void twice(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2.0f * x[i];
}
extern "C" __global__ void iota(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = (float)i;
}
"""
N = 256


@pytest.fixture
def kernels(ctx):
    k = Kernels(SOURCE)
    yield k
    k.close()


@pytest.fixture
def bufs(ctx):
    x, out = device_alloc(N * 4), device_alloc(N * 4)
    ok(cu.cuMemsetD32(out, 0, N))
    yield x, out
    ok(cu.cuMemFree(x))
    ok(cu.cuMemFree(out))


def twice(kernels, x, out, n=N):
    return launch(kernels.fn("twice"), (N // 128,), (128,), Params((x, np.uint64), (out, np.uint64), (n, np.int32)))


def test_reading_unwritten_memory_fails(kernels, bufs):
    x, out = bufs
    assert twice(kernels, x, out) == R.CUDA_ERROR_LAUNCH_FAILED
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_LAUNCH_FAILED
    ok(cu.cuCtxSynchronize())
    report = softgpu.last_report()
    assert "twice" in report and re.search("initcheck|uninitiali[sz]ed", report, re.I), report
    # Copying unwritten bytes to the host is not a finding.
    from_device(x, N, np.float32)
    # Writing half is enough for a kernel that reads only that half.
    ok(cu.cuMemcpyHtoD(x, np.ones(N // 2, np.float32), N * 2))
    assert twice(kernels, x, out, N // 2) == R.CUDA_SUCCESS
    assert twice(kernels, x, out, N // 2 + 1) == R.CUDA_ERROR_LAUNCH_FAILED
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_LAUNCH_FAILED  # else the next synchronous copy returns it
    ok(cu.cuMemsetD32(int(x) + N * 2, 0x40000000, N // 2))  # memset writes the rest (2.0f)
    assert twice(kernels, x, out) == R.CUDA_SUCCESS
    expect = np.r_[np.full(N // 2, 2.0), np.full(N // 2, 4.0)].astype(np.float32)
    np.testing.assert_array_equal(from_device(out, N, np.float32), expect)


def test_kernel_stores_and_dtod_copies_carry_the_state(kernels, bufs):
    x, out = bufs
    assert launch(kernels.fn("iota"), (N // 128,), (128,), Params((x, np.uint64), (N, np.int32))) == R.CUDA_SUCCESS
    y = device_alloc(N * 4)
    ok(cu.cuMemcpyDtoD(y, x, N * 4))
    assert twice(kernels, y, out) == R.CUDA_SUCCESS
    np.testing.assert_array_equal(from_device(out, N, np.float32), 2.0 * np.arange(N, dtype=np.float32))
    # An unwritten source stays unwritten in the destination.
    z = device_alloc(N * 4)
    ok(cu.cuMemcpyDtoD(y, z, N * 4))
    assert twice(kernels, y, out) == R.CUDA_ERROR_LAUNCH_FAILED
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_LAUNCH_FAILED
    for p in (y, z):
        ok(cu.cuMemFree(p))


def test_initcheck_off_reads_fresh_memory(kernels, bufs):
    x, out = bufs
    with softgpu.checks_set(initcheck=False):
        assert twice(kernels, x, out) == R.CUDA_SUCCESS
        ok(cu.cuCtxSynchronize())
    assert softgpu.checks()["initcheck"]
