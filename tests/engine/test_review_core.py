"""Regression tests from the engine-core review: 0-d host arrays, element-count overflow, CUDA Array
Interface strides/readonly/data checks, empty arrays over DLPack, launch limits, pool size-class overflow."""
import numpy as np
import pytest

import cybn
from cybn import from_cuda_array_interface, from_dlpack, get_function, softgpu, to_gpu
from cybn.memory import DeviceBuffer, MemoryPool


# ---------------------------------------------------------------- 0-d host arrays keep their shape
@pytest.mark.parametrize("value", [np.float32(2.5), np.array(-7, np.int64), np.array(True)])
def test_to_gpu_of_a_0d_array_stays_0d(value):
    g = to_gpu(value)
    host = g.get()
    assert g.shape == () and g.size == 1 and host.shape == ()  # was (1,): ascontiguousarray adds a dim
    assert host.dtype == np.asarray(value).dtype and host[()] == np.asarray(value)[()]


def test_set_of_a_0d_array_into_a_0d_gpuarray():
    g = cybn.zeros((), np.float64)
    g.set(np.array(3.25))
    assert g.get()[()] == 3.25
    with pytest.raises(ValueError, match="shape mismatch"):
        g.set(np.array([1.0]))
    assert g.get()[()] == 3.25  # the refused set wrote nothing


def test_0d_dlpack_round_trip_of_a_host_scalar():
    z = from_dlpack(to_gpu(np.float32(1.5)))
    assert z.shape == () and z.get()[()] == 1.5


# ---------------------------------------------------------------- element counts that overflow
@pytest.mark.parametrize("make", [
    lambda: cybn.empty((2 ** 32, 2 ** 32)),          # 2**64 elements: a C product wraps to 0
    lambda: cybn.zeros((2 ** 62, 4), np.uint8),
    lambda: cybn.GPUArray((2 ** 32, 2 ** 32), np.float32),
    lambda: cybn.GPUArray.from_pointer(256, (2 ** 33, 2 ** 31), np.float32, None),
])
def test_huge_shapes_are_refused_not_wrapped(make):
    before = softgpu.live_allocations()
    with pytest.raises(ValueError, match="too large"):
        make()
    assert softgpu.live_allocations() == before


def test_huge_but_empty_shapes_are_fine():
    g = cybn.zeros((0,)).reshape(2 ** 32, 2 ** 32, 0)
    assert g.shape == (2 ** 32, 2 ** 32, 0) and g.size == 0 and g.nbytes == 0


# ---------------------------------------------------------------- CUDA Array Interface import
class CAI:
    def __init__(self, base, **kw):
        self.base = base
        self.__cuda_array_interface__ = dict(shape=base.shape, typestr=base.dtype.str, data=(base.ptr, False),
                                             version=3, strides=None)
        self.__cuda_array_interface__.update(kw)


def test_cai_strides_of_the_wrong_length_are_refused():
    base = to_gpu(np.arange(12, dtype=np.float32))
    with pytest.raises(ValueError, match="1 strides .* 2 dimensions"):
        from_cuda_array_interface(CAI(base, shape=(3, 4), strides=(4,)))  # zip() used to ignore the rest


@pytest.mark.parametrize("strides", [(-4,), (0,), (8,)])
def test_cai_negative_zero_and_gapped_strides_are_refused(strides):
    base = to_gpu(np.arange(12, dtype=np.float32))
    with pytest.raises(ValueError, match="not C-contiguous"):
        from_cuda_array_interface(CAI(base, shape=(3,), strides=strides))


def test_cai_offset_pointer_views_the_right_elements():
    base = to_gpu(np.arange(12, dtype=np.float32))
    v = from_cuda_array_interface(CAI(base, shape=(2, 2), data=(base.ptr + 8, False)))
    np.testing.assert_array_equal(v.get(), [[2, 3], [4, 5]])
    with pytest.raises(ValueError, match="not aligned"):
        from_cuda_array_interface(CAI(base, shape=(2,), data=(base.ptr + 2, False)))


def test_cai_readonly_data_is_not_wrapped_writable_but_can_be_copied():
    base = to_gpu(np.arange(4, dtype=np.int32))
    ro = CAI(base, data=(base.ptr, True))
    with pytest.raises(ValueError, match="read-only"):
        from_cuda_array_interface(ro)
    c = to_gpu(ro)  # a copy only reads the producer's memory
    assert c.ptr != base.ptr
    np.testing.assert_array_equal(c.get(), [0, 1, 2, 3])


@pytest.mark.parametrize("data", [None, (0,), 5])
def test_cai_malformed_data_is_a_clear_error(data):
    base = to_gpu(np.arange(4, dtype=np.int32))
    with pytest.raises(ValueError, match=r"data must be a \(pointer, readonly\) tuple"):
        from_cuda_array_interface(CAI(base, data=data))


def test_empty_arrays_with_any_strides_import():
    # no element is addressed, so numpy's rule applies: any strides are C-contiguous
    base = to_gpu(np.arange(4, dtype=np.float32))
    v = from_cuda_array_interface(CAI(base, shape=(3, 0), strides=(12, 4)))
    assert v.shape == (3, 0) and v.get().shape == (3, 0)


@pytest.mark.parametrize("shape", [(3, 0), (0,), (0, 5, 2)])
def test_empty_arrays_round_trip_through_our_own_dlpack(shape):
    e = from_dlpack(cybn.zeros(shape, np.float32))  # our export's strides for (3, 0) were refused
    assert e.shape == shape and e.get().shape == shape


# ---------------------------------------------------------------- launch limits, before the driver
SRC = r'''
extern "C" __global__ void count(unsigned int* n) { atomicAdd(n, 1u); }
'''


@pytest.mark.parametrize("grid, block, what", [
    (1, 1025, "block"), (1, (32, 33), "block"), (1, (1, 1, 65), "block"), (1, (1025, 1, 1), "block"),
    (1, (2, 1025), "block"), ((1, 65536), 1, "grid"), ((1, 1, 65536), 1, "grid"), (2 ** 31, 1, "grid"),
])
def test_launch_limits_are_named_before_anything_launches(grid, block, what):
    f = get_function(SRC, "count", "P")
    n = cybn.zeros((), np.uint32)
    launches = softgpu.counters()["total"]["launches"]
    with pytest.raises(ValueError, match=f"{what} .* exceeds the limits"):
        f(grid, block, (n,))
    assert softgpu.counters()["total"]["launches"] == launches and n.get()[()] == 0


def test_largest_legal_block_and_grid_still_launch():
    f = get_function(SRC, "count", "P")
    n = cybn.zeros((), np.uint32)
    f(1, 1024, (n,))
    f(1, (1, 16, 64), (n,))
    f((1, 2, 3), (4, 4, 4), (n,))
    assert n.get()[()] == 1024 + 1024 + 6 * 64


# ---------------------------------------------------------------- pool: size classes that would wrap
def test_pool_request_near_size_max_is_an_out_of_memory_error_not_a_tiny_block():
    pool = MemoryPool()
    for nbytes in (2 ** 64 - 1, 2 ** 64 - 2 ** 59):  # rounding to the size class wrapped to 0 bytes
        with pytest.raises(cybn.CudaError) as info:
            pool.malloc(nbytes)
        assert info.value.name == "CUDA_ERROR_OUT_OF_MEMORY"
        with pytest.raises(cybn.CudaError, match="OUT_OF_MEMORY"):
            DeviceBuffer(nbytes, pool)
    assert pool.used_bytes == 0 and pool.held_bytes == 0


# ---------------------------------------------------------------- DLPack capsules from other producers
def _capsule(g, byte_offset=None, shape=None, strides=None, code=None, bits=None, ndim=None):
    """Our own export of g, its DLTensor edited in place to look like another producer's."""
    import ctypes
    cap = g.__dlpack__(stream=-1)
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    base = get_ptr(cap, b"dltensor")  # DLTensor: data, device, ndim, dtype, shape*, strides*, byte_offset
    if byte_offset is not None:
        ctypes.c_uint64.from_address(base + 40).value = byte_offset
    for values, at in ((shape, 24), (strides, 32)):
        if values is not None:
            arr = (ctypes.c_int64 * len(values)).from_address(ctypes.c_void_p.from_address(base + at).value)
            arr[:] = values
    if code is not None:
        ctypes.c_uint8.from_address(base + 20).value = code
    if bits is not None:
        ctypes.c_uint8.from_address(base + 21).value = bits
    if ndim is not None:
        ctypes.c_int32.from_address(base + 16).value = ndim
    return cap


def test_dlpack_byte_offset_is_applied():
    g = to_gpu(np.arange(8, dtype=np.float32))
    v = from_dlpack(_capsule(g, byte_offset=12, shape=[5]))
    assert v.ptr == g.ptr + 12
    np.testing.assert_array_equal(v.get(), [3, 4, 5, 6, 7])
    with pytest.raises(ValueError, match="not aligned"):
        from_dlpack(_capsule(g, byte_offset=2, shape=[5]))


@pytest.mark.parametrize("code, bits", [(6, 16), (6, 32), (2, 8), (0, 24), (2, 128), (5, 256)])
def test_dlpack_dtypes_without_a_numpy_match_are_refused_and_not_consumed(code, bits):
    g = to_gpu(np.arange(8, dtype=np.uint8))
    cap = _capsule(g, code=code, bits=bits, shape=[1])
    # bool with 16 or 32 bits used to be read as 1-byte bools; f1/i3 gave numpy's "not understood"
    with pytest.raises(TypeError, match="unsupported DLPack dtype"):
        from_dlpack(cap)
    assert "used_dltensor" not in repr(cap)


def test_dlpack_negative_ndim_is_refused():
    g = to_gpu(np.arange(4, dtype=np.float32))
    with pytest.raises(ValueError, match="negative ndim"):
        from_dlpack(_capsule(g, ndim=-1))  # was read as a 0-d array


def test_longdouble_is_not_exported_as_ieee_binary128():
    g = cybn.zeros(2, np.longdouble)
    if g.itemsize != 16:
        pytest.skip("longdouble is not the 16-byte x87 format here")
    with pytest.raises(BufferError, match="no DLPack type"):
        g.__dlpack__()


# ---------------------------------------------------------------- refusals that allocate or launch nothing
@pytest.mark.parametrize("src, dst", [(np.float32, np.int32), (np.int16, np.float32), (np.uint8, np.float16)])
def test_astype_refusal_allocates_nothing(src, dst):
    g = to_gpu(np.arange(3).astype(src))
    pool = cybn.default_pool()
    held, used = pool.held_bytes, pool.used_bytes
    with pytest.raises(TypeError, match="cannot cast"):
        g.astype(dst)
    assert (pool.held_bytes, pool.used_bytes) == (held, used)  # the output used to be allocated first
    np.testing.assert_array_equal(g.get(), np.arange(3).astype(src))


@pytest.mark.parametrize("shared_mem, exc", [(-1, OverflowError), (2 ** 32, OverflowError), (1.5, TypeError),
                                             ("0", TypeError)])
def test_bad_shared_mem_is_named(shared_mem, exc):
    f = get_function(SRC, "count", "P")
    n = cybn.zeros((), np.uint32)
    launches = softgpu.counters()["total"]["launches"]
    with pytest.raises(exc, match="shared_mem must be"):  # 1.5 used to launch with 1 byte
        f(1, 1, (n,), shared_mem=shared_mem)
    assert softgpu.counters()["total"]["launches"] == launches


def test_shared_mem_accepts_numpy_integers():
    f = get_function(SRC, "count", "P")
    n = cybn.zeros((), np.uint32)
    f(1, 2, (n,), shared_mem=np.int64(16))
    assert n.get()[()] == 2


@pytest.mark.parametrize("grid", [2 ** 64, (1, 2 ** 70), 2 ** 32, (2 ** 32,)])
def test_grid_beyond_64_or_32_bits_is_a_clear_value_error(grid):
    f = get_function(SRC, "count", "P")
    with pytest.raises(ValueError, match="grid .*2\\*\\*32"):  # 2**64 was "Python int too large to convert"
        f(grid, 1, (cybn.zeros((), np.uint32),))


@pytest.mark.parametrize("handle, exc, match", [(None, TypeError, "expected a CUstream"),
                                                (object(), TypeError, "expected a CUstream"),
                                                (-5, ValueError, "not negative")])
def test_stream_external_refuses_what_is_not_a_handle(handle, exc, match):
    with pytest.raises(exc, match=match):
        cybn.Stream.external(handle)


# ---------------------------------------------------------------- elementwise on overlapping memory
def test_cast_into_an_overlapping_view_is_refused_and_writes_nothing():
    from cybn import elementwise
    x64 = to_gpu(np.arange(4, dtype=np.float64))
    y32 = cybn.GPUArray.from_pointer(x64.ptr + 8, (4,), np.float32, x64)  # bytes 8..24 of x64
    with pytest.raises(ValueError, match="overlap"):
        elementwise.cast(x64, y32)
    np.testing.assert_array_equal(x64.get(), [0, 1, 2, 3])
    same = cybn.GPUArray.from_pointer(x64.ptr, (4,), np.float32, x64)
    with pytest.raises(ValueError, match="overlap"):
        elementwise.cast(x64, same)  # same start, different element size: still a race


def test_axpby_in_place_is_fine_but_a_shifted_out_is_refused():
    from cybn import elementwise
    x = to_gpu(np.array([1, 2, 3, 4, 5], np.float32))
    y = to_gpu(np.array([10, 20, 30, 40, 50], np.float32))
    elementwise.axpby(x, y, 2.0, 1.0)  # out = y: each element read then written by one thread
    np.testing.assert_array_equal(y.get(), [12, 24, 36, 48, 60])
    elementwise.axpby(x, y, 1.0, 0.5, out=x)
    np.testing.assert_array_equal(x.get(), [7, 14, 21, 28, 35])
    big = to_gpu(np.arange(6, dtype=np.float32))
    lo = cybn.GPUArray.from_pointer(big.ptr, (5,), np.float32, big)
    hi = cybn.GPUArray.from_pointer(big.ptr + 4, (5,), np.float32, big)
    with pytest.raises(ValueError, match="overlap"):
        elementwise.axpby(lo, y, 1.0, 1.0, out=hi)
    np.testing.assert_array_equal(big.get(), np.arange(6))


# ---------------------------------------------------------------- events
@pytest.mark.parametrize("record, which", [((), "start and end events were"), ((0,), "end event was"),
                                           ((1,), "start event was")])
def test_elapsed_on_an_unrecorded_event_says_which(record, which):
    events = [cybn.Event(), cybn.Event()]
    for i in record:
        events[i].record()
    with pytest.raises(cybn.CudaError) as info:
        events[0].elapsed_ms(events[1])
    e = info.value
    assert e.call == "cuEventElapsedTime" and e.name == "CUDA_ERROR_INVALID_HANDLE"
    assert f"the {which} never recorded" in str(e)
