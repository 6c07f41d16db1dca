"""cybn's MemoryPool and streamcheck: a block used on another stream than its own and freed is reused only
after that stream's work (an event per block); without record_stream the reuse races and streamcheck says so."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from cybn.memory import MemoryPool
from cybn.stream import Stream
from driverutil import R, Kernels, Params, code, ctx, launch, ok, primary  # noqa: F401

SOURCE = r"""
extern "C" __global__ void consume(const int* x, int* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + 1;
}
"""
N = 128


@pytest.fixture(params=["inline", "async"])
def setup(ctx, request):
    with softgpu.set_async(request.param == "async"), softgpu.checks_set(streamcheck=True):
        k = Kernels(SOURCE)
        pool, s1, s2 = MemoryPool(), Stream(), Stream()
        state = [k, pool, s1, s2, pool.malloc(4 * N, stream=s2)]
        yield state
        cu.cuCtxSynchronize()
        state.pop()  # pytest keeps the fixture value: drop the block before emptying the pool
        pool.free_all()
        k.close()


def use_on_other_stream(k, pool, s1, s2, out, record):
    """A block of s1 written on s1, read by a kernel on s2, freed; then a block of the same size on s1."""
    a = pool.malloc(4 * N, stream=s1)
    ok(cu.cuMemsetD32Async(a.ptr, 5, N, s1.handle))
    s1.synchronize()
    p = Params((a.ptr, np.uint64), (out.ptr, np.uint64), (N, np.int32))
    assert launch(k.fn("consume"), (1,), (N,), p, stream=s2.handle) == R.CUDA_SUCCESS
    if record:
        a.record_stream(s2)
    old = a.ptr
    del a
    b = pool.malloc(4 * N, stream=s1)
    r = code(cu.cuMemsetD32Async(b.ptr, 7, N, s1.handle))
    return old, b, r if not softgpu.async_mode() else code(cu.cuStreamSynchronize(s1.handle))


def test_reuse_waits_for_the_other_stream(setup):
    old, b, r = use_on_other_stream(*setup, record=True)
    assert r == R.CUDA_SUCCESS, softgpu.last_report()
    if not softgpu.async_mode():
        assert b.ptr == old  # the event had completed: the block came back (after the other stream)
    cu.cuCtxSynchronize()


def test_reuse_without_record_stream_is_caught(setup):
    old, b, r = use_on_other_stream(*setup, record=False)
    assert b.ptr == old  # the pool did not know about s2 and handed the block out at once
    assert r == R.CUDA_ERROR_LAUNCH_FAILED
    report = softgpu.last_report()
    assert report.startswith("streamcheck: memset of %d bytes on stream" % (4 * N)), report
    assert "kernel consume on stream" in report, report
    cu.cuCtxSynchronize()
