"""Helpers for the software GPU driver tests: result unpacking, a current context, NVRTC -> PTX
kernels and launches through cuda.bindings."""
import ctypes
import functools

import numpy as np
import pytest
from cuda.bindings import driver as cu
from cuda.bindings import nvrtc

from cybn.testing.ptx import SUCCESS, ok  # noqa: F401  (one result unpacker for the tests and the benches)

R = cu.CUresult


def code(result):
    """The CUresult of a cuda.bindings call."""
    return result[0] if isinstance(result, tuple) else result


@pytest.fixture(scope="session")
def primary():
    """The primary context, retained for the whole session (tests push and pop it)."""
    ok(cu.cuInit(0))
    return ok(cu.cuDevicePrimaryCtxRetain(0))


@pytest.fixture
def ctx(primary):
    """The primary context made current for one test; the test's stack changes are undone."""
    ok(cu.cuCtxPushCurrent(primary))
    yield primary
    assert ok(cu.cuCtxPopCurrent()) == primary, "the test left another context current"


def device_alloc(nbytes):
    return ok(cu.cuMemAlloc(nbytes))


def to_device(array):
    p = device_alloc(array.nbytes)
    ok(cu.cuMemcpyHtoD(p, array, array.nbytes))
    return p


def from_device(p, count, dtype):
    out = np.empty(count, dtype=dtype)
    ok(cu.cuMemcpyDtoH(out, p, out.nbytes))
    return out


def host_view(address, nbytes, dtype=np.uint8):
    """A numpy view of host memory at an integer address."""
    raw = (ctypes.c_uint8 * nbytes).from_address(int(address))
    return np.frombuffer(raw, dtype=np.uint8).view(dtype)


@functools.lru_cache(maxsize=None)
def ptx(source):
    """PTX for CUDA C++ source (extern "C" kernels), compiled by NVRTC for compute_80."""
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), b"test.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    opts = [b"--gpu-architecture=compute_80", b"-std=c++17"]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise AssertionError("NVRTC failed:\n" + log.decode(errors="replace"))
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    buf = b" " * size
    (err,) = nvrtc.nvrtcGetPTX(prog, buf)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    nvrtc.nvrtcDestroyProgram(prog)
    return buf  # NUL-terminated, as cuModuleLoadData wants


class Kernels:
    """A loaded module; .fn(name) gives its functions. Unloaded by close()."""

    def __init__(self, source):
        self.module = ok(cu.cuModuleLoadData(ptx(source)))

    def fn(self, name):
        return ok(cu.cuModuleGetFunction(self.module, name.encode()))

    def close(self):
        ok(cu.cuModuleUnload(self.module))


class Params:
    """kernelParams for cuLaunchKernel: one pointer per argument. Each arg is (value, numpy dtype);
    device pointers use np.uint64."""

    def __init__(self, *args):
        self.values = [np.array([int(v) if dt in (np.uint64, np.int64) else v], dtype=dt) for v, dt in args]
        self.pointers = np.array([v.ctypes.data for v in self.values], dtype=np.uint64)

    @property
    def address(self):
        return int(self.pointers.ctypes.data)


def launch(f, grid, block, params, smem=0, stream=0):
    """cuLaunchKernel with grid/block triples; returns the CUresult."""
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    return code(cu.cuLaunchKernel(f, *grid, *block, smem, stream, params.address if params else 0, 0))
