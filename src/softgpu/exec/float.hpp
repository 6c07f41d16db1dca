// exec/float.hpp: floating-point semantics of PTX on the host: rounding to f16/bf16/f32 with any
// rounding mode, flush-to-zero, and arithmetic under a non-default rounding mode.
#pragma once

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ptx/program.hpp"

namespace softgpu {

inline float as_f32(uint64_t v) { float f; uint32_t u = uint32_t(v); memcpy(&f, &u, 4); return f; }
inline double as_f64(uint64_t v) { double d; memcpy(&d, &v, 8); return d; }
inline uint64_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
// A computed f32 result: NVIDIA GPUs return the canonical NaN 0x7fffffff for every NaN an
// arithmetic operation produces (x86 would give 0xffc00000 or propagate an operand's payload).
inline uint64_t f32_result(float f) { return f != f ? 0x7fffffffu : f32_bits(f); }
inline uint64_t f64_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

inline float ftz32(float f) { return std::fpclassify(f) == FP_SUBNORMAL ? std::copysign(0.0f, f) : f; }

// Exact value of an IEEE binary16 / bfloat16 bit pattern.
inline double f16_value(uint32_t h) {
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0) v = std::ldexp(double(m), -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp(double(m | 0x400), int(e) - 25);
    return (h & 0x8000) ? -v : v;
}
inline double bf16_value(uint32_t h) { return as_f32(uint64_t(h & 0xffff) << 16); }

// Rounds x to a binary format with `ebits` exponent and `mbits` mantissa bits under mode r
// (R_RN/R_NONE nearest-even, R_RZ, R_RM, R_RP, R_RNA). Returns the bit pattern; NaN -> canonical NaN.
inline uint64_t round_to_format(double x, int ebits, int mbits, Round r, bool sat = false) {
    uint64_t sign = std::signbit(x) ? 1ull << (ebits + mbits) : 0;
    uint64_t exp_all = (1ull << ebits) - 1;
    if (std::isnan(x)) return sat ? 0 : (exp_all << mbits) | ((1ull << mbits) - 1);  // canonical NaN: all ones
    if (sat) {
        if (x <= 0) return 0;
        if (x >= 1) x = 1;
        sign = 0;
    }
    double a = std::fabs(x);
    if (a == 0) return sign;
    int bias = int(exp_all >> 1);
    int emin = 1 - bias, emax = bias;
    uint64_t inf = exp_all << mbits;
    uint64_t maxfin = inf - 1;
    if (std::isinf(a)) return sign | inf;
    int ex;
    std::frexp(a, &ex);
    int E = ex - 1;
    if (E < emin) E = emin;
    double q = std::ldexp(a, mbits - E);  // exact scaling
    double qi;
    bool neg = sign != 0;
    switch (r) {
        case R_RZ: qi = std::trunc(q); break;
        case R_RM: qi = neg ? std::ceil(q) : std::floor(q); break;
        case R_RP: qi = neg ? std::floor(q) : std::ceil(q); break;
        case R_RNA: qi = std::floor(q + 0.5); break;
        default: qi = std::nearbyint(q); break;
    }
    // qi * 2^(E - mbits) is the rounded magnitude; renormalise if rounding carried into a new binade.
    uint64_t mant = uint64_t(qi);
    int e2 = E;
    if (mant >> (mbits + 1)) { mant >>= 1; ++e2; }
    bool overflow = e2 > emax;
    if (overflow) {
        bool to_inf = r == R_RN || r == R_NONE || r == R_RNA || (r == R_RP && !neg) || (r == R_RM && neg);
        return sign | (to_inf ? inf : maxfin);
    }
    if (mant < (1ull << mbits)) return sign | mant;  // subnormal (or zero)
    return sign | (uint64_t(e2 + bias) << mbits) | (mant & ((1ull << mbits) - 1));
}
inline uint32_t to_f16(double x, Round r = R_RN, bool sat = false) { return uint32_t(round_to_format(x, 5, 10, r, sat)); }
inline uint32_t to_bf16(double x, Round r = R_RN, bool sat = false) { return uint32_t(round_to_format(x, 8, 7, r, sat)); }

// Runs f() with the host rounding mode set to r (for .rz/.rm/.rp arithmetic).
template <class F>
inline auto with_rounding(Round r, F f) -> decltype(f()) {
    if (r == R_NONE || r == R_RN) return f();
    int mode = r == R_RZ ? FE_TOWARDZERO : r == R_RM ? FE_DOWNWARD : FE_UPWARD;
    fesetround(mode);
    auto v = f();
    fesetround(FE_TONEAREST);
    return v;
}

// PTX min/max: a NaN operand yields the other operand (both NaN: NaN); -0 < +0.
template <class T>
inline T ptx_min(T a, T b, bool nan) {
    if (std::isnan(a) || std::isnan(b)) {
        if (nan || (std::isnan(a) && std::isnan(b))) return T(NAN);
        return std::isnan(a) ? b : a;
    }
    if (a == b) return std::signbit(a) ? a : b;
    return a < b ? a : b;
}
template <class T>
inline T ptx_max(T a, T b, bool nan) {
    if (std::isnan(a) || std::isnan(b)) {
        if (nan || (std::isnan(a) && std::isnan(b))) return T(NAN);
        return std::isnan(a) ? b : a;
    }
    if (a == b) return std::signbit(a) ? b : a;
    return a > b ? a : b;
}

inline bool float_compare(double a, double b, uint8_t cmp) {
    bool un = std::isnan(a) || std::isnan(b);
    switch (cmp) {
        case C_EQ: return !un && a == b;
        case C_NE: return !un && a != b;
        case C_LT: return !un && a < b;
        case C_LE: return !un && a <= b;
        case C_GT: return !un && a > b;
        case C_GE: return !un && a >= b;
        case C_EQU: return un || a == b;
        case C_NEU: return un || a != b;
        case C_LTU: return un || a < b;
        case C_LEU: return un || a <= b;
        case C_GTU: return un || a > b;
        case C_GEU: return un || a >= b;
        case C_NUM: return !un;
        case C_NAN: return un;
        default: return false;
    }
}

}  // namespace softgpu
