"""GPUArray arithmetic (+ - * / with scalars and same-shape arrays, reflected and in place, unary minus) for
float16, float32 and float64, bit-exact against numpy's own arithmetic in the array's dtype."""
import operator

import numpy as np
import pytest

from cybn import elementwise, softgpu, to_gpu

# float16 products and quotients overflow to inf on both sides (compared bit for bit like the rest).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered")

FLOATS = [np.float16, np.float32, np.float64]
BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
IN_PLACE = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv}


def operands(dtype, n=1031, seed=0):
    """n values (not a multiple of the block) with a spread of magnitudes and signs, no zeros in b."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
    b = (rng.standard_normal(n) * 10.0 ** rng.integers(-2, 3, n)).astype(dtype)
    b[b == 0] = 1
    return a, b


def assert_bits_equal(got, ref):
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(ref).view(np.uint8))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_array_op_array(dtype, op):
    a, b = operands(dtype)
    ga, gb = to_gpu(a), to_gpu(b)
    assert_bits_equal(BINARY[op](ga, gb).get(), BINARY[op](a, b))
    np.testing.assert_array_equal(ga.get(), a)  # operands untouched
    IN_PLACE[op](ga, gb)
    assert_bits_equal(ga.get(), BINARY[op](a, b))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("scalar", [3, 0.1, -2.5, np.float32(1.7)])
def test_array_op_scalar_both_sides_and_in_place(dtype, op, scalar):
    a, _ = operands(dtype, seed=1)
    a[a == 0] = 1
    ga = to_gpu(a)
    s = np.asarray(scalar).astype(dtype)[()]  # a Python number joins in the array's dtype (numpy's NEP 50)
    assert_bits_equal(BINARY[op](ga, scalar).get(), BINARY[op](a, s))
    assert_bits_equal(BINARY[op](scalar, ga).get(), BINARY[op](s, a))
    g = ga.copy()
    same = g
    g = IN_PLACE[op](g, scalar)
    assert g is same
    assert_bits_equal(g.get(), BINARY[op](a, s))


@pytest.mark.parametrize("dtype", FLOATS)
def test_negation_and_expressions_on_2d(dtype):
    a, b = operands(dtype, n=6 * 35, seed=2)
    a, b = a.reshape(6, 35), b.reshape(6, 35)
    ga, gb = to_gpu(a), to_gpu(b)
    assert_bits_equal((-ga).get(), -a)
    ref = (a * s(dtype, 2) - b) / (b + s(dtype, 1)) * s(dtype, 0.5)
    assert_bits_equal(((ga * 2 - gb) / (gb + 1) * 0.5).get(), ref)


def s(dtype, v):
    return np.asarray(v).astype(dtype)[()]


def test_one_launch_per_operation_and_empty_arrays():
    ga, gb = to_gpu(np.ones(100, np.float32)), to_gpu(np.ones(100, np.float32))
    with softgpu.measure() as m:
        ga += gb
    assert m.launches_count == 1
    e = to_gpu(np.zeros((0, 3), np.float32))
    assert (e + 1).shape == (0, 3) and (e * e).shape == (0, 3)


def test_refusals_name_the_fix():
    f32, f64 = to_gpu(np.ones(4, np.float32)), to_gpu(np.ones(4))
    with pytest.raises(TypeError, match=r"dtypes float32 and float64 differ; convert one with \.astype"):
        f32 + f64
    with pytest.raises(ValueError, match="shapes .* differ"):
        f32 + to_gpu(np.ones(5, np.float32))
    with pytest.raises(TypeError, match=r"float16, float32 or float64 arrays, got int32.*astype"):
        to_gpu(np.ones(4, np.int32)) * 2
    with pytest.raises(TypeError):
        f32 + "1"
    with pytest.raises(TypeError):
        f32 + np.ones(4, np.float32)  # a host array: copy it with to_gpu first
    with pytest.raises(TypeError, match="GPUArray or a real number"):
        elementwise.arithmetic("add", f32, 1j)
    before = f32.get()
    with pytest.raises(TypeError):
        f32 += f64
    np.testing.assert_array_equal(f32.get(), before)  # a refused in-place operation changes nothing
