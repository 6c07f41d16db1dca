"""streamcheck: operations on different streams touching overlapping global bytes, one writing, with no
happens-before (events, stream waits, synchronisation) fail the later one with CUDA_ERROR_LAUNCH_FAILED and
a report naming both. Checked by vector clocks from the API calls, so it works inline and in async mode."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, Kernels, Params, code, ctx, from_device, launch, ok, primary, to_device  # noqa: F401

SOURCE = r"""
extern "C" __global__ void produce(int* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i;
}
extern "C" __global__ void consume(const int* x, int* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + 1;
}
"""
N = 128
FAILED = R.CUDA_ERROR_LAUNCH_FAILED


@pytest.fixture(params=["inline", "async"])
def env(ctx, request):
    with softgpu.set_async(request.param == "async"), softgpu.checks_set(streamcheck=True):
        k = Kernels(SOURCE)
        flags = cu.CUstream_flags.CU_STREAM_NON_BLOCKING
        s1, s2 = ok(cu.cuStreamCreate(flags)), ok(cu.cuStreamCreate(flags))
        x, y, z = (to_device(np.zeros(N, np.int32)) for _ in range(3))
        yield k, s1, s2, x, y, z
        cu.cuCtxSynchronize()
        for s in (s1, s2):
            ok(cu.cuStreamDestroy(s))
        for p in (x, y, z):
            ok(cu.cuMemFree(p))
        k.close()


def produce(k, x, s):
    return launch(k.fn("produce"), (1,), (N,), Params((x, np.uint64), (N, np.int32)), stream=s)


def consume(k, x, y, s):
    return launch(k.fn("consume"), (1,), (N,), Params((x, np.uint64), (y, np.uint64), (N, np.int32)), stream=s)


def result_of(r, s):
    """Inline mode returns the failure from the call; async mode from the stream's synchronize."""
    return r if softgpu.async_mode() is False else code(cu.cuStreamSynchronize(s))


def test_unordered_producer_consumer_is_reported(env):
    k, s1, s2, x, y, _ = env
    assert produce(k, x, s1) == R.CUDA_SUCCESS
    assert result_of(consume(k, x, y, s2), s2) == FAILED
    report = softgpu.last_report()
    assert report.startswith("streamcheck: kernel consume on stream"), report
    assert "kernel produce on stream" in report and "writes %d bytes" % (4 * N) in report, report
    assert "reads %d bytes [0x%x, 0x%x)" % (4 * N, int(x), int(x) + 4 * N) in report, report


def test_event_ordered_pair_is_silent(env):
    k, s1, s2, x, y, _ = env
    e = ok(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING))
    assert produce(k, x, s1) == R.CUDA_SUCCESS
    ok(cu.cuEventRecord(e, s1))
    ok(cu.cuStreamWaitEvent(s2, e, 0))
    assert result_of(consume(k, x, y, s2), s2) == R.CUDA_SUCCESS
    ok(cu.cuStreamSynchronize(s2))
    np.testing.assert_array_equal(from_device(y, N, np.int32), np.arange(N) + 1)
    ok(cu.cuEventDestroy(e))


def test_pair_after_a_synchronize_is_silent(env):
    k, s1, s2, x, y, _ = env
    assert produce(k, x, s1) == R.CUDA_SUCCESS
    ok(cu.cuStreamSynchronize(s1))
    assert result_of(consume(k, x, y, s2), s2) == R.CUDA_SUCCESS
    ok(cu.cuCtxSynchronize())


def test_readers_on_two_streams_and_disjoint_writers_are_silent(env):
    k, s1, s2, x, y, z = env
    assert produce(k, x, s1) == R.CUDA_SUCCESS
    ok(cu.cuCtxSynchronize())
    assert consume(k, x, y, s1) == R.CUDA_SUCCESS
    assert consume(k, x, z, s2) == R.CUDA_SUCCESS  # both read x, write different buffers
    ok(cu.cuCtxSynchronize())


def test_copy_racing_a_kernel_is_reported(env):
    k, s1, s2, x, y, _ = env
    assert consume(k, x, y, s1) == R.CUDA_SUCCESS
    r = code(cu.cuMemcpyHtoDAsync(x, np.ones(N, np.int32), 4 * N, s2))
    assert result_of(r, s2) == FAILED
    report = softgpu.last_report()
    assert "streamcheck: memcpy HtoD of %d bytes on stream" % (4 * N) in report, report
    assert "kernel consume on stream" in report, report
