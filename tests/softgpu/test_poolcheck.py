"""cybn's MemoryPool and streamcheck: a block used on another stream than its own and freed is reused only
after that stream's work (an event per block); without record_stream the reuse races and streamcheck says so."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

import cybn
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
    with cybn.stream(s1):  # freed on its own stream: no event for the freeing stream
        del a
    b = pool.malloc(4 * N, stream=s1)
    r = code(cu.cuMemsetD32Async(b.ptr, 7, N, s1.handle))
    if softgpu.async_mode():
        # The worker may run either stream's operation first: the later of the two fails, on its own stream.
        r1, r2 = code(cu.cuStreamSynchronize(s1.handle)), code(cu.cuStreamSynchronize(s2.handle))
        r = r1 if r1 != R.CUDA_SUCCESS else r2
    return old, b, r


def test_reuse_waits_for_the_other_stream(setup):
    old, b, r = use_on_other_stream(*setup, record=True)
    assert r == R.CUDA_SUCCESS, softgpu.last_report()
    if not softgpu.async_mode():
        assert b.ptr == old  # the event had completed: the block came back (after the other stream)
    cu.cuCtxSynchronize()


def test_reuse_without_record_stream_is_caught(setup):
    old, b, r = use_on_other_stream(*setup, record=False)
    assert b.ptr == old  # the pool did not know about s2 and handed the block out at once
    report = softgpu.last_report()
    memset = "memset of %d bytes on stream" % (4 * N)
    if softgpu.async_mode() and r == R.CUDA_ERROR_ILLEGAL_ADDRESS:
        # The third order: the worker ran the kernel after the free and before the reuse; memcheck sees a
        # load from a block its pool holds free.
        assert report.startswith("memcheck: kernel consume"), report
        assert "that its pool holds free" in report, report
        cu.cuCtxSynchronize()
        return
    assert r == R.CUDA_ERROR_LAUNCH_FAILED, report
    if softgpu.async_mode():  # whichever ran later is named first
        assert report.startswith(("streamcheck: " + memset, "streamcheck: kernel consume on stream")), report
        assert memset in report and "kernel consume on stream" in report, report
    else:
        assert report.startswith("streamcheck: " + memset), report
        assert "kernel consume on stream" in report, report
    cu.cuCtxSynchronize()


PAST_END = r"""
extern "C" __global__ void poke(int* x, int i) { x[i] = 1; }
"""


def test_memcheck_catches_an_overrun_inside_a_pooled_block(ctx):
    k = Kernels(PAST_END)
    pool = MemoryPool()
    a = pool.malloc(1000)  # a 1024-byte block: bytes 1000..1023 are not the array's
    poke = k.fn("poke")
    assert launch(poke, (1,), (1,), Params((a.ptr, np.uint64), (249, np.int32))) == R.CUDA_SUCCESS  # last int
    assert launch(poke, (1,), (1,), Params((a.ptr, np.uint64), (250, np.int32))) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    report = softgpu.last_report()
    assert "memcheck" in report and "0 bytes past the end of the pooled array (1000 bytes at 0x%x" % a.ptr in report, \
        report
    ptr = a.ptr
    del a  # back in the pool: any access is out of bounds until it is handed out again
    assert launch(poke, (1,), (1,), Params((ptr, np.uint64), (0, np.int32))) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert code(cu.cuCtxSynchronize()) == R.CUDA_ERROR_ILLEGAL_ADDRESS
    assert "that its pool holds free" in softgpu.last_report()
    b = pool.malloc(1024)
    assert b.ptr == ptr  # reused, with its new extent: the whole block
    assert launch(poke, (1,), (1,), Params((b.ptr, np.uint64), (255, np.int32))) == R.CUDA_SUCCESS
    ok(cu.cuCtxSynchronize())
    del b
    pool.free_all()
    k.close()


def test_pool_block_refuses_what_is_not_a_device_allocation(ctx):
    p = ok(cu.cuMemAlloc(512))
    with pytest.raises(ValueError, match="pool_block"):
        softgpu.pool_block(int(p) + 16, 8)  # not the start of an allocation
    with pytest.raises(ValueError, match="pool_block"):
        softgpu.pool_block(int(p), 513)  # more than was allocated
    softgpu.pool_block(int(p), 512)
    ok(cu.cuMemFree(p))
