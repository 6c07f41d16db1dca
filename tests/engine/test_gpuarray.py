"""GPUArray: construction, copies, views, dtypes, repr and errors, against numpy."""
import numpy as np
import pytest

import cybn
from cybn import GPUArray, empty, empty_like, to_gpu, zeros, zeros_like
from cybn.memory import DeviceBuffer, PinnedBuffer

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
          np.uint32, np.uint64, np.bool_, np.complex64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    g = to_gpu(a)
    assert g.shape == (3, 5) and g.dtype == np.dtype(dtype) and g.size == 15 and g.ndim == 2
    assert g.itemsize == np.dtype(dtype).itemsize and g.nbytes == 15 * g.itemsize
    assert g.strides == a.strides and len(g) == 3
    assert isinstance(g.gpudata, DeviceBuffer) and g.ptr == g.gpudata.ptr
    np.testing.assert_array_equal(g.get(), a)


def test_non_contiguous_numpy_input_is_made_contiguous():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(to_gpu(a).get(), np.ascontiguousarray(a))
    g = empty((4, 3))
    g.set(a.T.T)
    np.testing.assert_array_equal(g.get(), a)


def test_constructors():
    z = zeros((2, 3), np.int32)
    np.testing.assert_array_equal(z.get(), np.zeros((2, 3), np.int32))
    e = empty(7, np.float64)
    assert e.shape == (7,) and e.dtype == np.float64
    assert empty_like(z).shape == (2, 3) and empty_like(z).dtype == np.int32
    np.testing.assert_array_equal(zeros_like(e).get(), np.zeros(7))
    g = GPUArray((4,), np.float32)
    assert g.shape == (4,)
    buf = DeviceBuffer(64)
    v = GPUArray((4, 4), np.float32, gpudata=buf)
    assert v.ptr == buf.ptr and v.gpudata is buf
    with pytest.raises(ValueError, match="gpudata has 64 bytes"):
        GPUArray((5, 4), np.float32, gpudata=buf)
    s = zeros(())  # 0-d
    assert s.shape == () and s.size == 1
    np.testing.assert_array_equal(s.get(), np.zeros(()))
    with pytest.raises(TypeError):
        len(s)
    z0 = zeros((0, 3))
    assert z0.size == 0 and z0.get().shape == (0, 3)


@pytest.mark.parametrize("bad, exc", [((2, -1), ValueError), ("ab", TypeError), (2.5, TypeError)])
def test_bad_shapes(bad, exc):
    with pytest.raises(exc):
        empty(bad)


@pytest.mark.parametrize("dtype", [object, "U4", ">f4", [("a", "f4")]])
def test_unsupported_dtypes(dtype):
    with pytest.raises(TypeError, match="unsupported dtype"):
        empty(3, dtype)


def test_get_into_and_set_errors():
    g = to_gpu(np.arange(6, dtype=np.float32).reshape(2, 3))
    out = np.empty((2, 3), np.float32)
    assert g.get(out) is out
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="shape mismatch"):
        g.get(np.empty((3, 2), np.float32))
    with pytest.raises(TypeError, match="dtype mismatch"):
        g.get(np.empty((2, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        g.get(np.empty((3, 2), np.float32).T)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        g.get(ro)
    with pytest.raises(TypeError, match="dtype mismatch"):
        g.set(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="shape mismatch"):
        g.set(np.zeros(6, np.float32))
    with pytest.raises(TypeError, match="numpy array or GPUArray"):
        g.set([1, 2, 3])
    np.testing.assert_array_equal(g.get(), np.arange(6).reshape(2, 3))  # the refused calls wrote nothing


def test_set_from_gpuarray_and_copy():
    a = to_gpu(np.arange(5, dtype=np.int64))
    b = empty(5, np.int64).set(a)
    c = a.copy()
    assert c.ptr != a.ptr
    a.fill(0)
    np.testing.assert_array_equal(b.get(), np.arange(5))
    np.testing.assert_array_equal(c.get(), np.arange(5))
    with pytest.raises(TypeError):
        b.set(zeros(5, np.int32))


def test_reshape_ravel_and_views_share_memory():
    a = to_gpu(np.arange(24, dtype=np.float32))
    r = a.reshape(2, -1, 3)
    assert r.shape == (2, 4, 3) and r.ptr == a.ptr and r.gpudata is a.gpudata
    assert a.reshape((4, 6)).shape == (4, 6) and a.reshape([-1]).shape == (24,)
    assert r.ravel().shape == (24,)
    r.fill(2.0)
    np.testing.assert_array_equal(a.get(), np.full(24, 2.0))
    for bad in [(5, -1), (-1, -1), (7,), (2, -2)]:
        with pytest.raises(ValueError):
            a.reshape(*bad)
    with pytest.raises(TypeError):
        a.reshape("x")


def test_view_dtype():
    a = to_gpu(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32))
    u = a.view(np.uint32)
    np.testing.assert_array_equal(u.get(), np.array([[1.0, -2.0], [0.5, 3.0]], np.float32).view(np.uint32))
    h = a.view(np.float16)
    assert h.shape == (2, 4)
    np.testing.assert_array_equal(h.get(), np.array([[1.0, -2.0], [0.5, 3.0]], np.float32).view(np.float16))
    d = a.view(np.float64)
    assert d.shape == (2, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        to_gpu(np.zeros(3, np.float32)).view(np.float64)
    with pytest.raises(ValueError, match="0-d"):
        zeros((), np.float32).view(np.float16)


@pytest.mark.parametrize("src, dst", [(np.float32, np.float16), (np.float16, np.float64), (np.float64, np.float32)])
def test_astype(src, dst):
    a = np.linspace(-3, 3, 101).astype(src)
    np.testing.assert_array_equal(to_gpu(a).astype(dst).get(), a.astype(dst))


def test_astype_same_dtype_copies_and_unsupported_raises():
    g = to_gpu(np.arange(3, dtype=np.float32))
    c = g.astype(np.float32)
    assert c.ptr != g.ptr
    np.testing.assert_array_equal(c.get(), [0, 1, 2])
    with pytest.raises(TypeError, match="cast"):
        g.astype(np.int32)


def test_repr_shows_values():
    r = repr(to_gpu(np.array([1.5, 2.5], np.float32)))
    assert r == "GPUArray([1.5, 2.5], dtype=float32)"
    assert "..." in repr(zeros(5000))  # summarised like numpy


def test_str_prints_like_numpy():
    # PuzzleLib's documented examples print(bn.mean) and show numpy's formatting.
    a = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1) + 6
    assert str(to_gpu(a)) == str(a)


def test_from_pointer_keeps_owner_alive():
    buf = DeviceBuffer(40)
    g = GPUArray.from_pointer(buf.ptr, (10,), np.float32, owner=buf)
    g.set(np.arange(10, dtype=np.float32))
    del buf
    assert not g.gpudata.owned
    np.testing.assert_array_equal(g.get(), np.arange(10))
    with pytest.raises(ValueError, match="NULL"):
        GPUArray.from_pointer(0, 3, np.float32, None)
    with pytest.raises(ValueError, match="aligned"):
        GPUArray.from_pointer(g.ptr + 2, 3, np.float32, g)


def test_async_copies_through_pinned_memory():
    s = cybn.Stream()
    n = 1 << 12
    host_in, host_out = PinnedBuffer(4 * n), PinnedBuffer(4 * n)
    src = host_in.array(np.float32, n)
    src[:] = np.arange(n, dtype=np.float32)
    g = empty(n, stream=s)
    g.set(src, stream=s, async_=True)
    dst = host_out.array(np.float32, (n,))
    g.get(dst, stream=s, async_=True)
    s.synchronize()
    np.testing.assert_array_equal(dst, np.arange(n))


def test_pinned_buffer_views():
    p = PinnedBuffer(64)
    assert p.nbytes == 64 and p.ptr and len(p) == 64
    assert p.array().shape == (64,) and p.array(np.float64).shape == (8,)
    a = p.array(np.int32, (4, 4))
    a[:] = 7
    assert bytes(memoryview(p))[:4] == np.int32(7).tobytes()
    with pytest.raises(ValueError, match="needs 72 bytes"):
        p.array(np.float64, 9)
    assert PinnedBuffer(0).array().shape == (0,)
