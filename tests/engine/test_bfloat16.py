"""bfloat16 GPUArrays (ml_dtypes.bfloat16) and float64 beside it: construction, copies, fill, casts, axpby,
arithmetic and interop, against ml_dtypes' conversions and float64 maths rounded once to bfloat16."""
import ctypes
import operator

import ml_dtypes
import numpy as np
import pytest

import cybn
from cybn import GPUArray, elementwise, empty, from_cuda_array_interface, from_dlpack, to_gpu, zeros
from cybn.array import dtypes
from cybn.memory import DeviceBuffer

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value")


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8 if a.dtype.itemsize == 1 else f"u{a.dtype.itemsize}")


def assert_same(got, ref):
    """Bit for bit, except that any NaN matches any NaN (payloads are not part of the contract)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    nan = np.isnan(ref.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float64)), nan)
    np.testing.assert_array_equal(bits(got)[~nan], bits(ref)[~nan])


def hard_values():
    """float64 values that catch every rounding mistake of a bfloat16 conversion: halfway cases (ties to
    even both ways), one float64 ulp off a tie (double rounding through float32 gets these wrong),
    overflow to inf and the largest finite, bfloat16 subnormals and what underflows, signed zeros, inf, NaN."""
    one = [1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-40, 1 + 2**-8 - 2**-40, 1 + 2**-8 + 2**-52]
    big = [float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 3.3961e38, 3.3962e38, 3.4e38, 1e39, 1e300]
    small = [2.0**-126, 2.0**-133, 2.0**-134, 1.5 * 2.0**-134, 2.0**-134 + 2.0**-160, 2.0**-140, 1e-300, 2.0**-127 * 3]
    special = [0.0, np.inf, np.nan]
    v = np.array(one + big + small + special)
    rng = np.random.default_rng(7)
    rand = rng.standard_normal(400) * 10.0 ** rng.integers(-30, 30, 400)
    return np.concatenate([v, -v, rand])


def test_dtype_is_accepted_by_name_and_object_and_refused_without_ml_dtypes(monkeypatch):
    for spec in (ml_dtypes.bfloat16, BF16, "bfloat16", "bf16"):
        g = empty((2, 3), spec)
        assert g.dtype == BF16 and g.itemsize == 2 and g.nbytes == 12
    assert GPUArray(5, "bfloat16").dtype == BF16
    assert zeros(4, BF16).get().view(np.uint16).tolist() == [0, 0, 0, 0]
    with pytest.raises(TypeError, match="unsupported dtype"):
        empty(3, np.dtype("V2"))  # an opaque void is not bfloat16, although numpy spells both "V2"
    monkeypatch.setattr(dtypes, "BFLOAT16", None)
    with pytest.raises(TypeError, match="ml_dtypes"):
        empty(3, "bfloat16")
    with pytest.raises(TypeError, match="ml_dtypes"):
        dtypes.from_typestr("<V2")


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float64)])
def test_round_trip_views_indexing_and_repr(dtype):
    x = hard_values().astype(dtype).reshape(2, -1)
    g = to_gpu(x)
    assert g.dtype == dtype and g.shape == x.shape
    assert_same(g.get(), x)
    assert_same(g[1].get(), x[1])                  # a view
    assert_same(g[:, ::3].get(), x[:, ::3])        # a strided copy
    assert_same(g.T.get(), x.T)
    g[0, :4] = x[1, :4]
    y = x.copy()
    y[0, :4] = x[1, :4]
    assert_same(g.get(), y)
    assert g.view(np.uint16 if dtype == BF16 else np.uint64).get().tolist() == bits(y).tolist()
    out = np.empty_like(y)
    g.get(out=out)
    assert_same(out, y)
    h = empty(y.shape, dtype).set(g)
    assert_same(h.get(), y)
    assert "bfloat16" in repr(to_gpu(np.array([1.5], BF16))) and str(to_gpu(np.array([1.5], BF16))) == "[1.5]"


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float64)])
@pytest.mark.parametrize("value", [1.1, -3.0e38, 1e-40, -np.inf, np.nan, 7])
def test_fill_rounds_as_the_dtype(dtype, value):
    g = empty(1001, dtype)  # a 16-byte vector body and a tail
    g.fill(value)
    assert_same(g.get(), np.full(1001, value, dtype=dtype))


# the float16/32/64 pairs are tested in test_elementwise
@pytest.mark.parametrize("src, dst", [(s, d) for s in FLOATS for d in FLOATS if BF16 in (s, d)], ids=str)
def test_casts_round_once_as_ml_dtypes(src, dst):
    x = hard_values().astype(src)
    g = to_gpu(x)
    assert_same(g.astype(dst).get(), x.astype(dst))
    if src == np.float64 and dst == BF16:
        # the reference itself: one correctly rounded step from the exact float64 value
        assert to_gpu(np.array([1 + 2**-8 + 2**-40])).astype(BF16).get()[0] == 1 + 2**-7
        assert to_gpu(np.array([1 + 2**-8 - 2**-40])).astype(BF16).get()[0] == 1.0


@pytest.mark.parametrize("n", [1, 1031])
def test_axpby_bf16_is_float32_maths_rounded_once(n):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(n).astype(BF16)
    y = rng.standard_normal(n).astype(BF16)
    gx, gy = to_gpu(x), to_gpu(y)
    elementwise.axpby(gx, gy, 0.3, -1.7)
    a, b = np.float32(0.3), np.float32(-1.7)
    ref = (a.astype(np.float64) * x.astype(np.float64) + b.astype(np.float64) * y.astype(np.float64))
    # float32 products and sum, then one rounding to bfloat16: within one bfloat16 rounding of the exact value
    got = gy.get().astype(np.float64)
    assert np.all(np.abs(got - ref) <= np.abs(ref) * 2.0**-8 + 1e-30)
    ref32 = (a * x.astype(np.float32) + b * y.astype(np.float32)).astype(BF16)
    assert_same(gy.get(), ref32)


BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@pytest.mark.parametrize("op", sorted(BINARY))
def test_bf16_arithmetic_is_the_correctly_rounded_result(op):
    rng = np.random.default_rng(0)
    n = 1031
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(BF16)
    b = (rng.standard_normal(n) * 10.0 ** rng.integers(-2, 3, n)).astype(BF16)
    b[b == 0] = 1
    f = BINARY[op]
    # float64 maths on the bfloat16 values, rounded once: the correctly rounded bfloat16 result
    exact = f(a.astype(np.float64), b.astype(np.float64)).astype(BF16)
    assert_same(f(to_gpu(a), to_gpu(b)).get(), exact)
    assert_same(f(a, b), exact)  # ml_dtypes agrees
    s = 2.7  # rounded to bfloat16 first (2.703125), as numpy converts a Python number to the array's dtype
    s16 = np.float64(np.array(s).astype(BF16))
    assert_same(f(to_gpu(a), s).get(), f(a.astype(np.float64), s16).astype(BF16))
    assert_same(f(s, to_gpu(b)).get(), f(s16, b.astype(np.float64)).astype(BF16))
    g = to_gpu(a)
    g2 = g
    g2 = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv}[op](g2, to_gpu(b))
    assert g2 is g
    assert_same(g.get(), exact)
    assert_same((-to_gpu(a)).get(), -a)


# ------------------------------------------------------------------------------ interop
class ForeignCAI:
    def __init__(self, n, typestr):
        self.buf = DeviceBuffer(2 * n)
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": typestr, "data": (self.buf.ptr, False),
                                         "version": 3}


def test_cai_reports_and_accepts_V2_as_bfloat16():
    x = hard_values().astype(BF16)
    g = to_gpu(x)
    cai = g.__cuda_array_interface__
    assert cai["typestr"] == "<V2" and cai["descr"] == [("", "<V2")]
    v = from_cuda_array_interface(g)
    assert v.dtype == BF16 and v.ptr == g.ptr
    assert_same(v.get(), x)
    f = ForeignCAI(4, "<V2")
    assert from_cuda_array_interface(f).dtype == BF16
    assert from_cuda_array_interface(ForeignCAI(4, "<f2")).dtype == np.float16  # "<f2" stays float16
    assert to_gpu(g).dtype == BF16


def _dl_dtype(capsule):
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    base = get_ptr(capsule, b"dltensor")
    # DLTensor: data (8), device (8), ndim (4), dtype {code u8, bits u8, lanes u16}
    code, nbits, lanes = (ctypes.c_uint8.from_address(base + 20).value, ctypes.c_uint8.from_address(base + 21).value,
                          ctypes.c_uint16.from_address(base + 22).value)
    return code, nbits, lanes


@pytest.mark.parametrize("dtype, code", [(BF16, 4), (np.dtype(np.float64), 2), (np.dtype(np.float16), 2)])
def test_dlpack_reports_kDLBfloat_and_round_trips(dtype, code):
    x = hard_values().astype(dtype)
    g = to_gpu(x)
    cap = g.__dlpack__(stream=-1)
    assert _dl_dtype(cap) == (code, dtype.itemsize * 8, 1)
    v = from_dlpack(cap)
    assert v.dtype == dtype and v.ptr == g.ptr
    assert_same(v.get(), x)


def test_dlpack_bfloat16_without_ml_dtypes_is_a_clear_error_and_not_consumed(monkeypatch):
    import cybn.array.gpuarray as ga
    g = to_gpu(np.ones(3, BF16))
    cap = g.__dlpack__(stream=-1)
    monkeypatch.setattr(ga, "BFLOAT16", None)
    with pytest.raises(TypeError, match="ml_dtypes"):
        from_dlpack(cap)
    assert "used_dltensor" not in repr(cap)
