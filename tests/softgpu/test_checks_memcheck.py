"""memcheck: kernels written to break it fail with the hardware's code from the launch AND the next
synchronize, the report names the kernel and the check, and the library stays usable after."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import (R, Kernels, Params, code, ctx, from_device, launch, ok, primary,  # noqa: F401
                        to_device)

U64, I32 = np.uint64, np.int32

SOURCE = r"""
extern "C" __global__ void past_end(int* x, int n) {
    if (threadIdx.x == 0) x[n] = 1;          // one element past the allocation
}
extern "C" __global__ void misaligned(const float* x, float* out) {
    float4 v = *reinterpret_cast<const float4*>(x + 1);   // 4-byte aligned, not 16
    out[0] = v.x + v.y + v.z + v.w;
}
extern "C" __global__ void reader(const int* x, int* out) {
    out[threadIdx.x] = x[threadIdx.x];
}
extern "C" __global__ void fill(int* x, int v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}
"""


@pytest.fixture
def kernels(ctx):
    k = Kernels(SOURCE)
    yield k
    k.close()


def still_usable(kernels):
    """A correct kernel runs right after a failure, and nothing is left pending."""
    p = to_device(np.zeros(100, np.int32))
    assert launch(kernels.fn("fill"), (1,), (128,), Params((p, U64), (42, I32), (100, I32))) == R.CUDA_SUCCESS
    ok(cu.cuCtxSynchronize())
    np.testing.assert_array_equal(from_device(p, 100, np.int32), np.full(100, 42, np.int32))
    ok(cu.cuMemFree(p))


def assert_reported(kernel, check):
    report = softgpu.last_report()
    assert kernel in report, report
    assert re.search(check, report, re.I), report


def test_store_past_the_end(kernels, capfd):
    x = to_device(np.zeros(16, np.int32))
    r = launch(kernels.fn("past_end"), (1,), (32,), Params((x, U64), (16, I32)))
    assert r == R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_ILLEGAL_ADDRESS  # reported again, once
    ok(cu.cuCtxSynchronize())
    assert_reported("past_end", "memcheck")
    assert "past the end" in softgpu.last_report()
    assert "softgpu: " in capfd.readouterr().err
    np.testing.assert_array_equal(from_device(x, 16, np.int32), np.zeros(16, np.int32))
    ok(cu.cuMemFree(x))
    still_usable(kernels)


def test_failure_reported_by_stream_and_event_synchronize(kernels):
    x = to_device(np.zeros(16, np.int32))
    s = ok(cu.cuStreamCreate(0))
    e = ok(cu.cuEventCreate(0))
    assert launch(kernels.fn("past_end"), (1,), (32,), Params((x, U64), (16, I32)), stream=s) == \
        R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert code(cu.cuStreamSynchronize(s)) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    ok(cu.cuStreamSynchronize(s))
    assert launch(kernels.fn("past_end"), (1,), (32,), Params((x, U64), (16, I32)), stream=s) == \
        R.CUDA_ERROR_ILLEGAL_ADDRESS
    ok(cu.cuEventRecord(e, s))
    assert code(cu.cuEventSynchronize(e)) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    ok(cu.cuEventSynchronize(e))
    ok(cu.cuEventDestroy(e))
    ok(cu.cuStreamDestroy(s))
    ok(cu.cuMemFree(x))
    still_usable(kernels)


def test_misaligned_vector_load(kernels):
    x = to_device(np.arange(8, dtype=np.float32))
    out = to_device(np.zeros(1, np.float32))
    params = Params((x, U64), (out, U64))
    r = launch(kernels.fn("misaligned"), (1,), (1,), params)
    assert r == R.CUDA_ERROR_ILLEGAL_ADDRESS  # memcheck findings are 700 (softgpu.hpp contract)
    assert code(cu.cuCtxSynchronize()) == r
    assert_reported("misaligned", "misaligned")
    still_usable(kernels)
    # With memcheck off the load just happens (the host has no alignment trap).
    with softgpu.checks_set(memcheck=False):
        assert launch(kernels.fn("misaligned"), (1,), (1,), params) == R.CUDA_SUCCESS
    assert from_device(out, 1, np.float32)[0] == 1 + 2 + 3 + 4
    for p in (x, out):
        ok(cu.cuMemFree(p))


def test_use_after_free(kernels):
    x = to_device(np.arange(32, dtype=np.int32))
    out = to_device(np.zeros(32, np.int32))
    ok(cu.cuMemFree(x))
    assert launch(kernels.fn("reader"), (1,), (32,), Params((x, U64), (out, U64))) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert_reported("reader", "memcheck")
    assert "freed" in softgpu.last_report()
    np.testing.assert_array_equal(from_device(out, 32, np.int32), np.zeros(32, np.int32))
    ok(cu.cuMemFree(out))
    still_usable(kernels)


def test_memcheck_off_does_not_crash_on_out_of_allocation_access():
    """In a subprocess, so that a crash could not take the test session down with it."""
    script = textwrap.dedent("""
        import numpy as np
        from cybn import softgpu
        softgpu.load()
        softgpu.set_checks(memcheck=False)
        from cuda.bindings import driver as cu
        import driverutil as du
        du.ok(cu.cuInit(0)); ctx = du.ok(cu.cuDevicePrimaryCtxRetain(0)); du.ok(cu.cuCtxSetCurrent(ctx))
        k = du.Kernels(SOURCE)
        x = du.to_device(np.zeros(16, np.int32))
        r1 = du.launch(k.fn("past_end"), (1,), (1,), du.Params((x, np.uint64), (16, np.int32)))
        cu.cuCtxSynchronize()  # takes r1's failure (a synchronous copy would return it)
        y = du.to_device(np.zeros(16, np.int32)); out = du.to_device(np.zeros(32, np.int32))
        du.ok(cu.cuMemFree(y))
        r2 = du.launch(k.fn("reader"), (1,), (32,), du.Params((y, np.uint64), (out, np.uint64)))
        cu.cuCtxSynchronize()
        f = du.to_device(np.zeros(4, np.int32))
        r3 = du.launch(k.fn("fill"), (1,), (4,), du.Params((f, np.uint64), (9, np.int32), (4, np.int32)))
        print(int(r1), int(r2), int(r3), du.from_device(f, 4, np.int32).tolist())
    """)
    env = dict(os.environ, CYBN_SOFTGPU_CHECKS="all")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.abspath(softgpu.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here, root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", "SOURCE = %r\n" % SOURCE + script], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r1, r2, r3, rest = proc.stdout.split(" ", 3)
    ok_or_illegal = {str(int(R.CUDA_SUCCESS)), str(int(R.CUDA_ERROR_ILLEGAL_ADDRESS))}
    assert r1 in ok_or_illegal and r2 in ok_or_illegal, proc.stdout
    assert r3 == "0" and rest.strip() == "[9, 9, 9, 9]"
