"""GPUArray indexing, assignment and transpose against numpy: views where the selection is contiguous in memory
(writes through them reach the base array), copies otherwise, every dtype width."""
import numpy as np
import pytest

import cybn
from cybn import softgpu, to_gpu

KEYS_2D = [
    (1, True), (-1, True), (slice(1, 3), True), ((2, slice(1, 5)), True), ((Ellipsis, 2), False),
    ((slice(None), 1), False), ((slice(None), slice(1, 3)), False), (slice(None, None, -1), False),
    ((slice(None), slice(None, None, 2)), False), ((slice(3, 1), slice(None)), True), ((None, 1), True),
    ((1, None), True), ((slice(None), None, 0), False), ((1, 4), True), ((Ellipsis,), True),
    ((slice(-3, None, 2), slice(5, 0, -2)), False), ((np.int64(2),), True),
]
KEYS_3D = [
    ((1, slice(None), slice(1, 3)), False), ((slice(0, 2), 2), False), ((slice(1, 2), 2), True), ((Ellipsis, 0), False),
    ((0, Ellipsis), True), ((slice(None, None, -1), 1, slice(None, None, 3)), False), ((1, 2, 3), True),
]


def launches():
    return softgpu.counters()["total"]["launches"]


def _check(a, key, is_view):
    g = to_gpu(a)
    ref = a[key]
    before = launches()
    got = g[key]
    assert got.shape == ref.shape and got.dtype == ref.dtype, key
    np.testing.assert_array_equal(got.get(), ref, err_msg=str(key))
    if is_view and got.size:
        assert launches() == before, key  # a view: no kernel, the same memory
        got[...] = 0
        expected = a.copy()
        expected[key] = 0
        np.testing.assert_array_equal(g.get(), expected, err_msg=str(key))
    elif got.size:
        assert launches() == before + 1, key  # one strided-copy launch
        got[...] = 0
        np.testing.assert_array_equal(g.get(), a, err_msg=f"{key}: a copy must not write back")


@pytest.mark.parametrize("key, is_view", KEYS_2D)
def test_basic_indexing_2d(key, is_view):
    _check(np.arange(4 * 6, dtype=np.float32).reshape(4, 6), key, is_view)


@pytest.mark.parametrize("key, is_view", KEYS_3D)
@pytest.mark.parametrize("dtype", [np.int8, np.float16, np.float64, np.complex128])
def test_basic_indexing_3d_every_width(key, is_view, dtype):
    a = (np.arange(3 * 4 * 5) - 20).reshape(3, 4, 5).astype(dtype)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * a[::-1]
    _check(a, key, is_view)


def test_views_of_views_and_arithmetic_on_views():
    a = np.arange(60, dtype=np.float32).reshape(5, 12)
    g = to_gpu(a)
    v = g[1:4][1]  # row 2
    assert v.ptr == g.ptr + 2 * 12 * 4 and v.gpudata is g.gpudata
    v += 1
    a[2] += 1
    np.testing.assert_array_equal(g.get(), a)
    assert g[2, 3:].strides == (4,) and len(g[1:4]) == 3


@pytest.mark.parametrize("key, message", [
    (5, "out of bounds"), ((0, -7), "out of bounds"), ((0, 0, 0), "too many indices"),
    ([0, 1], "basic indexing only"), (1.5, "basic indexing only"), (True, "basic indexing only"),
    ((Ellipsis, Ellipsis), "single ellipsis"),
])
def test_bad_indices(key, message):
    g = to_gpu(np.zeros((5, 6), np.float32))
    with pytest.raises(IndexError, match=message):
        g[key]


@pytest.mark.parametrize("key", [1, slice(1, 3), (slice(None), 2), (slice(None), slice(None, None, 2)),
                                 (Ellipsis, slice(4, None)), (slice(None, None, -1), 0)])
@pytest.mark.parametrize("value", [7.5, -2])
def test_setitem_scalars(key, value):
    a = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    g = to_gpu(a)
    g[key] = value
    a[key] = value
    np.testing.assert_array_equal(g.get(), a)


def test_setitem_arrays_broadcast_and_overlap():
    a = np.arange(4 * 6, dtype=np.float64).reshape(4, 6)
    g = to_gpu(a)
    row = np.linspace(-1, 1, 6)
    g[1:3] = row  # a numpy row broadcast over two rows
    a[1:3] = row
    g[:, 2] = np.arange(4)  # into a column (non-contiguous)
    a[:, 2] = np.arange(4)
    g[::2, ::3] = to_gpu(np.full((2, 2), 9.0))
    a[::2, ::3] = 9.0
    np.testing.assert_array_equal(g.get(), a)
    g[1:] = g[:-1]  # overlapping source and destination: numpy's semantics (the source as it was)
    a[1:] = a[:-1].copy()
    np.testing.assert_array_equal(g.get(), a)
    with pytest.raises(ValueError, match="same shape and dtype"):
        g[0] = to_gpu(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="same shape and dtype"):
        g[0] = to_gpu(np.zeros(5))
    np.testing.assert_array_equal(g.get(), a)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.complex128])
def test_transpose(dtype):
    a = np.arange(5 * 7).reshape(5, 7).astype(dtype)
    g = to_gpu(a)
    for t in (g.T, g.transpose(), g.transpose(1, 0), g.transpose((1, 0))):
        assert t.shape == (7, 5) and t.ptr != g.ptr
        np.testing.assert_array_equal(t.get(), a.T)
    b = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(dtype)
    gb = to_gpu(b)
    for axes in ((2, 0, 1), (0, 2, 1), (-1, 0, 1), None):
        ref = np.transpose(b, axes)
        np.testing.assert_array_equal((gb.transpose(axes) if axes else gb.T).get(), ref, err_msg=str(axes))
    v = to_gpu(np.arange(4).astype(dtype))
    assert v.T.ptr == v.ptr and v.T.shape == (4,)  # 1-d: the same array, as numpy
    with pytest.raises(ValueError, match="permutation"):
        gb.transpose(0, 0, 1)


def test_like_constructors_sizes_and_get_out():
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    g = to_gpu(a)
    assert (len(g), g.size, g.nbytes, g.strides) == (len(a), a.size, a.nbytes, a.strides)
    assert g[1:].strides == a[1:].strides and g[1:].nbytes == a[1:].nbytes
    e = cybn.empty_like(g, dtype=np.float32)
    assert (e.shape, e.dtype) == ((3, 4), np.float32)
    z = cybn.zeros_like(g)
    np.testing.assert_array_equal(z.get(), np.zeros_like(a))
    np.testing.assert_array_equal(cybn.zeros_like(g, np.float64).get(), np.zeros((3, 4)))
    out = np.empty_like(a)
    assert g.get(out=out) is out
    np.testing.assert_array_equal(out, a)
    c = g.copy()
    c.fill(2.5)
    np.testing.assert_array_equal(g.get(), a)
    np.testing.assert_array_equal(c.get(), np.full_like(a, 2.5))
    np.testing.assert_array_equal(g.astype(np.float64).get(), a.astype(np.float64))
    with pytest.raises(TypeError, match="not both"):
        g.get(out, out=out)
    with pytest.raises(ValueError, match="shape mismatch"):
        g.get(out=np.empty((4, 3), np.float16))
