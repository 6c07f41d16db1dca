"""fill, cast and axpby against numpy (float16 rounding checked against numpy's float16)."""
import numpy as np
import pytest

import cybn
from cybn import elementwise, to_gpu, empty

FLOATS = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype, value", [
    (np.float32, 1.1), (np.float16, 1.1), (np.float64, -2.0**-40), (np.int8, -5), (np.uint8, 200),
    (np.int16, -300), (np.int32, 2**31 - 1), (np.int64, -(2**62)), (np.uint64, 2**64 - 1), (np.bool_, True),
    (np.complex64, 1 - 2j)])
def test_fill_every_width(dtype, value):
    # 1001 elements: a 16-byte vector body plus a tail, so both code paths run
    g = empty(1001, dtype)
    assert elementwise.fill(g, value) is g
    np.testing.assert_array_equal(g.get(), np.full(1001, value, dtype=dtype))


def test_fill_unaligned_view_and_errors():
    base = empty(40, np.float32)
    g = cybn.GPUArray.from_pointer(base.ptr + 4, 37, np.float32, base)  # not 16-byte aligned
    g.fill(3.0)
    np.testing.assert_array_equal(g.get(), np.full(37, 3.0))
    with pytest.raises(OverflowError):
        empty(3, np.uint8).fill(300)
    with pytest.raises(TypeError, match="GPUArray"):
        elementwise.fill(np.zeros(3), 1.0)
    with pytest.raises(TypeError, match="unsupported dtype"):
        elementwise.fill(empty(2, np.complex128), 1.0)
    elementwise.fill(empty(0), 1.0)  # empty arrays launch nothing


@pytest.mark.parametrize("src", FLOATS)
@pytest.mark.parametrize("dst", FLOATS)
def test_cast_matches_numpy_rounding(src, dst):
    rng = np.random.default_rng(2)
    x64 = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-8, 6, 500),
                          [0.0, -0.0, 65504.0, 65520.0, 1e6, 6e-8, 1e-9, np.inf, -np.inf, 1 + 2.0**-11, 1 + 3 * 2.0**-11,
                          1 + 2.0**-11 + 2.0**-40]])  # the last one exposes double rounding via float32
    with np.errstate(over="ignore"):  # values beyond float16's range become inf, on purpose
        x = x64.astype(src)
        ref = x.astype(dst)
    out = empty(x.shape, dst)
    elementwise.cast(to_gpu(x), out)
    np.testing.assert_array_equal(out.get(), ref)


def test_cast_nan_and_errors():
    out = empty(2, np.float16)
    elementwise.cast(to_gpu(np.array([np.nan, 1.0], np.float32)), out)
    got = out.get()
    assert np.isnan(got[0]) and got[1] == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        elementwise.cast(empty(3), empty(4, np.float16))
    with pytest.raises(TypeError, match="int32 not supported"):
        elementwise.cast(empty(3, np.int32), empty(3))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 4, 1003])
def test_axpby_matches_numpy(dtype, n):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    alpha, beta = 0.3, -1.7
    gx, gy = to_gpu(x), to_gpu(y)
    out = elementwise.axpby(gx, gy, alpha, beta, out=empty(n, dtype))
    if dtype == np.float64:
        ref = alpha * x + beta * y
    else:  # float32 arithmetic, and for float16 one rounding of that result (numpy's float16)
        ref = (np.float32(alpha) * x.astype(np.float32) + np.float32(beta) * y.astype(np.float32)).astype(dtype)
    np.testing.assert_array_equal(out.get(), ref)
    # out=None updates y in place
    assert elementwise.axpby(gx, gy, alpha, beta) is gy
    np.testing.assert_array_equal(gy.get(), ref)
    # and the float64 reference agrees within the dtype's precision
    np.testing.assert_allclose(gy.get().astype(np.float64), 0.3 * x.astype(np.float64) - 1.7 * y.astype(np.float64),
                               rtol=1e-2 if dtype == np.float16 else 1e-6, atol=1e-2 if dtype == np.float16 else 1e-6)


def test_axpby_unaligned_tail_path():
    base = to_gpu(np.arange(12, dtype=np.float32))
    x = cybn.GPUArray.from_pointer(base.ptr + 4, 9, np.float32, base)
    y = to_gpu(np.ones(9, np.float32))
    elementwise.axpby(x, y, 2.0, 1.0)
    np.testing.assert_array_equal(y.get(), np.arange(1, 10) * 2.0 + 1.0)


def test_axpby_errors_write_nothing():
    x, y = to_gpu(np.ones(4, np.float32)), to_gpu(np.full(4, 5.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        elementwise.axpby(x, to_gpu(np.ones(5, np.float32)), 1.0, 1.0)
    with pytest.raises(TypeError, match="dtype"):
        elementwise.axpby(x, y, 1.0, 1.0, out=empty(4, np.float64))
    with pytest.raises(TypeError, match="not supported"):
        elementwise.axpby(to_gpu(np.ones(4, np.int32)), to_gpu(np.ones(4, np.int32)), 1.0, 1.0)
    with pytest.raises(TypeError, match="GPUArray"):
        elementwise.axpby(x, np.ones(4), 1.0, 1.0)
    np.testing.assert_array_equal(y.get(), np.full(4, 5.0))
