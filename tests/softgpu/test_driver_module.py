"""Module loading on the software GPU: PTX only; cubin/fatbin and bad PTX refused with their codes,
JIT error logs filled in, injected load failures."""
import struct

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, Kernels, code, ctx, ok, primary, ptx  # noqa: F401  (fixtures)

J = cu.CUjit_option

SOURCE = r"""
__device__ float scale = 2.0f;
extern "C" __global__ void __launch_bounds__(256) twice(float* x, int n) {
    __shared__ float tile[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (i < n) x[i] = tile[threadIdx.x] * scale;
}
"""


@pytest.mark.parametrize("image", [
    b"\x7fELF\x02\x01\x01" + b"\0" * 64,                       # a cubin
    struct.pack("<I", 0xBA55ED50) + b"\x01\x00" + b"\0" * 64,   # a fatbin
], ids=["cubin", "fatbin"])
def test_binary_images_refused(ctx, image):
    assert code(cu.cuModuleLoadData(image)) == R.CUDA_ERROR_INVALID_IMAGE
    assert "PTX" in softgpu.last_report()


def test_text_that_is_not_ptx_refused_with_a_report(ctx):
    assert code(cu.cuModuleLoadData(b"this is not PTX at all\0")) == R.CUDA_ERROR_INVALID_PTX
    assert softgpu.last_report() != ""


def test_jit_error_log_buffer_gets_the_text(ctx):
    log = bytearray(512)
    opts = [J.CU_JIT_ERROR_LOG_BUFFER, J.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES]
    err, _ = cu.cuModuleLoadDataEx(b"\x7fELF" + b"\0" * 32, 2, opts, [log, len(log)])
    assert err == R.CUDA_ERROR_INVALID_IMAGE
    text = bytes(log).split(b"\0")[0].decode()
    assert text == softgpu.last_report() and "PTX" in text


def test_injected_module_load_failures(ctx):
    image = ptx(SOURCE)
    with softgpu.fail_module_loads(2):
        assert code(cu.cuModuleLoadData(image)) == R.CUDA_ERROR_INVALID_IMAGE
        assert "injected" in softgpu.last_report()
        assert code(cu.cuModuleLoadData(image)) == R.CUDA_ERROR_INVALID_IMAGE
        k = Kernels(SOURCE)  # the third load works
        k.close()
    with softgpu.fail_module_loads(5):
        pass
    Kernels(SOURCE).close()  # disabled on exit


def test_functions_globals_and_attributes(ctx):
    k = Kernels(SOURCE)
    f = k.fn("twice")
    assert int(k.fn("twice")) == int(f)  # one handle per kernel
    assert code(cu.cuModuleGetFunction(k.module, b"nope")) == R.CUDA_ERROR_NOT_FOUND
    assert ok(cu.cuFuncGetName(f)) == b"twice"
    A = cu.CUfunction_attribute
    assert ok(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f)) == 256  # __launch_bounds__
    assert ok(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f)) == 256 * 4
    assert ok(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, f)) == 48 * 1024 - 1024
    assert ok(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_PTX_VERSION, f)) == 80
    assert 0 < ok(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_NUM_REGS, f)) <= 255
    assert ok(cu.cuFuncGetParamInfo(f, 0)) == (0, 8)
    assert ok(cu.cuFuncGetParamInfo(f, 1)) == (8, 4)
    assert code(cu.cuFuncGetParamInfo(f, 2)) == R.CUDA_ERROR_INVALID_VALUE
    addr, size = ok(cu.cuModuleGetGlobal(k.module, b"scale"))
    assert size == 4
    value = np.zeros(1, np.float32)
    ok(cu.cuMemcpyDtoH(value, addr, 4))
    assert value[0] == 2.0
    assert code(cu.cuModuleGetGlobal(k.module, b"missing")) == R.CUDA_ERROR_NOT_FOUND
    k.close()
    assert code(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_NUM_REGS, f)) == R.CUDA_ERROR_INVALID_HANDLE
    assert code(cu.cuModuleUnload(k.module)) == R.CUDA_ERROR_INVALID_HANDLE
