"""Integer, float, half and bfloat16 semantics on the software GPU against references written from
the maths (Python integers, float64 numpy, numpy float16, bf16 from float32 bit manipulation)."""
from fractions import Fraction

import numpy as np
import pytest

from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, kernel_source, run

M32, M64 = (1 << 32) - 1, (1 << 64) - 1


def s32(v):
    v &= M32
    return v - (1 << 32) if v >> 31 else v


def s64(v):
    v &= M64
    return v - (1 << 64) if v >> 63 else v


def cdiv(a, b):
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def int_reference(x, y):
    ux, uy = x & M32, y & M32
    X, Y = x * 77777, y + (1 if y >= 0 else -1)
    yy = y if y != 0 else 1
    pos = uy & 31
    sbit_pos = min(pos + 5 - 1, 31)
    sbit = (ux >> sbit_pos) & 1
    se = 0
    for i in range(32):
        bit = ((ux >> (pos + i)) & 1) if (i < 5 and pos + i <= 31) else sbit
        se |= bit << i
    bi = uy
    p = ux & 31
    for i in range(6):
        if p + i <= 31:
            bi = (bi & ~(1 << (p + i))) | (((ux >> i) & 1) << (p + i))
    src = [(ux >> (8 * k)) & 255 for k in range(4)] + [(uy >> (8 * k)) & 255 for k in range(4)]
    perm = sum(src[(0x5140 >> (4 * k)) & 7] << (8 * k) for k in range(4))
    return [
        (x * y) >> 32, (ux * uy) >> 32, cdiv(x, yy), x - yy * cdiv(x, yy), ux // (uy or 1),
        cdiv(X, Y), X - Y * cdiv(X, Y), bin(ux).count("1"), 32 - ux.bit_length(),
        int(format(ux, "032b")[::-1], 2), perm, (ux >> pos) & 0x7f, s32(se), bi & M32,
        x >> pos, ux >> pos, (ux << pos) & M32, (ux & -ux).bit_length() if ux else 0,
        bin(X & M64).count("1"), 64 - (X & M64).bit_length(), s64((X * Y) >> 64),
        (min(x, y) + 3 * max(ux, uy)) & M32, (abs(x - y) + 5) & M32, s64(((X & M64) * (Y & M64)) >> 64),
    ]


def test_integer_instructions(ctx):
    rng = np.random.default_rng(0)
    a = list(rng.integers(-2**31 + 1, 2**31 - 1, 40)) + [0, 1, -1, 7, -7, 2**31 - 1, -2**31 + 1, 12345, -100, 99]
    b = list(rng.integers(-2**31 + 1, 2**31 - 1, 40)) + [5, -3, 3, -2, 2, -1, 7, 0, 7, -13]
    a, b = np.array(a, np.int32), np.array(b, np.int32)
    n = a.size
    with Module(cu_file="integer.cu") as m, Device() as d:
        pa, pb, po = d.put(a), d.put(b), d.alloc(8 * 24 * n)
        run(m.fn("int_ops"), (1,), (64,), pa, pb, po, np.int32(n))
        out = d.get(po, 24 * n, np.int64).reshape(n, 24)
    for i in range(n):
        expect = int_reference(int(a[i]), int(b[i]))
        assert list(map(int, out[i])) == expect, (i, int(a[i]), int(b[i]),
                                                   [(k, int(g), e) for k, (g, e) in enumerate(zip(out[i], expect)) if g != e])


def round_f32(fr):
    """Correctly rounded (nearest, ties to even) float32 of an exact Fraction."""
    f = np.float32(float(fr))
    if not np.isfinite(f):
        return f
    cands = [c for c in (f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))) if np.isfinite(c)]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - fr), int(np.array(c).view(np.uint32)) & 1))


def flush(v):
    v = np.float32(v)
    return np.float32(np.copysign(0.0, v)) if v != 0 and abs(v) < np.finfo(np.float32).tiny else v


FLOAT_A = [1.5, -2.25, 0.1, 3.0, np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, -3e-39, 1e-20, 7.0, 2.5, -1e30, 1e-3]
FLOAT_B = [0.3, 4.0, -0.7, 3.0, 1.0, 2.0, np.inf, 0.0, -0.0, 2.0, 1.0, 1e-20, np.nan, -2.5, 1e10, -1e-3]


@pytest.mark.parametrize("ftz", [False, True])
def test_float_special_values_and_ftz(ctx, ftz):
    rng = np.random.default_rng(1)
    a = np.array(FLOAT_A + list(rng.standard_normal(16)), np.float32)
    b = np.array(FLOAT_B + list(rng.standard_normal(16) * 3), np.float32)
    n = a.size
    ptx = compile_ptx(kernel_source("float.cu"), ("--ftz=true",) if ftz else ("--ftz=false",))
    with Module(ptx) as m, Device() as d:
        pa, pb, pf, pc = d.put(a), d.put(b), d.alloc(48 * n), d.alloc(48 * n)
        run(m.fn("float_ops"), (1,), (n,), pa, pb, pf, pc, np.int32(n))
        f = d.get(pf, 12 * n, np.float32).reshape(n, 12)
        c = d.get(pc, 12 * n, np.int32).reshape(n, 12)
    same = lambda got, exp: (np.isnan(got) and np.isnan(exp)) or (got == exp and np.signbit(got) == np.signbit(exp))
    for i in range(n):
        x, y = (flush(a[i]), flush(b[i])) if ftz else (a[i], b[i])
        fl = flush if ftz else (lambda v: np.float32(v))
        X, Y = np.float64(x), np.float64(y)
        with np.errstate(all="ignore"):
            expect = {0: fl(X + Y), 1: fl(X * Y), 2: fl(X / Y), 3: fl(np.sqrt(abs(X))), 9: fl(X - Y)}
            if np.isfinite(X) and np.isfinite(Y):
                fr = Fraction(float(x)) * Fraction(float(y)) + 1
                expect[4] = fl(round_f32(fr)) if fr != 0 else fl(X * Y + 1)
            expect[5] = fl(np.float64(1) / Y)
        for k, e in expect.items():
            assert same(f[i, k], np.float32(e)), (ftz, i, k, x, y, f[i, k], e)
        lo = [v for v in (x, y) if not np.isnan(v)]
        if lo:
            mn, mx = min(lo), max(lo)
            if x == y == 0:
                mn, mx = (x if np.signbit(x) else y), (y if np.signbit(x) else x)
            assert same(f[i, 6], np.float32(mn)) and same(f[i, 7], np.float32(mx)), (i, x, y, f[i, 6:8])
        assert c[i, 1] == int(x < y) and c[i, 2] == int(not (x >= y)), (i, x, y)
        assert c[i, 3] == int(x == y) and c[i, 4] == int(x != y) and c[i, 5] == int(np.isnan(x))
        assert c[i, 6] == int(np.isinf(x)) and c[i, 11] == int(np.signbit(a[i]))
        t = np.float32(x * np.float32(1000))
        if np.isfinite(t) and abs(t) < 2**31:
            assert c[i, 0] == int(np.rint(t)) and c[i, 7] == int(np.trunc(t))
            assert c[i, 8] == int(np.floor(t)) and c[i, 9] == int(np.ceil(t))
        elif np.isnan(t):
            assert c[i, 0] == 0 and c[i, 7] == 0
        else:  # float->int conversions saturate
            assert c[i, 7] == (2**31 - 1 if t > 0 else -2**31)


def bf16_bits(v):
    """float32 -> bf16 bits, round to nearest even (bit manipulation on the float32 pattern)."""
    u = np.array(v, np.float32).view(np.uint32).astype(np.uint64)
    if np.isnan(np.float32(v)):
        return 0x7FFF
    return int(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)


def bf16_value(bits):
    return float(np.array([bits << 16], np.uint32).view(np.float32)[0])


def test_half_arithmetic_comparisons_conversions(ctx):
    rng = np.random.default_rng(2)
    a = np.array([1.5, -2.0, 0.1, np.inf, np.nan, -0.0, 6e-8, 65504, 3.0] + list(rng.standard_normal(23) * 4), np.float16)
    b = np.array([0.25, 3.0, -0.3, 1.0, 2.0, 0.0, 6e-8, 2.0, 3.0] + list(rng.standard_normal(23) * 4), np.float16)
    n = a.size
    with Module(cu_file="half.cu") as m, Device() as d:
        pa, pb, po, pf = d.put(a), d.put(b), d.alloc(24 * n), d.alloc(24 * n)
        run(m.fn("half_ops"), (1,), (n,), pa, pb, po, pf, np.int32(n))
        o = d.get(po, 12 * n, np.float16).reshape(n, 12)
        g = d.get(pf, 6 * n, np.float32).reshape(n, 6)

    def f16_round(fr):
        h = np.float16(float(fr))
        if not np.isfinite(h):
            return h
        cands = [c for c in (h, np.nextafter(h, np.float16(np.inf)), np.nextafter(h, np.float16(-np.inf))) if np.isfinite(c)]
        return min(cands, key=lambda c: (abs(Fraction(float(c)) - fr), int(np.array(c).view(np.uint16)) & 1))

    same = lambda got, exp: (np.isnan(got) and np.isnan(exp)) or (got == exp and np.signbit(got) == np.signbit(exp))
    for i in range(n):
        x, y = np.float64(a[i]), np.float64(b[i])
        with np.errstate(all="ignore"):
            exp = {0: np.float16(x + y), 1: np.float16(x - y), 2: np.float16(x * y), 4: -a[i], 5: abs(a[i]),
                   8: np.float16(x * 3)}
            if np.isfinite(x) and np.isfinite(y):
                # An exact zero takes its sign from IEEE float64 arithmetic (exact there too).
                exp[3] = f16_round(Fraction(x) * Fraction(y) + Fraction(x)) if x * y + x != 0 else np.float16(x * y + x)
                exp[10] = exp[3]
                exp[11] = f16_round(Fraction(y) * Fraction(x) + Fraction(y)) if y * x + y != 0 else np.float16(y * x + y)
        for k, e in exp.items():
            assert same(o[i, k], np.float16(e)), (i, k, x, y, o[i, k], e)
        if not np.isnan(x) and not np.isnan(y):
            assert o[i, 6] == max(x, y) and o[i, 7] == min(x, y)
            if np.isfinite(x) and np.isfinite(y) and y != 0:
                np.testing.assert_allclose(np.float64(o[i, 9]), np.float16(x / y), rtol=1e-3)
        assert same(g[i, 0], np.float32(x))
        assert g[i, 1] == float(x < y) and g[i, 2] == float(not (x < y)) and g[i, 3] == float(np.isnan(x))
        assert g[i, 5] == float(x == y)
        if np.isfinite(x):
            assert g[i, 4] == float(np.trunc(x))


def test_bfloat16_arithmetic_and_conversions(ctx):
    rng = np.random.default_rng(3)
    fa = rng.standard_normal(32).astype(np.float32) * 10
    fb = rng.standard_normal(32).astype(np.float32)
    fin = rng.standard_normal(32).astype(np.float32) * 100
    a = np.array([bf16_bits(v) for v in fa], np.uint16)
    b = np.array([bf16_bits(v) for v in fb], np.uint16)
    n = a.size
    with Module(cu_file="half.cu") as m, Device() as d:
        pa, pb, pin, po, pf = d.put(a), d.put(b), d.put(fin), d.alloc(16 * n), d.alloc(8 * n)
        run(m.fn("bf16_ops"), (1,), (n,), pa, pb, pin, po, pf, np.int32(n))
        o = d.get(po, 8 * n, np.uint16).reshape(n, 8)
        f = d.get(pf, 2 * n, np.float32).reshape(n, 2)
    for i in range(n):
        x, y = bf16_value(int(a[i])), bf16_value(int(b[i]))  # exact float64 values
        exp = [bf16_bits(np.float32(x + y)), bf16_bits(np.float32(x - y)), bf16_bits(np.float32(x * y)),
               bf16_bits(np.float32(x * y + x)), bf16_bits(fin[i]),
               int(np.array(fin[i], np.float32).view(np.uint32)) >> 16,
               int(a[i]) if x >= y else int(b[i]), bf16_bits(np.float32(y * y))]
        assert list(map(int, o[i])) == exp, (i, x, y, list(map(hex, o[i])), list(map(hex, exp)))
        assert f[i, 0] == x and f[i, 1] == float(x < y)
