"""Streams (own, external, legacy, current-stream context) and events (ordering, wait, elapsed)."""
import threading
import time

import numpy as np
import pytest
from cuda.bindings import driver

import cybn
from cybn import Event, Stream, current_stream, get_function

SRC = r'''
extern "C" __global__ void add_one(float* x, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}
extern "C" __global__ void twice(const float* x, float* y, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i];
}
'''


def kernel(name):
    return get_function(SRC, name, {"add_one": "PQ", "twice": "PPQ"}[name])


def test_stream_basics():
    s = Stream()
    assert isinstance(s.handle, int) and s.handle != 0
    s.synchronize()
    assert s.query() is True
    assert Stream(non_blocking=False, priority=0).handle != s.handle
    assert "owned" in repr(s)


def test_legacy_stream_and_default_current_stream():
    leg = Stream.legacy()
    assert leg.handle == 0 and Stream.legacy() is leg
    assert current_stream() is leg
    leg.synchronize()
    assert leg.query()


def test_stream_context_manager_nests_and_restores():
    s1, s2 = Stream(), Stream()
    with cybn.stream(s1) as got:
        assert got is s1 and current_stream() is s1
        with cybn.stream(s2):
            assert current_stream() is s2
        assert current_stream() is s1
    assert current_stream() is Stream.legacy()
    with cybn.stream(None):
        assert current_stream() is Stream.legacy()
    with pytest.raises(TypeError, match="cybn Stream"):
        cybn.stream(5)


def test_current_stream_is_per_thread():
    s = Stream()
    seen = []
    with cybn.stream(s):
        t = threading.Thread(target=lambda: seen.append(current_stream()))
        t.start()
        t.join()
        assert current_stream() is s
    assert seen == [Stream.legacy()]


def test_external_stream_is_not_destroyed_by_its_wrapper():
    err, handle = driver.cuStreamCreate(1)
    assert err == driver.CUresult.CUDA_SUCCESS
    owner = object()
    ext = Stream.external(int(handle), owner=owner)
    assert ext.handle == int(handle) and "external" in repr(ext)
    ext.synchronize()
    del ext
    # still a valid stream: the wrapper did not destroy it
    assert driver.cuStreamSynchronize(handle)[0] == driver.CUresult.CUDA_SUCCESS
    assert driver.cuStreamDestroy(handle)[0] == driver.CUresult.CUDA_SUCCESS


def test_stream_protocol_both_ways():
    s = Stream()
    assert s.__cuda_stream__() == (0, s.handle)

    class Foreign:
        def __cuda_stream__(self):
            return (0, s.handle)

    f = Foreign()
    assert Stream.external(f, owner=f).handle == s.handle
    assert Stream.external(driver.CUstream(s.handle)).handle == s.handle


def test_work_on_a_stream_and_event_ordering():
    n = 1000
    s1, s2 = Stream(), Stream()
    x = cybn.zeros(n, stream=s1)
    y = cybn.empty(n)
    for _ in range(5):
        kernel("add_one")((n + 255) // 256, 256, (x, n), stream=s1)
    done = s1.record()
    assert isinstance(done, Event)
    s2.wait(done)
    kernel("twice")((n + 255) // 256, 256, (x, y, n), stream=s2)
    s2.synchronize()
    assert done.query()
    np.testing.assert_array_equal(y.get(stream=s2), np.full(n, 10.0))


def test_launch_uses_the_current_stream():
    n = 256
    s = Stream()
    x = cybn.zeros(n, stream=s)  # zeroed on s, not the legacy stream (which s, non-blocking, does not wait for)
    with cybn.stream(s):
        kernel("add_one")(1, 256, (x, n))
        e = Event().record()
    e.synchronize()
    np.testing.assert_array_equal(x.get(), np.ones(n))


def test_event_elapsed_time():
    s = Stream()
    start, end = Event(), Event()
    start.record(s)
    kernel("add_one")(1, 32, (cybn.zeros(32, stream=s), 32), stream=s)
    end.record(s)
    end.synchronize()
    assert start.query() and end.query()
    ms = start.elapsed_ms(end)
    assert isinstance(ms, float) and ms >= 0.0


def test_event_errors():
    a, b = Event(timing=False), Event()
    with pytest.raises(ValueError, match="timing=True"):
        a.elapsed_ms(b)
    with pytest.raises(TypeError):
        b.elapsed_ms(None)
    with pytest.raises(TypeError, match="cybn Event"):
        Stream().wait(None)
    with pytest.raises(TypeError, match="stream must be"):
        b.record("not a stream")
    # an event never recorded has no elapsed time: the driver's error comes back as CudaError
    c, d = Event(), Event()
    with pytest.raises(cybn.CudaError) as info:
        c.elapsed_ms(d)
    assert info.value.call == "cuEventElapsedTime"


def test_launch_and_synchronize_release_the_gil():
    # The software GPU runs a kernel inside cuLaunchKernel: if cybn held the GIL there, this thread's
    # Python loop would stall for the whole kernel. Compare its longest pause with the kernel's duration.
    src = r'''extern "C" __global__ void spin(float* out, unsigned long long n) {
        float acc = 0.0f;
        for (unsigned long long i = 0; i < n; ++i) acc = acc * 0.5f + 1.0f;
        out[0] = acc; }'''
    f = get_function(src, "spin", "PQ")
    out = cybn.zeros(1)
    took = []

    def worker():
        t0 = time.perf_counter()
        f(1, 1, (out, 60_000_000))
        Stream.legacy().synchronize()
        took.append(time.perf_counter() - t0)

    t = threading.Thread(target=worker)
    last, longest = time.perf_counter(), 0.0
    t.start()
    while t.is_alive():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    t.join()
    assert out.get()[0] == 2.0
    assert took and took[0] > 0.05, "the kernel was too quick to tell"
    assert longest < 0.5 * took[0], (longest, took[0])
