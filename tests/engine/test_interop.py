"""Zero-copy interop: __cuda_array_interface__ v3 and DLPack, both directions, plus torch's error path."""
import gc

import numpy as np
import pytest

import cybn
from cybn import GPUArray, from_cuda_array_interface, from_dlpack, to_gpu
from cybn.memory import DeviceBuffer


class ForeignCAI:
    """A foreign producer exposing __cuda_array_interface__ over memory it owns."""

    def __init__(self, shape, dtype, strides=None, stream=None, version=3):
        dtype = np.dtype(dtype)
        self.buf = DeviceBuffer(max(int(np.prod(shape)) * dtype.itemsize, 1))
        self.__cuda_array_interface__ = {"shape": shape, "typestr": dtype.str, "data": (self.buf.ptr, False),
                                         "strides": strides, "version": version}
        if stream is not None:
            self.__cuda_array_interface__["stream"] = stream


def test_cai_export():
    g = to_gpu(np.arange(6, dtype=np.float32).reshape(2, 3))
    cai = g.__cuda_array_interface__
    assert cai["shape"] == (2, 3) and cai["typestr"] == "<f4" and cai["data"] == (g.ptr, False)
    assert cai["version"] == 3 and cai["strides"] is None and cai["stream"] == 1  # legacy stream
    s = cybn.Stream()
    with cybn.stream(s):
        assert g.__cuda_array_interface__["stream"] == s.handle


def test_cai_round_trip_shares_memory():
    g = to_gpu(np.arange(6, dtype=np.int16))
    v = from_cuda_array_interface(g)
    assert v.ptr == g.ptr and v.shape == (6,) and v.dtype == np.int16
    v.fill(9)
    np.testing.assert_array_equal(g.get(), np.full(6, 9))


def test_cai_foreign_producer_kept_alive_and_stream_honoured():
    s = cybn.Stream()
    f = ForeignCAI((4, 2), np.float64, strides=(16, 8), stream=s.handle)
    ptr = f.buf.ptr
    g = from_cuda_array_interface(f)
    del f
    gc.collect()
    g.set(np.ones((4, 2)))
    assert g.ptr == ptr
    np.testing.assert_array_equal(g.get(), np.ones((4, 2)))
    # to_gpu of a foreign device array copies it
    c = to_gpu(ForeignCAI((3,), np.float32, stream=1))
    assert c.shape == (3,) and isinstance(c, GPUArray)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(shape=(4, 2), dtype=np.float32, strides=(4, 16)), ValueError, "not C-contiguous"),
    (dict(shape=(3,), dtype=np.float32, stream=0), ValueError, "stream 0"),
    (dict(shape=(3,), dtype="O"), TypeError, "unsupported dtype"),
])
def test_cai_refusals(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        from_cuda_array_interface(ForeignCAI(**kwargs))
    with pytest.raises(TypeError, match="no __cuda_array_interface__"):
        from_cuda_array_interface(np.zeros(3))


def test_dlpack_export_device_and_capsule():
    g = to_gpu(np.arange(4, dtype=np.float32))
    assert g.__dlpack_device__() == (2, 0)
    cap = g.__dlpack__()
    assert type(cap).__name__ == "PyCapsule" and "dltensor" in repr(cap)
    del cap  # an unconsumed capsule releases its reference (no leak, no crash)
    gc.collect()
    with pytest.raises(BufferError):
        g.__dlpack__(dl_device=(1, 0))
    with pytest.raises(ValueError, match="ambiguous"):
        g.__dlpack__(stream=0)


def test_dlpack_round_trip_shares_memory_and_keeps_producer_alive():
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float16, np.int64, np.uint8, np.bool_, np.complex64):
        a = (rng.standard_normal((3, 4)) * 10).astype(dtype)
        g = to_gpu(a)
        v = from_dlpack(g)
        assert v.ptr == g.ptr and v.shape == (3, 4) and v.dtype == np.dtype(dtype)
        del g
        gc.collect()
        np.testing.assert_array_equal(v.get(), a)
    # a raw capsule works, once
    g = to_gpu(np.arange(5, dtype=np.int32))
    cap = g.__dlpack__(stream=-1)
    v = from_dlpack(cap)
    np.testing.assert_array_equal(v.get(), np.arange(5))
    with pytest.raises(ValueError, match="unconsumed"):
        from_dlpack(cap)


def test_dlpack_copy_and_stream_arguments():
    g = to_gpu(np.arange(3, dtype=np.float32))
    c = from_dlpack(g.__dlpack__(copy=True))
    assert c.ptr != g.ptr
    np.testing.assert_array_equal(c.get(), [0, 1, 2])
    s = cybn.Stream()
    v = from_dlpack(g.__dlpack__(stream=s.handle))
    np.testing.assert_array_equal(v.get(stream=s), [0, 1, 2])


def test_0d_and_empty_dlpack():
    z = from_dlpack(cybn.zeros((), np.float64))
    assert z.shape == () and z.get() == 0.0
    e = from_dlpack(cybn.zeros((0, 2), np.float32))
    assert e.shape == (0, 2)


def test_host_dlpack_producers_are_refused():
    with pytest.raises(BufferError, match="kDLCPU.*to_gpu"):
        from_dlpack(np.arange(3.0))
    with pytest.raises(TypeError, match="neither __dlpack__"):
        from_dlpack([1, 2, 3])


class ForeignDLPack:
    """Hands out another array's capsule but claims a non-contiguous layout by slicing strides."""

    def __init__(self, g, device=(2, 0)):
        self.g, self.device = g, device

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None):
        self.stream = stream
        return self.g.__dlpack__(stream=stream)


def test_foreign_dlpack_producer_gets_our_stream():
    g = to_gpu(np.arange(4, dtype=np.float32))
    f = ForeignDLPack(g)
    v = from_dlpack(f)
    assert f.stream == 1  # legacy stream, as the protocol numbers it
    np.testing.assert_array_equal(v.get(), np.arange(4))
    s = cybn.Stream()
    with cybn.stream(s):
        from_dlpack(f)
    assert f.stream == s.handle
    with pytest.raises(BufferError, match="kDLCPU"):
        from_dlpack(ForeignDLPack(g, device=(1, 0)))


def test_non_contiguous_dlpack_is_refused_and_not_consumed():
    import ctypes
    g = to_gpu(np.arange(8, dtype=np.float32).reshape(2, 4))
    cap = g.__dlpack__(stream=-1)
    # Edit the exported strides (DLManagedTensor.dl_tensor.strides) to describe a transposed view.
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    base = get_ptr(cap, b"dltensor")
    strides_ptr = ctypes.c_void_p.from_address(base + 32).value  # after data, device, ndim+dtype, shape
    strides = (ctypes.c_int64 * 2).from_address(strides_ptr)
    strides[0], strides[1] = 1, 2
    with pytest.raises(ValueError, match="not C-contiguous"):
        from_dlpack(cap)
    assert "used_dltensor" not in repr(cap)  # still the producer's: its destructor frees it


def test_torch_cpu_tensors_are_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(BufferError, match="kDLCPU"):
        from_dlpack(torch.arange(3))
