"""Async mode (softgpu.set_async / CYBN_SOFTGPU_ASYNC=1): stream work runs on the software GPU's worker
thread in stream order, asynchronously to the host; queries say CUDA_ERROR_NOT_READY while work is pending;
events, stream waits, the legacy stream's implicit ordering and synchronous copies order it."""
import ctypes
import threading

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, Kernels, Params, code, ctx, from_device, launch, ok, primary, to_device  # noqa: F401

SOURCE = r"""
extern "C" __global__ void add(int* x, int v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += v;
}
extern "C" __global__ void copy_twice(const int* x, int* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2 * x[i];
}
"""
N = 256
HOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@pytest.fixture
def kernels(ctx):
    with softgpu.set_async(True):
        k = Kernels(SOURCE)
        yield k
        k.close()


def add(kernels, x, v, stream=0):
    return launch(kernels.fn("add"), (N // 128,), (128,), Params((x, np.uint64), (v, np.int32), (N, np.int32)),
                  stream=stream)


class Gate:
    """A host function that blocks its stream until open() is called."""

    def __init__(self):
        self.event = threading.Event()
        self.fn = HOST_FN(lambda user: self.event.wait(10))
        self.handle = cu.CUhostFn(ctypes.cast(self.fn, ctypes.c_void_p).value)

    def open(self):
        self.event.set()


def test_queries_are_not_ready_while_work_is_pending(kernels):
    from cybn.stream import Stream
    s = Stream()
    x = to_device(np.zeros(N, np.int32))
    gate = Gate()
    e = ok(cu.cuEventCreate(0))
    ok(cu.cuLaunchHostFunc(s.handle, gate.handle, 0))
    assert add(kernels, x, 5, s.handle) == R.CUDA_SUCCESS  # queued behind the gate
    ok(cu.cuEventRecord(e, s.handle))
    assert code(cu.cuStreamQuery(s.handle)) == R.CUDA_ERROR_NOT_READY
    assert code(cu.cuEventQuery(e)) == R.CUDA_ERROR_NOT_READY
    assert code(cu.cuEventElapsedTime(e, e)) == R.CUDA_ERROR_NOT_READY
    np.testing.assert_array_equal(from_device(x, N, np.int32), np.zeros(N, np.int32))  # non-blocking s: not waited for
    gate.open()
    s.synchronize()  # GIL released while it waits (the host function needs it)
    ok(cu.cuStreamQuery(s.handle))
    ok(cu.cuEventQuery(e))
    np.testing.assert_array_equal(from_device(x, N, np.int32), np.full(N, 5, np.int32))
    ok(cu.cuEventDestroy(e))
    ok(cu.cuMemFree(x))


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_event_wait_orders_a_consumer_after_its_producer(kernels, seed):
    softgpu.async_seed(seed)
    try:
        flags = cu.CUstream_flags.CU_STREAM_NON_BLOCKING
        s1, s2 = ok(cu.cuStreamCreate(flags)), ok(cu.cuStreamCreate(flags))
        x = to_device(np.arange(N, dtype=np.int32))
        y = to_device(np.zeros(N, np.int32))
        e = ok(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING))
        for _ in range(3):
            assert add(kernels, x, 1, s1) == R.CUDA_SUCCESS
        ok(cu.cuEventRecord(e, s1))
        ok(cu.cuStreamWaitEvent(s2, e, 0))
        p = Params((x, np.uint64), (y, np.uint64), (N, np.int32))
        assert launch(kernels.fn("copy_twice"), (N // 128,), (128,), p, stream=s2) == R.CUDA_SUCCESS
        ok(cu.cuStreamSynchronize(s2))
        np.testing.assert_array_equal(from_device(y, N, np.int32), 2 * (np.arange(N) + 3))
        ok(cu.cuCtxSynchronize())
        for s in (s1, s2):
            ok(cu.cuStreamDestroy(s))
        ok(cu.cuEventDestroy(e))
        for p_ in (x, y):
            ok(cu.cuMemFree(p_))
    finally:
        softgpu.async_seed(0)


def test_legacy_stream_waits_for_blocking_streams_not_non_blocking_ones(kernels):
    blocking = ok(cu.cuStreamCreate(0))
    free = ok(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
    x, z = to_device(np.zeros(N, np.int32)), to_device(np.zeros(N, np.int32))
    gate = Gate()
    ok(cu.cuLaunchHostFunc(free, gate.handle, 0))
    assert add(kernels, z, 9, free) == R.CUDA_SUCCESS  # held back by the gate
    assert add(kernels, x, 4, blocking) == R.CUDA_SUCCESS
    # A synchronous copy on the legacy stream waits for the blocking stream, not for the gated one.
    np.testing.assert_array_equal(from_device(x, N, np.int32), np.full(N, 4, np.int32))
    np.testing.assert_array_equal(from_device(z, N, np.int32), np.zeros(N, np.int32))
    gate.open()
    from cybn.device import Device
    Device().context().synchronize()  # GIL released
    np.testing.assert_array_equal(from_device(z, N, np.int32), np.full(N, 9, np.int32))
    for s in (blocking, free):
        ok(cu.cuStreamDestroy(s))
    for p in (x, z):
        ok(cu.cuMemFree(p))


def test_async_copy_from_pageable_memory_is_staged_at_the_call(kernels):
    s = ok(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
    gate = Gate()
    x = to_device(np.zeros(N, np.int32))
    host = np.full(N, 3, np.int32)
    ok(cu.cuLaunchHostFunc(s, gate.handle, 0))
    ok(cu.cuMemcpyHtoDAsync(x, host, host.nbytes, s))  # runs after the gate opens
    host[:] = 99  # the caller may reuse a pageable buffer at once
    gate.open()
    from cybn.device import Device
    Device().context().synchronize()
    np.testing.assert_array_equal(from_device(x, N, np.int32), np.full(N, 3, np.int32))
    ok(cu.cuStreamDestroy(s))
    ok(cu.cuMemFree(x))


def test_per_thread_default_streams_are_separate_queues(kernels):
    per_thread = cu.CUstream(cu.CU_STREAM_PER_THREAD)
    gate = Gate()
    ok(cu.cuLaunchHostFunc(per_thread, gate.handle, 0))
    assert code(cu.cuStreamQuery(per_thread)) == R.CUDA_ERROR_NOT_READY
    current, seen = ok(cu.cuCtxGetCurrent()), []

    def other():
        ok(cu.cuCtxPushCurrent(current))
        seen.append(code(cu.cuStreamQuery(per_thread)))
        ok(cu.cuCtxPopCurrent())
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [R.CUDA_SUCCESS]  # another thread's per-thread stream is idle
    gate.open()
    from cybn.device import Device
    Device().context().synchronize()
    ok(cu.cuStreamQuery(per_thread))


def test_set_async_validates_and_restores():
    was = softgpu.async_mode()
    with softgpu.set_async(not was):
        assert softgpu.async_mode() is (not was)
    assert softgpu.async_mode() is was
    with pytest.raises(TypeError):
        softgpu.set_async(1)
    with pytest.raises(ValueError):
        softgpu.async_seed(-1)
