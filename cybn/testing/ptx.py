"""Compile CUDA C++ with NVRTC (headers from the wheel), load the PTX with cuModuleLoadData and launch with
cuLaunchKernel / cuLaunchCooperativeKernel, exactly as an engine would, on raw cuda.bindings handles: what the
software GPU's PTX corpus tests (tests/softgpu/ptxutil.py adds their kernel files) and bench/softgpu_bench.py
share. Device buffers are freed by the `Device` context manager."""
import functools
import os

import numpy as np
from cuda.bindings import driver as cu
from cuda.bindings import nvrtc

from cybn import softgpu

SUCCESS = cu.CUresult.CUDA_SUCCESS


def include_dir():
    import nvidia.cu13
    return os.path.join(list(nvidia.cu13.__path__)[0], "include")


def cccl_include_dir():
    """CCCL's headers (CUB, libcu++, nv/target) from the nvidia-cuda-cccl wheel, or None without it."""
    d = os.path.join(include_dir(), "cccl")
    return d if os.path.isdir(os.path.join(d, "cub")) else None


def ok(result):
    """Unpack a cuda.bindings result tuple after asserting CUDA_SUCCESS."""
    err, rest = result[0], result[1:]
    assert err == SUCCESS, f"expected CUDA_SUCCESS, got {err!r}: {softgpu.last_report()}"
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


@functools.lru_cache(maxsize=None)
def compile_ptx(source, options=()):
    """PTX (NUL-terminated bytes) for CUDA C++ source, compiled by NVRTC for compute_80."""
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), b"kernel.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    opts = [b"--gpu-architecture=compute_80", b"-std=c++17", ("-I" + include_dir()).encode()]
    if cccl_include_dir():
        opts.append(("-I" + cccl_include_dir()).encode())
    opts += [o.encode() for o in options]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        nvrtc.nvrtcDestroyProgram(prog)
        raise AssertionError("NVRTC failed:\n" + log.decode(errors="replace"))
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    buf = b" " * size
    (err,) = nvrtc.nvrtcGetPTX(prog, buf)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    nvrtc.nvrtcDestroyProgram(prog)
    return buf


class Module:
    """A module loaded from PTX text (bytes or str)."""

    def __init__(self, ptx):
        if isinstance(ptx, str):
            ptx = ptx.encode() + b"\0"
        self.handle = ok(cu.cuModuleLoadData(ptx))

    def fn(self, name):
        return ok(cu.cuModuleGetFunction(self.handle, name.encode()))

    def global_var(self, name):
        return ok(cu.cuModuleGetGlobal(self.handle, name.encode()))  # (address, size)

    def close(self):
        ok(cu.cuModuleUnload(self.handle))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Device:
    """Device allocations made through it are freed on exit."""

    def __init__(self):
        self.ptrs = []

    def alloc(self, nbytes):
        p = ok(cu.cuMemAlloc(max(int(nbytes), 1)))
        self.ptrs.append(p)
        return p

    def put(self, array):
        array = np.ascontiguousarray(array)
        p = self.alloc(array.nbytes)
        if array.nbytes:
            ok(cu.cuMemcpyHtoD(p, array, array.nbytes))
        return p

    def zeros(self, count, dtype):
        return self.put(np.zeros(count, dtype))

    def get(self, p, count, dtype):
        out = np.empty(count, dtype=dtype)
        if out.nbytes:
            ok(cu.cuMemcpyDtoH(out, p, out.nbytes))
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.ptrs:
            cu.cuMemFree(p)
        self.ptrs = []


def _param_array(arg):
    """One kernel argument as a numpy scalar array: CUdeviceptr -> u64, numpy scalars as they are."""
    if isinstance(arg, cu.CUdeviceptr):
        return np.array([int(arg)], dtype=np.uint64)
    if isinstance(arg, np.generic):
        return np.array([arg], dtype=arg.dtype)
    if isinstance(arg, np.ndarray):
        return np.ascontiguousarray(arg)
    raise TypeError("kernel arguments must be CUdeviceptr, numpy scalars or arrays, got %r" % (arg,))


def launch(f, grid, block, *args, smem=0, cooperative=False):
    """Launches f; returns the CUresult (not raised, so tests can check failures)."""
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    values = [_param_array(a) for a in args]
    pointers = np.array([v.ctypes.data for v in values], dtype=np.uint64)
    kp = int(pointers.ctypes.data) if values else 0
    if cooperative:
        r = cu.cuLaunchCooperativeKernel(f, *grid, *block, smem, 0, kp)
    else:
        r = cu.cuLaunchKernel(f, *grid, *block, smem, 0, kp, 0)
    return r[0] if isinstance(r, tuple) else r


def run(f, grid, block, *args, smem=0, cooperative=False):
    """launch() and synchronize, asserting success (the failure report is in the message)."""
    r = launch(f, grid, block, *args, smem=smem, cooperative=cooperative)
    assert r == SUCCESS, f"launch failed with {r!r}:\n{softgpu.last_report()}"
    ok(cu.cuCtxSynchronize())
