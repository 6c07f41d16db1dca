"""Device and pinned memory on the software GPU: copies, memsets, info, pointer attributes, leaks."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, code, ctx, device_alloc, from_device, host_view, ok, primary, to_device  # noqa: F401

P = cu.CUpointer_attribute


def test_htod_dtoh_dtod_round_trip(ctx):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(1000).astype(np.float64)
    pa = to_device(a)
    pb = device_alloc(a.nbytes)
    ok(cu.cuMemcpyDtoD(pb, pa, a.nbytes))
    np.testing.assert_array_equal(from_device(pb, 1000, np.float64), a)
    # A partial copy at an offset lands exactly there.
    ok(cu.cuMemcpyDtoD(int(pb) + 8 * 10, int(pa) + 8 * 500, 8 * 20))
    expect = a.copy()
    expect[10:30] = a[500:520]
    np.testing.assert_array_equal(from_device(pb, 1000, np.float64), expect)
    ok(cu.cuMemFree(pa))
    ok(cu.cuMemFree(pb))


def test_memsets_write_the_pattern(ctx):
    n = 64
    p = device_alloc(4 * n)
    ok(cu.cuMemsetD8(p, 0xAB, 4 * n))
    np.testing.assert_array_equal(from_device(p, 4 * n, np.uint8), np.full(4 * n, 0xAB, np.uint8))
    ok(cu.cuMemsetD16(int(p) + 2, 0xBEEF, 3))
    expect = np.full(4 * n, 0xAB, np.uint8)
    expect[2:8] = np.array([0xEF, 0xBE] * 3, np.uint8)  # little-endian 16-bit words
    np.testing.assert_array_equal(from_device(p, 4 * n, np.uint8), expect)
    ok(cu.cuMemsetD32(p, 0x3F800000, n))
    np.testing.assert_array_equal(from_device(p, n, np.float32), np.ones(n, np.float32))
    stream = ok(cu.cuStreamCreate(0))
    ok(cu.cuMemsetD32Async(p, 7, n, stream))
    ok(cu.cuStreamSynchronize(stream))
    np.testing.assert_array_equal(from_device(p, n, np.uint32), np.full(n, 7, np.uint32))
    ok(cu.cuStreamDestroy(stream))
    # Misaligned 16/32-bit memsets are refused and write nothing.
    assert code(cu.cuMemsetD32(int(p) + 2, 0, 1)) == R.CUDA_ERROR_INVALID_VALUE
    assert code(cu.cuMemsetD16(int(p) + 1, 0, 1)) == R.CUDA_ERROR_INVALID_VALUE
    np.testing.assert_array_equal(from_device(p, n, np.uint32), np.full(n, 7, np.uint32))
    ok(cu.cuMemFree(p))


def test_copies_past_an_allocation_are_refused(ctx):
    p = to_device(np.arange(16, dtype=np.int32))
    host = np.zeros(17, np.int32)
    assert code(cu.cuMemcpyDtoH(host, p, 17 * 4)) == R.CUDA_ERROR_INVALID_VALUE
    assert code(cu.cuMemcpyHtoD(int(p) + 4, host, 16 * 4)) == R.CUDA_ERROR_INVALID_VALUE
    assert code(cu.cuMemsetD8(p, 0, 65)) == R.CUDA_ERROR_INVALID_VALUE
    np.testing.assert_array_equal(host, np.zeros(17, np.int32))
    np.testing.assert_array_equal(from_device(p, 16, np.int32), np.arange(16, dtype=np.int32))
    ok(cu.cuMemFree(p))


def test_free_rules(ctx):
    p = device_alloc(256)
    assert code(cu.cuMemFree(int(p) + 16)) == R.CUDA_ERROR_INVALID_VALUE  # interior pointer
    assert code(cu.cuMemFree(0x1234560)) == R.CUDA_ERROR_INVALID_VALUE     # never allocated
    ok(cu.cuMemFree(p))
    assert code(cu.cuMemFree(p)) == R.CUDA_ERROR_INVALID_VALUE             # double free
    assert code(cu.cuMemAlloc(0)) == R.CUDA_ERROR_INVALID_VALUE
    # Addresses are never reused, so a later allocation cannot alias the freed one.
    q = device_alloc(256)
    assert int(q) != int(p)
    assert code(cu.cuMemcpyHtoD(p, np.zeros(4, np.uint8), 4)) == R.CUDA_ERROR_INVALID_VALUE
    ok(cu.cuMemFree(q))


def test_mem_get_info_and_address_range(ctx):
    free0, total = ok(cu.cuMemGetInfo())
    assert total == 4 << 30 and free0 <= total
    p = device_alloc(3 << 20)
    free1, _ = ok(cu.cuMemGetInfo())
    assert free0 - free1 == 3 << 20
    base, size = ok(cu.cuMemGetAddressRange(int(p) + 1000))
    assert (int(base), size) == (int(p), 3 << 20)
    assert int(p) % 256 == 0
    ok(cu.cuMemFree(p))
    assert ok(cu.cuMemGetInfo())[0] == free0
    assert code(cu.cuMemGetAddressRange(p)) == R.CUDA_ERROR_NOT_FOUND


def test_pointer_attributes(ctx):
    p = device_alloc(1000)
    assert ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, int(p) + 10)) == \
        cu.CUmemorytype.CU_MEMORYTYPE_DEVICE
    assert int(ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_CONTEXT, p))) == int(ctx)
    assert int(ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_DEVICE_POINTER, int(p) + 10))) == int(p) + 10
    assert int(ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, int(p) + 10))) == int(p)
    assert ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_RANGE_SIZE, int(p) + 10)) == 1000
    assert ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_IS_MANAGED, p)) is False
    assert ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_MAPPED, p)) is True
    assert ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p)) == 0
    q = device_alloc(16)
    ids = {ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_BUFFER_ID, x)) for x in (p, q)}
    assert len(ids) == 2
    assert code(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_HOST_POINTER, p)) == R.CUDA_ERROR_INVALID_VALUE
    assert code(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, 0x10)) == R.CUDA_ERROR_INVALID_VALUE
    # cuPointerGetAttributes reads an unknown pointer as zeros rather than failing.
    attrs = [P.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, P.CU_POINTER_ATTRIBUTE_RANGE_SIZE]
    assert list(ok(cu.cuPointerGetAttributes(2, attrs, q))) == [cu.CUmemorytype.CU_MEMORYTYPE_DEVICE, 16]
    assert list(ok(cu.cuPointerGetAttributes(2, attrs, 0x10))) == [0, 0]
    ok(cu.cuMemFree(p))
    ok(cu.cuMemFree(q))


def test_pinned_memory_and_async_copies_on_streams(ctx):
    n = 4096
    h = ok(cu.cuMemAllocHost(n * 4))
    view = host_view(h, n * 4, np.float32)
    view[:] = np.arange(n, dtype=np.float32)
    assert ok(cu.cuPointerGetAttribute(P.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, h)) == cu.CUmemorytype.CU_MEMORYTYPE_HOST
    assert int(ok(cu.cuMemHostGetDevicePointer(h, 0))) == int(h)  # unified addressing
    s1 = ok(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING))
    s2 = ok(cu.cuStreamCreateWithPriority(0, -3))
    d = device_alloc(n * 4)
    ok(cu.cuMemcpyHtoDAsync(d, h, n * 4, s1))
    ok(cu.cuMemsetD32Async(int(d), 0, 16, s1))  # same stream: after the copy
    ok(cu.cuStreamSynchronize(s1))
    out = ok(cu.cuMemHostAlloc(n * 4, cu.CU_MEMHOSTALLOC_DEVICEMAP))
    ok(cu.cuMemcpyDtoHAsync(out, d, n * 4, s2))
    ok(cu.cuStreamSynchronize(s2))
    expect = np.arange(n, dtype=np.float32)
    expect[:16] = 0
    np.testing.assert_array_equal(host_view(out, n * 4, np.float32), expect)
    # cuMemcpy infers directions from the addresses (unified addressing).
    view[:] = -1
    ok(cu.cuMemcpy(h, d, n * 4))
    np.testing.assert_array_equal(view, expect)
    ok(cu.cuMemcpyAsync(d, h, 64, s2))
    for x in (s1, s2):
        ok(cu.cuStreamDestroy(x))
    ok(cu.cuMemFree(d))
    ok(cu.cuMemFreeHost(h))
    ok(cu.cuMemFreeHost(out))
    assert code(cu.cuMemFreeHost(h)) == R.CUDA_ERROR_INVALID_VALUE


def test_host_register(ctx):
    a = np.arange(2048, dtype=np.int32)
    addr = a.ctypes.data
    ok(cu.cuMemHostRegister(addr, a.nbytes, cu.CU_MEMHOSTREGISTER_DEVICEMAP))
    assert code(cu.cuMemHostRegister(addr + 64, 64, 0)) == R.CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
    assert int(ok(cu.cuMemHostGetDevicePointer(addr, 0))) == addr
    assert softgpu.live_pinned_allocations()[1] >= a.nbytes
    d = device_alloc(a.nbytes)
    ok(cu.cuMemcpyHtoD(d, addr, a.nbytes))
    np.testing.assert_array_equal(from_device(d, 2048, np.int32), a)
    ok(cu.cuMemHostUnregister(addr))
    assert code(cu.cuMemHostUnregister(addr)) == R.CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED
    np.testing.assert_array_equal(a, np.arange(2048, dtype=np.int32))  # user memory untouched
    ok(cu.cuMemFree(d))


def test_leak_counting_and_copy_counters(ctx):
    count0, bytes0 = softgpu.live_allocations()
    pinned0 = softgpu.live_pinned_allocations()
    with softgpu.measure() as m:
        ps = [device_alloc(1000 * (i + 1)) for i in range(3)]
        h = ok(cu.cuMemAllocHost(100))
        assert softgpu.live_allocations() == (count0 + 3, bytes0 + 6000)
        assert softgpu.live_pinned_allocations() == (pinned0[0] + 1, pinned0[1] + 100)
        ok(cu.cuMemcpyHtoD(ps[0], np.zeros(1000, np.uint8), 1000))
        ok(cu.cuMemcpyDtoD(ps[1], ps[0], 1000))
        ok(cu.cuMemcpyDtoH(np.zeros(10, np.uint8), ps[1], 10))
        ok(cu.cuMemsetD8(ps[2], 1, 3000))
        for p in ps:
            ok(cu.cuMemFree(p))
        ok(cu.cuMemFreeHost(h))
    assert softgpu.live_allocations() == (count0, bytes0)
    assert softgpu.live_pinned_allocations() == pinned0
    assert m.counters["memcpy"] == {"htod_bytes": 1000, "dtoh_bytes": 10, "dtod_bytes": 1000, "htoh_bytes": 0,
                                    "calls": 3}
    assert m.counters["memset"] == {"bytes": 3000, "calls": 1}
    assert m.launches_count == 0 and m.counters["total"]["global_load_bytes"] == 0  # copies are not kernel traffic


def test_null_arguments(ctx):
    lib = __import__("ctypes").CDLL(softgpu.library_path())
    assert lib.cuMemAlloc_v2(None, 16) == R.CUDA_ERROR_INVALID_VALUE
    assert lib.cuMemGetInfo_v2(None, None) == R.CUDA_ERROR_INVALID_VALUE
    assert lib.cuDeviceGetCount(None) == R.CUDA_ERROR_INVALID_VALUE
    assert lib.cuStreamCreate(None, 0) == R.CUDA_ERROR_INVALID_VALUE


@pytest.mark.parametrize("bad", [0xdead0000, 1 << 47])
def test_unknown_device_pointer_copies_refused(ctx, bad):
    host = np.ones(4, np.uint8)
    assert code(cu.cuMemcpyHtoD(bad, host, 4)) == R.CUDA_ERROR_INVALID_VALUE
    assert code(cu.cuMemcpyDtoH(host, bad, 4)) == R.CUDA_ERROR_INVALID_VALUE
    np.testing.assert_array_equal(host, np.ones(4, np.uint8))
