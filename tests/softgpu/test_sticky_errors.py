"""Error delivery: a kernel fault goes to the synchronize of the stream that ran it (and a context-wide
synchronize, and a synchronous copy that waits for it), never to an unrelated stream. Sticky mode
(CYBN_SOFTGPU_STICKY=1 / softgpu.sticky(True)): every later call on the context returns the fault until
cuCtxDestroy or cuDevicePrimaryCtxReset, as on hardware."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, Kernels, Params, code, ctx, from_device, launch, ok, primary, to_device  # noqa: F401

SOURCE = r"""
extern "C" __global__ void past_end(int* x, int n) { if (threadIdx.x == 0) x[n] = 1; }
extern "C" __global__ void fill(int* x, int v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}
"""
ILLEGAL = R.CUDA_ERROR_ILLEGAL_ADDRESS


@pytest.fixture
def kernels(ctx):
    k = Kernels(SOURCE)
    yield k
    k.close()


def fault(kernels, x, stream=0):
    return launch(kernels.fn("past_end"), (1,), (1,), Params((x, np.uint64), (4, np.int32)), stream=stream)


def test_fault_goes_to_its_own_stream_not_another(kernels):
    x = to_device(np.zeros(4, np.int32))
    a, b = ok(cu.cuStreamCreate(0)), ok(cu.cuStreamCreate(0))
    assert fault(kernels, x, a) == ILLEGAL
    ok(cu.cuStreamSynchronize(b))                      # unrelated stream: nothing to report
    assert code(cu.cuStreamSynchronize(a)) == ILLEGAL  # the stream that ran it
    ok(cu.cuStreamSynchronize(a))                      # delivered once
    ok(cu.cuCtxSynchronize())
    for s in (a, b):
        ok(cu.cuStreamDestroy(s))
    ok(cu.cuMemFree(x))


def test_context_synchronize_reports_any_stream(kernels):
    x = to_device(np.zeros(4, np.int32))
    s = ok(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
    assert fault(kernels, x, s) == ILLEGAL
    assert code(cu.cuCtxSynchronize()) == ILLEGAL
    ok(cu.cuStreamSynchronize(s))  # taken by the context synchronize
    ok(cu.cuStreamDestroy(s))
    ok(cu.cuMemFree(x))


def test_synchronous_copy_returns_a_fault_it_waited_for(kernels):
    x = to_device(np.zeros(4, np.int32))
    out = np.empty(4, np.int32)
    assert fault(kernels, x) == ILLEGAL  # legacy stream
    assert code(cu.cuMemcpyDtoH(out, x, 16)) == ILLEGAL
    ok(cu.cuCtxSynchronize())
    s = ok(cu.cuStreamCreate(0))  # a blocking stream: the legacy-stream copy waits for it
    assert fault(kernels, x, s) == ILLEGAL
    assert code(cu.cuMemcpyHtoD(x, out, 16)) == ILLEGAL
    ok(cu.cuStreamSynchronize(s))
    ok(cu.cuStreamDestroy(s))
    ok(cu.cuMemFree(x))


def test_synchronous_copy_does_not_report_a_non_blocking_stream(kernels):
    x = to_device(np.zeros(4, np.int32))
    s = ok(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
    assert fault(kernels, x, s) == ILLEGAL
    np.testing.assert_array_equal(from_device(x, 4, np.int32), np.zeros(4, np.int32))
    assert code(cu.cuStreamSynchronize(s)) == ILLEGAL
    ok(cu.cuStreamDestroy(s))
    ok(cu.cuMemFree(x))


def test_sticky_fault_poisons_its_context_until_destroyed(primary):
    with softgpu.sticky(True):
        c = ok(cu.cuCtxCreate(None, 0, 0))  # current now
        try:
            k = Kernels(SOURCE)
            x = to_device(np.zeros(4, np.int32))
            assert fault(k, x) == ILLEGAL
            assert code(cu.cuCtxSynchronize()) == ILLEGAL
            assert code(cu.cuCtxSynchronize()) == ILLEGAL  # not cleared: sticky
            assert code(cu.cuMemAlloc(16)) == ILLEGAL
            assert code(cu.cuMemcpyDtoH(np.empty(4, np.int32), x, 16)) == ILLEGAL
            assert code(cu.cuMemsetD8(x, 0, 16)) == ILLEGAL
            assert code(cu.cuStreamCreate(0)) == ILLEGAL
            assert launch(k.fn("fill"), (1,), (4,), Params((x, np.uint64), (1, np.int32), (4, np.int32))) == ILLEGAL
        finally:
            ok(cu.cuCtxDestroy(c))  # frees the module and x with the context
        # Another context is unaffected, and work there succeeds.
        ok(cu.cuCtxPushCurrent(primary))
        try:
            k = Kernels(SOURCE)
            x = to_device(np.zeros(4, np.int32))
            assert launch(k.fn("fill"), (1,), (4,), Params((x, np.uint64), (7, np.int32), (4, np.int32))) == \
                R.CUDA_SUCCESS
            np.testing.assert_array_equal(from_device(x, 4, np.int32), np.full(4, 7, np.int32))
            ok(cu.cuMemFree(x))
            k.close()
        finally:
            ok(cu.cuCtxPopCurrent())


def test_sticky_primary_context_until_reset():
    """In a subprocess: resetting the primary context would pull memory from under this session."""
    script = textwrap.dedent("""
        import numpy as np
        from cybn import softgpu
        softgpu.load()
        from cuda.bindings import driver as cu
        import driverutil as du
        du.ok(cu.cuInit(0)); ctx = du.ok(cu.cuDevicePrimaryCtxRetain(0)); du.ok(cu.cuCtxSetCurrent(ctx))
        k = du.Kernels(SOURCE)
        x = du.to_device(np.zeros(4, np.int32))
        r = [du.launch(k.fn("past_end"), (1,), (1,), du.Params((x, np.uint64), (4, np.int32)))]
        r += [du.code(cu.cuCtxSynchronize()), du.code(cu.cuMemAlloc(16)), du.code(cu.cuCtxSynchronize())]
        du.ok(cu.cuDevicePrimaryCtxReset(0))
        ctx = du.ok(cu.cuDevicePrimaryCtxRetain(0)); du.ok(cu.cuCtxSetCurrent(ctx))
        k = du.Kernels(SOURCE)
        y = du.to_device(np.zeros(4, np.int32))
        r.append(du.launch(k.fn("fill"), (1,), (4,), du.Params((y, np.uint64), (3, np.int32), (4, np.int32))))
        print(*[int(v) for v in r], du.from_device(y, 4, np.int32).tolist())
    """)
    env = dict(os.environ, CYBN_SOFTGPU_STICKY="1")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.abspath(softgpu.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here, root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", "SOURCE = %r\n" % SOURCE + script], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    i = str(int(ILLEGAL))
    assert proc.stdout.split() == [i, i, i, i, "0", "[3,", "3,", "3,", "3]"], proc.stdout


def test_sticky_rejects_bad_switch_values():
    with pytest.raises(TypeError):
        softgpu.sticky(1)
    proc = subprocess.run([sys.executable, "-c", "from cybn import softgpu; softgpu.load()\n"
                           "from cuda.bindings import driver as cu; print(int(cu.cuInit(0)[0]))"],
                          env=dict(os.environ, CYBN_SOFTGPU_STICKY="yes"), capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == str(int(R.CUDA_ERROR_INVALID_VALUE)), proc.stdout + proc.stderr
    assert "CYBN_SOFTGPU_STICKY" in proc.stderr
