"""The software GPU as cuda.bindings sees it: identity, device attributes, cuGetProcAddress, errors."""
import ctypes
import os
import re

import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, SUCCESS, code, ok, primary  # noqa: F401  (fixture)

A = cu.CUdevice_attribute
CUDA_INCLUDE = os.path.join(os.path.dirname(cu.__file__), "..", "..", "nvidia", "cu13", "include")


def cuda_h_version():
    """CUDA_VERSION as written in the wheel's cuda.h (the reference for cuDriverGetVersion)."""
    with open(os.path.join(CUDA_INCLUDE, "cuda.h")) as f:
        return int(re.search(r"#define CUDA_VERSION (\d+)", f.read()).group(1))


def test_library_is_the_software_gpu():
    assert softgpu.active()
    lib = ctypes.CDLL(softgpu.library_path())
    assert lib.softgpuIdentify() == 0x53475055
    # The real exported names exist for C code linking -lcuda against it.
    for name in ("cuInit", "cuGetProcAddress_v2", "cuMemAlloc_v2", "cuCtxCreate_v4", "cuMemcpyHtoD_v2",
                 "cuEventElapsedTime_v2", "cuCtxSynchronize_v2", "cuStreamDestroy_v2", "cuLaunchKernel"):
        assert hasattr(lib, name), name


def test_driver_version_matches_cuda_h():
    ok(cu.cuInit(0))
    assert ok(cu.cuDriverGetVersion()) == cuda_h_version()


def test_one_device_with_name_and_memory():
    ok(cu.cuInit(0))
    assert ok(cu.cuDeviceGetCount()) == 1
    dev = ok(cu.cuDeviceGet(0))
    assert bytes(ok(cu.cuDeviceGetName(64, dev))).rstrip(b"\0 ") == b"cybn software GPU"
    assert ok(cu.cuDeviceTotalMem(dev)) == 4 << 30  # CYBN_SOFTGPU_MEMORY default
    assert code(cu.cuDeviceGet(1)) == R.CUDA_ERROR_INVALID_DEVICE
    assert code(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_WARP_SIZE, 1)) == R.CUDA_ERROR_INVALID_DEVICE
    assert len(bytes(ok(cu.cuDeviceGetUuid(dev)).bytes)) == 16
    assert ok(cu.cuDeviceComputeCapability(dev)) == (8, 0)
    assert re.fullmatch(rb"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9]", bytes(ok(cu.cuDeviceGetPCIBusId(16, dev))).split(b"\0")[0])


@pytest.mark.parametrize("attr, value", [
    (A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 8),
    (A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0),
    (A.CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32),
    (A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1024),
    (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 1024),
    (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 1024),
    (A.CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 64),
    (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, 2**31 - 1),
    (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 65535),
    (A.CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, 65535),
    (A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 48 * 1024),
    (A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 163 * 1024),  # an A100's
    (A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, 164 * 1024),
    (A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 4),
    (A.CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 65536),
    (A.CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, 65536),
    (A.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 2048),
    (A.CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 1),
    (A.CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, 1),
    (A.CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, 0),
    (A.CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 1),
])
def test_device_attribute(attr, value):
    ok(cu.cuInit(0))
    assert ok(cu.cuDeviceGetAttribute(attr, 0)) == value


def test_every_attribute_answers_and_rates_are_positive():
    ok(cu.cuInit(0))
    for attr in A:
        err, _ = cu.cuDeviceGetAttribute(attr, 0)
        assert err == (R.CUDA_ERROR_INVALID_VALUE if attr == A.CU_DEVICE_ATTRIBUTE_MAX else SUCCESS), attr
    for attr in (A.CU_DEVICE_ATTRIBUTE_CLOCK_RATE, A.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE,
                 A.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, A.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE):
        assert ok(cu.cuDeviceGetAttribute(attr, 0)) > 0, attr


def raw_proc_address(name, version):
    """cuGetProcAddress_v2 called directly: (CUresult, pfn, status); cuda.bindings hides status on errors."""
    lib = ctypes.CDLL(softgpu.library_path())
    pfn, status = ctypes.c_void_p(123), ctypes.c_int(-1)
    rc = lib.cuGetProcAddress_v2(name, ctypes.byref(pfn), version, ctypes.c_uint64(0), ctypes.byref(status))
    return rc, pfn.value, status.value


def test_get_proc_address_unknown_symbol():
    assert code(cu.cuGetProcAddress(b"cuNoSuchFunction", 13000, 0)) == R.CUDA_ERROR_NOT_FOUND
    rc, pfn, status = raw_proc_address(b"cuNoSuchFunction", 13000)
    assert rc == R.CUDA_ERROR_NOT_FOUND
    assert status == cu.CUdriverProcAddressQueryResult.CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
    assert pfn is None


def test_get_proc_address_versions():
    lib = ctypes.CDLL(softgpu.library_path())
    err, pfn, status = cu.cuGetProcAddress(b"cuMemAlloc", 3020, 0)
    assert err == SUCCESS and status == cu.CUdriverProcAddressQueryResult.CU_GET_PROC_ADDRESS_SUCCESS
    assert int(pfn) == ctypes.cast(lib.cuMemAlloc_v2, ctypes.c_void_p).value
    # Below the _v2 version the 32-bit cuMemAlloc would be meant: not provided.
    rc, pfn, status = raw_proc_address(b"cuMemAlloc", 2000)
    assert rc == R.CUDA_ERROR_NOT_FOUND and pfn is None
    assert status == cu.CUdriverProcAddressQueryResult.CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
    # A newer variant we do not implement is refused rather than answered with an older signature.
    rc, pfn, status = raw_proc_address(b"cuStreamGetCtx", 12050)
    assert rc == R.CUDA_ERROR_NOT_FOUND and pfn is None
    for name, version, symbol in ((b"cuCtxCreate", 3020, "cuCtxCreate_v2"), (b"cuCtxCreate", 11040, "cuCtxCreate_v3"),
                                  (b"cuCtxCreate", 12050, "cuCtxCreate_v4"), (b"cuCtxSynchronize", 13000, "cuCtxSynchronize_v2"),
                                  (b"cuCtxSynchronize", 12000, "cuCtxSynchronize"),
                                  (b"cuEventElapsedTime", 12080, "cuEventElapsedTime_v2"),
                                  (b"cuStreamDestroy", 4000, "cuStreamDestroy_v2")):
        err, pfn, _ = cu.cuGetProcAddress(name, version, 0)
        assert err == SUCCESS
        assert int(pfn) == ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value, (name, version)
    # Per-thread default stream requests resolve to the same functions.
    flag = cu.CUdriverProcAddress_flags.CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
    err, pfn, _ = cu.cuGetProcAddress(b"cuMemcpyHtoDAsync", 3020, flag)
    assert err == SUCCESS and int(pfn) == ctypes.cast(lib.cuMemcpyHtoDAsync_v2, ctypes.c_void_p).value


def test_error_names_and_strings():
    assert ok(cu.cuGetErrorName(R.CUDA_ERROR_OUT_OF_MEMORY)) == b"CUDA_ERROR_OUT_OF_MEMORY"
    assert ok(cu.cuGetErrorName(R.CUDA_ERROR_ILLEGAL_ADDRESS)) == b"CUDA_ERROR_ILLEGAL_ADDRESS"
    assert ok(cu.cuGetErrorString(R.CUDA_ERROR_INVALID_VALUE)) == b"invalid argument"
    for r in (R.CUDA_SUCCESS, R.CUDA_ERROR_INVALID_PTX, R.CUDA_ERROR_INVALID_IMAGE, R.CUDA_ERROR_LAUNCH_FAILED,
              R.CUDA_ERROR_NOT_FOUND, R.CUDA_ERROR_INVALID_HANDLE, R.CUDA_ERROR_INVALID_CONTEXT,
              R.CUDA_ERROR_NOT_INITIALIZED, R.CUDA_ERROR_MISALIGNED_ADDRESS, R.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE):
        assert ok(cu.cuGetErrorName(r)) == r.name.encode()
        assert ok(cu.cuGetErrorString(r))
