// exec/alu.hpp: the values of float ALU instructions as exec/interp.cpp computes them: f16/bf16 lanes, float operations under PTX rounding and ftz, comparisons, conversions with
// saturation, atomic read-modify-write. Inline: they are the interpreter loop's inner calls.
#pragma once

#include <cmath>
#include <cstring>

#include "exec/alu_int.hpp"
#include "exec/float.hpp"

namespace softgpu {
namespace alu {

inline uint64_t half_bits_value(uint32_t h, bool bf) { return f64_bits(bf ? bf16_value(h) : f16_value(h)); }

// One f16/bf16 lane of a float instruction.
inline uint32_t half_op(const Instr& in, uint32_t a, uint32_t b, uint32_t c, bool bf) {
    auto val = [&](uint32_t h) {
        double v = bf ? bf16_value(h) : f16_value(h);
        if ((in.flags & F_FTZ) && std::fabs(v) < (bf ? 1.1754943508222875e-38 : 6.103515625e-05)) v = std::copysign(0.0, v);
        return v;
    };
    auto out = [&](double r) -> uint32_t {
        if (in.flags & F_RELU) { if (std::isnan(r)) return bf ? 0x7fffu : 0x7fffu; if (r < 0) r = 0; }
        if ((in.flags & F_FTZ) && std::fabs(r) < (bf ? 1.1754943508222875e-38 : 6.103515625e-05)) r = std::copysign(0.0, r);
        Round rm = in.mod2 == R_NONE ? R_RN : Round(in.mod2);
        return bf ? to_bf16(r, rm, in.flags & F_SAT) : to_f16(r, rm, in.flags & F_SAT);
    };
    uint32_t sign = 0x8000;
    switch (in.mod) {
        case FO_NEG: return (a ^ sign) & 0xffff;
        case FO_ABS: return a & 0x7fff;
        case FO_COPYSIGN: return (b & 0x7fff) | (a & sign);
        case FO_ADD: return out(val(a) + val(b));
        case FO_SUB: return out(val(a) - val(b));
        case FO_MUL: return out(val(a) * val(b));
        case FO_FMA: return out(std::fma(val(a), val(b), val(c)));
        case FO_DIV: return out(val(a) / val(b));
        case FO_MIN: {
            double r = ptx_min(val(a), val(b), in.flags & F_NAN);
            return std::isnan(r) ? 0x7fffu : out(r);
        }
        case FO_MAX: {
            double r = ptx_max(val(a), val(b), in.flags & F_NAN);
            return std::isnan(r) ? 0x7fffu : out(r);
        }
        case FO_RCP: return out(1.0 / val(a));
        case FO_SQRT: return out(std::sqrt(val(a)));
        case FO_RSQRT: return out(1.0 / std::sqrt(val(a)));
        case FO_EX2: return out(std::exp2(val(a)));
        case FO_LG2: return out(std::log2(val(a)));
        case FO_SIN: return out(std::sin(val(a)));
        case FO_COS: return out(std::cos(val(a)));
        case FO_TANH: return out(std::tanh(val(a)));
    }
    return 0;
}

template <class T>
inline T float_op(const Instr& in, T a, T b, T c) {
    Round r = Round(in.mod2);
    switch (in.mod) {
        case FO_ADD: return with_rounding(r, [&] { volatile T x = a; return T(x + b); });
        case FO_SUB: return with_rounding(r, [&] { volatile T x = a; return T(x - b); });
        case FO_MUL: return with_rounding(r, [&] { volatile T x = a; return T(x * b); });
        case FO_FMA: return with_rounding(r, [&] { volatile T x = a; return T(std::fma(T(x), b, c)); });
        case FO_DIV: return with_rounding(r, [&] { volatile T x = a; return T(x / b); });
        case FO_MIN: return ptx_min(a, b, in.flags & F_NAN);
        case FO_MAX: return ptx_max(a, b, in.flags & F_NAN);
        case FO_NEG: return -a;
        case FO_ABS: return std::fabs(a);
        case FO_RCP: return with_rounding(r, [&] { volatile T x = a; return T(T(1) / x); });
        case FO_SQRT: return with_rounding(r, [&] { volatile T x = a; return T(std::sqrt(T(x))); });
        case FO_RSQRT: return T(1) / std::sqrt(a);
        case FO_EX2: return std::exp2(a);
        case FO_LG2: return std::log2(a);
        case FO_SIN: return std::sin(a);
        case FO_COS: return std::cos(a);
        case FO_TANH: return std::tanh(a);
        case FO_COPYSIGN: return std::copysign(b, a);
    }
    return 0;
}

inline uint64_t float_instr(const Instr& in, uint64_t a, uint64_t b, uint64_t c) {
    switch (in.ty) {
        case T_F32: {
            float x = as_f32(a), y = as_f32(b), z = as_f32(c);
            if (in.mod == FO_NEG) return (a ^ 0x80000000u) & 0xffffffffu;
            if (in.mod == FO_ABS && !(in.flags & F_FTZ)) return a & 0x7fffffffu;
            if (in.flags & F_FTZ) x = ftz32(x), y = ftz32(y), z = ftz32(z);
            float r = float_op<float>(in, x, y, z);
            if (in.flags & F_FTZ) r = ftz32(r);
            if (in.flags & F_SAT) r = std::isnan(r) ? 0.0f : r < 0 ? 0.0f : r > 1 ? 1.0f : r;
            if (in.flags & F_RELU) r = std::isnan(r) ? r : r < 0 ? 0.0f : r;
            return in.mod == FO_COPYSIGN ? f32_bits(r) : f32_result(r);
        }
        case T_F64: {
            if (in.mod == FO_NEG) return a ^ 0x8000000000000000ull;
            if (in.mod == FO_ABS) return a & 0x7fffffffffffffffull;
            double r = float_op<double>(in, as_f64(a), as_f64(b), as_f64(c));
            if (in.flags & F_SAT) r = std::isnan(r) ? 0.0 : r < 0 ? 0.0 : r > 1 ? 1.0 : r;
            return f64_bits(r);
        }
        case T_F16: case T_BF16:
            return half_op(in, uint32_t(a & 0xffff), uint32_t(b & 0xffff), uint32_t(c & 0xffff), in.ty == T_BF16);
        default: {  // f16x2, bf16x2
            bool bf = in.ty == T_BF16X2;
            uint32_t lo = half_op(in, uint32_t(a & 0xffff), uint32_t(b & 0xffff), uint32_t(c & 0xffff), bf);
            uint32_t hi = half_op(in, uint32_t(a >> 16 & 0xffff), uint32_t(b >> 16 & 0xffff), uint32_t(c >> 16 & 0xffff), bf);
            return lo | (uint64_t(hi) << 16);
        }
    }
}

// The value of a float-typed operand as double (and whether the type is a float at all).
inline double float_value(uint64_t v, uint8_t ty, bool ftz) {
    switch (ty) {
        case T_F32: { float f = as_f32(v); return ftz ? ftz32(f) : f; }
        case T_F64: return as_f64(v);
        case T_F16: return f16_value(uint32_t(v & 0xffff));
        case T_BF16: return bf16_value(uint32_t(v & 0xffff));
        default: return 0;
    }
}

inline bool int_compare(uint64_t a, uint64_t b, const Instr& in) {
    bool s = type_signed(Type(in.ty2));
    int64_t sa = sext(a, in.sh), sb = sext(b, in.sh);
    uint64_t ua = a & in.mask, ub = b & in.mask;
    switch (in.mod) {
        case C_EQ: return ua == ub;
        case C_NE: return ua != ub;
        case C_LT: return s ? sa < sb : ua < ub;
        case C_LE: return s ? sa <= sb : ua <= ub;
        case C_GT: return s ? sa > sb : ua > ub;
        case C_GE: return s ? sa >= sb : ua >= ub;
        case C_LO: return ua < ub;
        case C_LS: return ua <= ub;
        case C_HI: return ua > ub;
        case C_HS: return ua >= ub;
        default: return false;
    }
}

// Compares (one lane for the x2 types: lane 0 = low half).
inline bool compare(uint64_t a, uint64_t b, const Instr& in, int lane) {
    uint8_t ty = in.ty2;
    if (ty == T_F16X2 || ty == T_BF16X2) {
        a >>= 16 * lane, b >>= 16 * lane;
        ty = ty == T_F16X2 ? T_F16 : T_BF16;
    }
    if (!type_float(Type(ty))) return int_compare(a, b, in);
    bool ftz = in.flags & F_FTZ;
    return float_compare(float_value(a, ty, ftz), float_value(b, ty, ftz), in.mod);
}

inline bool combine(bool r, const Instr& in, uint64_t c) {
    bool p = (c & 1) ^ ((in.flags & F_CNEG) != 0);
    switch (in.mod2) {
        case B_AND: return r && p;
        case B_OR: return r || p;
        case B_XOR: return r != p;
        default: return r;
    }
}

// Integer value range of an integer type for saturation.
inline void int_range(uint8_t ty, double* lo, double* hi) {
    int bits = type_bits(Type(ty));
    if (type_signed(Type(ty))) {
        *lo = -std::ldexp(1.0, bits - 1);
        *hi = std::ldexp(1.0, bits - 1) - 1;
    } else {
        *lo = 0;
        *hi = std::ldexp(1.0, bits) - 1;
    }
}

inline uint64_t cvt(const Instr& in, uint64_t v) {
    Type dt = Type(in.ty), st = Type(in.ty2);
    Round r = Round(in.mod);
    bool ftz = in.flags & F_FTZ, sat = in.flags & F_SAT;
    int dbits = type_bits(dt);
    uint64_t dmask = dbits >= 64 ? ~0ull : (1ull << dbits) - 1;
    if (type_float(st)) {
        double x = float_value(v, st, ftz);
        if (r >= R_RNI && r <= R_RPI) {  // round to integral value
            x = r == R_RNI ? std::nearbyint(x) : r == R_RZI ? std::trunc(x) : r == R_RMI ? std::floor(x) : std::ceil(x);
        }
        if (!type_float(dt)) {
            if (std::isnan(x)) return 0;
            double lo, hi;
            int_range(dt, &lo, &hi);
            if (r < R_RNI) x = std::nearbyint(x);  // .rn and friends on float->int: nearest
            if (x < lo) x = lo;
            if (x > hi) x = hi;
            if (type_signed(dt)) return uint64_t(int64_t(x)) & dmask;
            return (x >= 18446744073709551615.0 ? ~0ull : uint64_t(x)) & dmask;
        }
        Round fr = (r >= R_RNI && r <= R_RPI) || r == R_NONE ? R_RN : r;
        switch (dt) {
            case T_F64: return f64_bits(sat ? (std::isnan(x) ? 0 : std::fmin(std::fmax(x, 0.0), 1.0)) : x);
            case T_F32: {
                uint64_t b = round_to_format(x, 8, 23, fr, sat);
                if (std::isnan(x) && !sat) return 0x7fffffffu;
                if (ftz) b = f32_bits(ftz32(as_f32(b)));
                return b;
            }
            case T_F16: return to_f16(in.flags & F_RELU && x < 0 ? 0.0 : x, fr, sat);
            case T_BF16: return to_bf16(in.flags & F_RELU && x < 0 ? 0.0 : x, fr, sat);
            default: return 0;
        }
    }
    // Integer source.
    int sbits = type_bits(st);
    bool ssigned = type_signed(st);
    int64_t iv = ssigned ? sext(v, 64 - sbits) : int64_t(sbits >= 64 ? v : v & ((1ull << sbits) - 1));
    uint64_t uv = uint64_t(iv);
    if (!type_float(dt)) {  // saturating integer conversion
        double lo, hi;
        int_range(dt, &lo, &hi);
        if (ssigned) {
            if (double(iv) < lo) return uint64_t(int64_t(lo)) & dmask;
            if (double(iv) > hi) return uint64_t(hi) & dmask;
        } else if (double(uv) > hi) {
            return (type_signed(dt) ? uint64_t(int64_t(hi)) : uint64_t(hi)) & dmask;
        }
        return uv & dmask;
    }
    Round fr = r == R_NONE ? R_RN : r;
    switch (dt) {
        case T_F64: return f64_bits(with_rounding(fr, [&] { volatile int64_t a = iv; volatile uint64_t b = uv; return ssigned ? double(a) : double(b); }));
        case T_F32: return f32_bits(with_rounding(fr, [&] { volatile int64_t a = iv; volatile uint64_t b = uv; return ssigned ? float(a) : float(b); }));
        case T_F16: return to_f16(ssigned ? double(iv) : double(uv), fr, sat);
        case T_BF16: return to_bf16(ssigned ? double(iv) : double(uv), fr, sat);
        default: return 0;
    }
}

// The value an atom/red writes: old combined with b (c: the cas swap value).
inline uint64_t atomic_value(const Instr& in, uint64_t old, uint64_t b, uint64_t c) {
    uint64_t nv = 0;
    int bits = in.size * 8;
    uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
    bool s = type_signed(Type(in.ty));
    int sh = 64 - bits;
    switch (in.mod) {
        case A_ADD:
            if (in.ty == T_F32) nv = f32_result(ftz32(ftz32(as_f32(old)) + ftz32(as_f32(b))));
            else if (in.ty == T_F64) nv = f64_bits(as_f64(old) + as_f64(b));
            else if (type_float(Type(in.ty))) {
                Instr f = in;
                f.op = OP_FLOAT;
                f.mod = FO_ADD;
                f.mod2 = R_RN;
                f.flags = 0;
                nv = float_instr(f, old, b, 0);
            } else nv = old + b;
            break;
        case A_MIN:
        case A_MAX: {
            bool lt;
            if (in.ty == T_F32 || in.ty == T_F64) {
                double x = float_value(old, in.ty, false), y = float_value(b, in.ty, false);
                double r = in.mod == A_MIN ? ptx_min(x, y, false) : ptx_max(x, y, false);
                nv = in.ty == T_F32 ? f32_result(float(r)) : f64_bits(r);
                break;
            }
            lt = s ? sext(old, sh) < sext(b, sh) : (old & m) < (b & m);
            nv = (in.mod == A_MIN) == lt ? old : b;
            break;
        }
        case A_EXCH: nv = b; break;
        case A_CAS: nv = (old & m) == (b & m) ? c : old; break;
        case A_INC: nv = (old & m) >= (b & m) ? 0 : old + 1; break;
        case A_DEC: nv = ((old & m) == 0 || (old & m) > (b & m)) ? b : old - 1; break;
        case A_AND: nv = old & b; break;
        case A_OR: nv = old | b; break;
        case A_XOR: nv = old ^ b; break;
    }
    return nv;
}

}  // namespace alu
}  // namespace softgpu
