"""Kernel launches on the software GPU: results, counters, parameter packing, and the hardware launch
limits (a launch past them fails with CUDA_ERROR_INVALID_VALUE and launches nothing)."""
import ctypes

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import (R, Kernels, Params, code, ctx, device_alloc, from_device, launch, ok,  # noqa: F401
                        primary, to_device)

FA = cu.CUfunction_attribute
U64, F32, I32 = np.uint64, np.float32, np.int32

SOURCE = r"""
extern "C" __global__ void fill(float* x, float v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}
extern "C" __global__ void __launch_bounds__(128) bounded(float* x) {
    x[threadIdx.x] = 1.0f;
}
extern "C" __global__ void dyn(float* x) {
    extern __shared__ float s[];
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    x[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void grid_shape(int* out) {
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
        out[b] = b;
    }
}
"""


@pytest.fixture
def kernels(ctx):
    k = Kernels(SOURCE)
    yield k
    k.close()


@pytest.fixture
def buf(ctx):
    """1024 floats of device memory holding -1."""
    p = to_device(np.full(1024, -1, np.float32))
    yield p
    ok(cu.cuMemFree(p))


def test_fill_and_counters(kernels, buf):
    f = kernels.fn("fill")
    with softgpu.measure() as m:
        assert launch(f, (4,), (256,), Params((buf, U64), (2.5, F32), (1000, I32))) == R.CUDA_SUCCESS
        ok(cu.cuCtxSynchronize())
    expect = np.full(1024, -1, np.float32)
    expect[:1000] = 2.5
    np.testing.assert_array_equal(from_device(buf, 1024, np.float32), expect)
    assert m.launches_count == 1
    assert m.per_kernel["fill"]["launches"] == 1
    assert m.store_bytes == 1000 * 4  # exactly the in-range threads' stores
    assert m.load_bytes == 0
    assert m.instructions > 0
    assert m.launches[0]["kernel"] == "fill"
    assert m.launches[0]["grid"] == [4, 1, 1] and m.launches[0]["block"] == [256, 1, 1]
    assert m.counters["memcpy"]["calls"] == 0


def test_parameters_from_extra_buffer(kernels, buf):
    f = kernels.fn("fill")
    packed = np.zeros(16, np.uint8)  # {float* x; float v; int n;} with natural alignment
    packed[0:8].view(np.uint64)[0] = int(buf)
    packed[8:12].view(np.float32)[0] = 7.0
    packed[12:16].view(np.int32)[0] = 10
    size = ctypes.c_size_t(16)
    extra = (ctypes.c_void_p * 5)(1, packed.ctypes.data, 2, ctypes.addressof(size), 0)
    assert code(cu.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, 0, ctypes.addressof(extra))) == R.CUDA_SUCCESS
    out = from_device(buf, 16, np.float32)
    np.testing.assert_array_equal(out[:10], 7.0)
    np.testing.assert_array_equal(out[10:], -1.0)
    # Too small a buffer is refused.
    size.value = 8
    assert code(cu.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, 0, ctypes.addressof(extra))) == R.CUDA_ERROR_INVALID_VALUE


def test_grid_shape_reaches_every_block(kernels, ctx):
    out = to_device(np.full(2 * 3 * 4, -1, np.int32))
    assert launch(kernels.fn("grid_shape"), (2, 3, 4), (2, 2, 2), Params((out, U64))) == R.CUDA_SUCCESS
    np.testing.assert_array_equal(from_device(out, 24, np.int32), np.arange(24))
    ok(cu.cuMemFree(out))


@pytest.mark.parametrize("grid, block", [
    ((1, 65536, 1), (32, 1, 1)),      # gridDim.y above 65535
    ((1, 1, 65536), (32, 1, 1)),      # gridDim.z above 65535
    ((0, 1, 1), (32, 1, 1)),          # a zero dimension
    ((1, 1, 1), (1025, 1, 1)),        # more than 1024 threads
    ((1, 1, 1), (1, 1, 65)),          # blockDim.z above 64
    ((1, 1, 1), (32, 32, 2)),         # 2048 threads
    ((1, 1, 1), (0, 1, 1)),
])
def test_launch_limits_refused_and_nothing_runs(kernels, buf, grid, block):
    f = kernels.fn("fill")
    before = softgpu.counters()["total"]
    assert launch(f, grid, block, Params((buf, U64), (3.0, F32), (1024, I32))) == R.CUDA_ERROR_INVALID_VALUE
    assert softgpu.counters()["total"] == before
    np.testing.assert_array_equal(from_device(buf, 1024, np.float32), np.full(1024, -1, np.float32))
    assert "fill" in softgpu.last_report()
    ok(cu.cuCtxSynchronize())  # a refused launch is not a pending failure


def test_launch_bounds_enforced(kernels, buf):
    f = kernels.fn("bounded")
    assert ok(cu.cuFuncGetAttribute(FA.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f)) == 128
    assert launch(f, (1,), (129,), Params((buf, U64))) == R.CUDA_ERROR_INVALID_VALUE
    assert launch(f, (1,), (128,), Params((buf, U64))) == R.CUDA_SUCCESS


def test_dynamic_shared_memory_limits(kernels, buf):
    f = kernels.fn("dyn")
    params = Params((buf, U64))
    assert launch(f, (1,), (64,), params, smem=48 * 1024) == R.CUDA_SUCCESS
    np.testing.assert_array_equal(from_device(buf, 64, np.float32), np.arange(63, -1, -1, dtype=np.float32))
    before = softgpu.counters()["total"]
    assert launch(f, (1,), (64,), params, smem=48 * 1024 + 4) == R.CUDA_ERROR_INVALID_VALUE
    assert softgpu.counters()["total"] == before
    # Raising the attribute opts in, up to 163 KiB (the sm_80 limit of the default profile).
    ok(cu.cuFuncSetAttribute(f, FA.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 100 * 1024))
    assert ok(cu.cuFuncGetAttribute(FA.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, f)) == 100 * 1024
    assert launch(f, (1,), (64,), params, smem=100 * 1024) == R.CUDA_SUCCESS
    assert launch(f, (1,), (64,), params, smem=100 * 1024 + 4) == R.CUDA_ERROR_INVALID_VALUE
    ok(cu.cuFuncSetAttribute(f, FA.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 163 * 1024))
    assert launch(f, (1,), (64,), params, smem=163 * 1024) == R.CUDA_SUCCESS
    assert launch(f, (1,), (64,), params, smem=163 * 1024 + 4) == R.CUDA_ERROR_INVALID_VALUE
    assert code(cu.cuFuncSetAttribute(f, FA.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 163 * 1024 + 1)) == \
        R.CUDA_ERROR_INVALID_VALUE
    ok(cu.cuFuncSetAttribute(f, FA.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 48 * 1024))


def expected_occupancy(regs, threads, smem):
    """Resident blocks per SM from the sm_80 rules (registers allocated per warp in 256s, warps placed
    in 4 register-file sub-partitions of 16K registers; 1 KiB of shared memory reserved per block,
    allocated in 128s; 32 blocks, 2048 threads, 164 KiB per SM)."""
    warps = -(-threads // 32)
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = 4 * (16384 // regs_per_warp) // warps
    by_smem = (164 * 1024) // (-(-(smem + 1024) // 128) * 128)
    return min(32, 2048 // (warps * 32), by_regs, by_smem)


def test_occupancy_and_cooperative_limit(kernels, buf):
    f = kernels.fn("fill")
    regs = ok(cu.cuFuncGetAttribute(FA.CU_FUNC_ATTRIBUTE_NUM_REGS, f))
    for threads, smem in ((256, 0), (1024, 0), (64, 40000), (96, 0)):
        assert ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, threads, smem)) == \
            expected_occupancy(regs, threads, smem), (threads, smem)
    per_sm = ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, 256, 0))
    sms = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0))
    params = Params((buf, U64), (1.0, F32), (0, I32))
    args = (1, 1, 256, 1, 1, 0, 0, params.address)
    assert code(cu.cuLaunchCooperativeKernel(f, per_sm * sms, *args)) == R.CUDA_SUCCESS
    before = softgpu.counters()["total"]
    assert code(cu.cuLaunchCooperativeKernel(f, per_sm * sms + 1, *args)) == R.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
    assert softgpu.counters()["total"] == before
    min_grid, block = ok(cu.cuOccupancyMaxPotentialBlockSize(f, None, 0, 0))
    assert block % 32 == 0 and 32 <= block <= 1024
    assert min_grid == expected_occupancy(regs, block, 0) * sms
    assert all(expected_occupancy(regs, t, 0) * t <= expected_occupancy(regs, block, 0) * block
               for t in range(32, 1025, 32))


def test_launch_kernel_ex_cooperative_attribute(kernels, buf):
    f = kernels.fn("fill")
    attr = cu.CUlaunchAttribute()
    attr.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
    attr.value.cooperative = 1
    config = cu.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = 4, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = 256, 1, 1
    config.sharedMemBytes = 0
    config.hStream = 0
    config.attrs = [attr]
    config.numAttrs = 1
    params = Params((buf, U64), (5.0, F32), (1024, I32))
    assert code(cu.cuLaunchKernelEx(config, f, params.address, 0)) == R.CUDA_SUCCESS
    np.testing.assert_array_equal(from_device(buf, 1024, np.float32), np.full(1024, 5.0, np.float32))
    config.gridDimX = 10**6  # far beyond what can be co-resident
    assert code(cu.cuLaunchKernelEx(config, f, params.address, 0)) == R.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE


def test_missing_parameters_and_bad_handles(kernels, buf):
    f = kernels.fn("fill")
    assert code(cu.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, 0, 0)) == R.CUDA_ERROR_INVALID_VALUE
    s = ok(cu.cuStreamCreate(0))
    ok(cu.cuStreamDestroy(s))
    assert launch(f, (1,), (32,), Params((buf, U64), (1.0, F32), (1, I32)), stream=s) == R.CUDA_ERROR_INVALID_HANDLE
    np.testing.assert_array_equal(from_device(buf, 1, np.float32), [-1.0])
