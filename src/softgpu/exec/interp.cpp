// exec/interp.cpp: the interpreter loop. One thread runs until it blocks (barrier, warp
// collective), exits, faults, or uses up its time slice. Memory accesses are checked here
// (memcheck, racecheck, initcheck) and counted.
#include <cmath>
#include <cstring>

#include "exec/exec.hpp"
#include "exec/float.hpp"

namespace softgpu {

namespace {

const char* space_name(int sp) {
    switch (sp) {
        case SP_GLOBAL: return "global";
        case SP_SHARED: return "shared";
        case SP_LOCAL: return "local";
        case SP_KPARAM: return "param";
        default: return "generic";
    }
}
const char* access_name(int kind) { return kind == AC_LOAD ? "load" : kind == AC_STORE ? "store" : "atomic"; }

std::string hex(uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
    return b;
}

inline int64_t sext(uint64_t v, int sh) { return int64_t(v << sh) >> sh; }

uint32_t prmt(uint32_t a, uint32_t b, uint32_t c, int mode) {
    uint8_t src[8];
    for (int i = 0; i < 4; ++i) src[i] = uint8_t(a >> (8 * i)), src[4 + i] = uint8_t(b >> (8 * i));
    uint32_t d = 0, s = c & 3;
    for (int i = 0; i < 4; ++i) {
        uint32_t byte;
        switch (mode) {
            case 0: {
                uint32_t sel = (c >> (4 * i)) & 0xf;
                byte = src[sel & 7];
                if (sel & 8) byte = (byte & 0x80) ? 0xff : 0;
                break;
            }
            case 1: byte = src[(s + i) & 7]; break;                 // f4e
            case 2: byte = src[(s - i) & 7]; break;                 // b4e
            case 3: byte = src[s]; break;                           // rc8
            case 4: byte = src[i > int(s) ? i : s]; break;          // ecl
            case 5: byte = src[i < int(s) ? i : s]; break;          // ecr
            default: byte = src[(s & 1) * 2 + (i & 1)]; break;      // rc16
        }
        d |= byte << (8 * i);
    }
    return d;
}

inline uint64_t half_bits_value(uint32_t h, bool bf) { return f64_bits(bf ? bf16_value(h) : f16_value(h)); }

// One f16/bf16 lane of a float instruction.
uint32_t half_op(const Instr& in, uint32_t a, uint32_t b, uint32_t c, bool bf) {
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
T float_op(const Instr& in, T a, T b, T c) {
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

uint64_t float_instr(const Instr& in, uint64_t a, uint64_t b, uint64_t c) {
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
double float_value(uint64_t v, uint8_t ty, bool ftz) {
    switch (ty) {
        case T_F32: { float f = as_f32(v); return ftz ? ftz32(f) : f; }
        case T_F64: return as_f64(v);
        case T_F16: return f16_value(uint32_t(v & 0xffff));
        case T_BF16: return bf16_value(uint32_t(v & 0xffff));
        default: return 0;
    }
}

bool int_compare(uint64_t a, uint64_t b, const Instr& in) {
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
bool compare(uint64_t a, uint64_t b, const Instr& in, int lane) {
    uint8_t ty = in.ty2;
    if (ty == T_F16X2 || ty == T_BF16X2) {
        a >>= 16 * lane, b >>= 16 * lane;
        ty = ty == T_F16X2 ? T_F16 : T_BF16;
    }
    if (!type_float(Type(ty))) return int_compare(a, b, in);
    bool ftz = in.flags & F_FTZ;
    return float_compare(float_value(a, ty, ftz), float_value(b, ty, ftz), in.mod);
}

bool combine(bool r, const Instr& in, uint64_t c) {
    bool p = (c & 1) ^ ((in.flags & F_CNEG) != 0);
    switch (in.mod2) {
        case B_AND: return r && p;
        case B_OR: return r || p;
        case B_XOR: return r != p;
        default: return r;
    }
}

// Integer value range of an integer type for saturation.
void int_range(uint8_t ty, double* lo, double* hi) {
    int bits = type_bits(Type(ty));
    if (type_signed(Type(ty))) {
        *lo = -std::ldexp(1.0, bits - 1);
        *hi = std::ldexp(1.0, bits - 1) - 1;
    } else {
        *lo = 0;
        *hi = std::ldexp(1.0, bits) - 1;
    }
}

uint64_t cvt(const Instr& in, uint64_t v) {
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

}  // namespace

// Memory access resolution (returns a host pointer, or null after recording a finding).
#define SG_FAULT(code, check, msg)                  \
    do {                                            \
        finding(code, check, t, in, msg);           \
        return nullptr;                             \
    } while (0)

static inline bool misaligned(uint64_t a, uint32_t size) { return a & (size - 1); }

RunStatus Exec::run(Thread& t, uint32_t budget) {
    const Function* fn = &module->functions[t.fn];
    const Instr* code = fn->code.data();
    uint64_t* R = t.regs.data() + t.fp;
    uint32_t pc = t.pc;
    uint64_t executed = 0;
    RunStatus status = RUN_YIELD;
    LaunchCounts& C = *counts;
#define SAVE() (t.pc = pc)
#define RELOAD()                                   \
    do {                                           \
        fn = &module->functions[t.fn];             \
        code = fn->code.data();                    \
        R = t.regs.data() + t.fp;                  \
        pc = t.pc;                                 \
    } while (0)
    while (executed < budget) {
        const Instr& in = code[pc];
        ++executed;
        if (in.pred && !((R[in.pred] ^ ((in.flags & F_PNEG) ? 1 : 0)) & 1)) {
            ++pc;
            continue;
        }
        // The dispatch is generated from ptx/opcodes.def: each INTERP operation jumps to its label
        // op_NAME below (a missing label does not compile), each SCHED one hands the thread to the
        // scheduler. Labels stay inside the switch, so `break` ends an operation (++pc) and
        // `continue` has set pc itself.
        switch (in.op) {
#define SG_DISPATCH_INTERP(name) goto op_##name;
#define SG_DISPATCH_SCHED(name) goto sched;
#define SG_OP(name, text, where) case OP_##name: SG_DISPATCH_##where(name)
#include "ptx/opcodes.def"
#undef SG_DISPATCH_INTERP
#undef SG_DISPATCH_SCHED
            op_MOV: R[in.d] = R[in.a] & in.mask; break;
            op_ADD: R[in.d] = (R[in.a] + R[in.b]) & in.mask; break;
            op_SUB: R[in.d] = (R[in.a] - R[in.b]) & in.mask; break;
            op_MUL_LO: R[in.d] = (R[in.a] * R[in.b]) & in.mask; break;
            op_MAD_LO: R[in.d] = (R[in.a] * R[in.b] + R[in.c]) & in.mask; break;
            op_MUL_WIDE:
            op_MAD_WIDE: {
                uint64_t p = type_signed(Type(in.ty)) ? uint64_t(sext(R[in.a], in.sh) * sext(R[in.b], in.sh))
                                                      : (R[in.a] & ((1ull << (64 - in.sh)) - 1)) * (R[in.b] & ((1ull << (64 - in.sh)) - 1));
                if (in.op == OP_MAD_WIDE) p += R[in.c];
                R[in.d] = p & in.mask;
                break;
            }
            op_MUL_HI:
            op_MAD_HI: {
                int bits = 64 - in.sh;
                uint64_t hi;
                if (type_signed(Type(in.ty))) {
                    __int128 p = __int128(sext(R[in.a], in.sh)) * sext(R[in.b], in.sh);
                    hi = uint64_t(p >> bits);
                } else {
                    unsigned __int128 p = (unsigned __int128)(R[in.a] & in.mask) * (R[in.b] & in.mask);
                    hi = uint64_t(p >> bits);
                }
                if (in.op == OP_MAD_HI) hi += R[in.c];
                R[in.d] = hi & in.mask;
                break;
            }
            op_MUL24:
            op_MAD24: {
                bool s = type_signed(Type(in.ty));
                int64_t a = s ? sext(R[in.a], 40) : int64_t(R[in.a] & 0xffffff);
                int64_t b = s ? sext(R[in.b], 40) : int64_t(R[in.b] & 0xffffff);
                uint64_t p = uint64_t(a * b);
                uint64_t r = (in.flags & F_HI) ? (p >> 16) : p;
                if (in.op == OP_MAD24) r += R[in.c];
                R[in.d] = r & in.mask;
                break;
            }
            op_DIV:
            op_REM: {
                if (type_signed(Type(in.ty))) {
                    int64_t a = sext(R[in.a], in.sh), b = sext(R[in.b], in.sh);
                    int64_t r;
                    if (b == 0) r = in.op == OP_DIV ? -1 : a;
                    else if (b == -1) r = in.op == OP_DIV ? int64_t(0ull - uint64_t(a)) : 0;
                    else r = in.op == OP_DIV ? a / b : a % b;
                    R[in.d] = uint64_t(r) & in.mask;
                } else {
                    uint64_t a = R[in.a] & in.mask, b = R[in.b] & in.mask;
                    R[in.d] = b == 0 ? (in.op == OP_DIV ? in.mask : a) : (in.op == OP_DIV ? a / b : a % b);
                }
                break;
            }
            op_MIN:
            op_MAX: {
                bool lt;
                if (type_signed(Type(in.ty))) lt = sext(R[in.a], in.sh) < sext(R[in.b], in.sh);
                else lt = (R[in.a] & in.mask) < (R[in.b] & in.mask);
                R[in.d] = ((in.op == OP_MIN) == lt ? R[in.a] : R[in.b]) & in.mask;
                break;
            }
            op_NEG: R[in.d] = (0 - R[in.a]) & in.mask; break;
            op_ABS: { int64_t a = sext(R[in.a], in.sh); R[in.d] = uint64_t(a < 0 ? -a : a) & in.mask; break; }
            op_SAD: {
                bool s = type_signed(Type(in.ty));
                uint64_t diff = s ? uint64_t(std::llabs(sext(R[in.a], in.sh) - sext(R[in.b], in.sh)))
                                  : ((R[in.a] & in.mask) > (R[in.b] & in.mask) ? (R[in.a] & in.mask) - (R[in.b] & in.mask)
                                                                                : (R[in.b] & in.mask) - (R[in.a] & in.mask));
                R[in.d] = (diff + R[in.c]) & in.mask;
                break;
            }
            op_SIMD: R[in.d] = simd_instr(in, uint32_t(R[in.a]), uint32_t(R[in.b]), uint32_t(R[in.c])); break;
            op_ADD_SAT:
            op_SUB_SAT: {
                int64_t a = sext(R[in.a], in.sh), b = sext(R[in.b], in.sh);
                __int128 r = in.op == OP_ADD_SAT ? __int128(a) + b : __int128(a) - b;
                int bits = 64 - in.sh;
                __int128 hi = (__int128(1) << (bits - 1)) - 1, lo = -hi - 1;
                if (r > hi) r = hi;
                if (r < lo) r = lo;
                R[in.d] = uint64_t(r) & in.mask;
                break;
            }
            op_AND: R[in.d] = R[in.a] & R[in.b] & in.mask; break;
            op_OR: R[in.d] = (R[in.a] | R[in.b]) & in.mask; break;
            op_XOR: R[in.d] = (R[in.a] ^ R[in.b]) & in.mask; break;
            op_NOT: R[in.d] = ~R[in.a] & in.mask; break;
            op_CNOT: R[in.d] = (R[in.a] & in.mask) == 0; break;
            op_SHL: {
                uint64_t n = R[in.b] & 0xffffffffu;
                R[in.d] = n >= uint64_t(64 - in.sh) ? 0 : (R[in.a] << n) & in.mask;
                break;
            }
            op_SHR: {
                uint64_t n = R[in.b] & 0xffffffffu;
                int bits = 64 - in.sh;
                if (type_signed(Type(in.ty))) R[in.d] = uint64_t(sext(R[in.a], in.sh) >> (n >= uint64_t(bits) ? bits - 1 : n)) & in.mask;
                else R[in.d] = n >= uint64_t(bits) ? 0 : (R[in.a] & in.mask) >> n;
                break;
            }
            op_LOP3: {
                uint64_t a = R[in.a], b = R[in.b], c = R[in.c], r = 0;
                for (int i = 0; i < 8; ++i)
                    if (in.imm >> i & 1) r |= ((i & 4) ? a : ~a) & ((i & 2) ? b : ~b) & ((i & 1) ? c : ~c);
                R[in.d] = r & in.mask;
                break;
            }
            op_SHF: {
                uint64_t n = R[in.c] & 0xffffffffu;
                n = in.mod2 ? (n > 32 ? 32 : n) : (n & 31);
                uint64_t v = (R[in.b] & 0xffffffffu) << 32 | (R[in.a] & 0xffffffffu);
                R[in.d] = in.mod == 0 ? uint32_t((v << n) >> 32) : uint32_t(v >> n);
                break;
            }
            op_BFE: {
                // PTX: d[i] = (i < len && pos + i <= msb) ? a[pos + i] : sbit
                uint32_t bits = 64 - in.sh;
                uint32_t pos = uint32_t(R[in.b] & 0xff), len = uint32_t(R[in.c] & 0xff);
                uint64_t a = R[in.a] & in.mask;
                uint32_t avail = pos < bits ? bits - pos : 0, keep = len < avail ? len : avail;
                uint64_t r = keep ? (a >> pos) & (keep >= 64 ? ~0ull : (1ull << keep) - 1) : 0;
                if (type_signed(Type(in.ty)) && len) {
                    uint32_t sp = pos + len - 1 < bits ? pos + len - 1 : bits - 1;
                    if ((a >> sp) & 1) r |= keep >= 64 ? 0 : ~0ull << keep;
                }
                R[in.d] = r & in.mask;
                break;
            }
            op_BFI: {
                int bits = 64 - in.sh;
                uint32_t pos = uint32_t(R[in.c] & 0xff), len = uint32_t(R[in.e] & 0xff);
                uint64_t f = R[in.a], b = R[in.b] & in.mask;
                for (uint32_t i = 0; i < len && pos + i < uint32_t(bits); ++i) {
                    uint64_t bit = 1ull << (pos + i);
                    b = (f >> i & 1) ? (b | bit) : (b & ~bit);
                }
                R[in.d] = b & in.mask;
                break;
            }
            op_PRMT: R[in.d] = prmt(uint32_t(R[in.a]), uint32_t(R[in.b]), uint32_t(R[in.c]), in.mod); break;
            op_POPC: R[in.d] = uint64_t(__builtin_popcountll(R[in.a] & in.mask)); break;
            op_CLZ: {
                uint64_t a = R[in.a] & in.mask;
                int bits = 64 - in.sh;
                R[in.d] = a == 0 ? uint64_t(bits) : uint64_t(__builtin_clzll(a) - in.sh);
                break;
            }
            op_BREV: {
                uint64_t a = R[in.a], r = 0;
                int bits = 64 - in.sh;
                for (int i = 0; i < bits; ++i) r |= ((a >> i) & 1) << (bits - 1 - i);
                R[in.d] = r;
                break;
            }
            op_BFIND: {
                int bits = 64 - in.sh;
                uint64_t a = R[in.a] & in.mask;
                if (type_signed(Type(in.ty)) && (a >> (bits - 1) & 1)) a = ~a & in.mask;
                uint32_t r = 0xffffffffu;
                if (a) {
                    r = uint32_t(63 - __builtin_clzll(a));
                    if (in.mod) r = uint32_t(bits - 1) - r;
                }
                R[in.d] = r;
                break;
            }
            op_FADD32: R[in.d] = f32_result(as_f32(R[in.a]) + as_f32(R[in.b])); break;
            op_FSUB32: R[in.d] = f32_result(as_f32(R[in.a]) - as_f32(R[in.b])); break;
            op_FMUL32: R[in.d] = f32_result(as_f32(R[in.a]) * as_f32(R[in.b])); break;
            op_FFMA32: R[in.d] = f32_result(std::fma(as_f32(R[in.a]), as_f32(R[in.b]), as_f32(R[in.c]))); break;
            op_FLOAT: R[in.d] = float_instr(in, R[in.a], R[in.b], R[in.c]); break;
            op_SETP: {
                uint64_t a = R[in.a], b = R[in.b];
                if (in.ty2 == T_F16X2 || in.ty2 == T_BF16X2) {
                    R[in.d] = combine(compare(a, b, in, 0), in, R[in.c]);
                    R[in.d2] = combine(compare(a, b, in, 1), in, R[in.c]);
                } else {
                    bool r = compare(a, b, in, 0);
                    R[in.d] = combine(r, in, R[in.c]);
                    R[in.d2] = combine(!r, in, R[in.c]);
                }
                R[S_SINK] = 0;
                break;
            }
            op_SET: {
                bool x2 = in.ty2 == T_F16X2 || in.ty2 == T_BF16X2;
                uint64_t r = 0;
                for (int lane = 0; lane < (x2 ? 2 : 1); ++lane) {
                    bool v = combine(compare(R[in.a], R[in.b], in, lane), in, R[in.c]);
                    uint64_t one;
                    switch (in.ty) {
                        case T_F32: one = 0x3f800000u; break;
                        case T_F16: case T_F16X2: one = 0x3c00; break;
                        case T_BF16: case T_BF16X2: one = 0x3f80; break;
                        default: one = x2 ? 0xffff : 0xffffffffu; break;
                    }
                    if (v) r |= one << (16 * lane);
                }
                R[in.d] = r;
                break;
            }
            op_SELP: R[in.d] = ((R[in.c] & 1) ? R[in.a] : R[in.b]) & in.mask; break;
            op_SLCT: {
                bool ge = in.ty2 == T_F32 ? float_value(R[in.c], T_F32, in.flags & F_FTZ) >= 0 : sext(R[in.c], 32) >= 0;
                R[in.d] = (ge ? R[in.a] : R[in.b]) & in.mask;
                break;
            }
            op_TESTP: {
                double x = float_value(R[in.a], in.ty, false);
                int c = std::fpclassify(x);
                if (in.ty == T_F32) c = std::fpclassify(as_f32(R[in.a]));
                bool r = false;
                switch (in.mod) {
                    case 0: r = std::isfinite(x); break;
                    case 1: r = std::isinf(x); break;
                    case 2: r = !std::isnan(x); break;
                    case 3: r = std::isnan(x); break;
                    case 4: r = c == FP_NORMAL; break;
                    case 5: r = c == FP_SUBNORMAL; break;
                }
                R[in.d] = r;
                break;
            }
            op_CVT_INT: {
                uint64_t v = in.mod ? uint64_t(sext(R[in.a], in.sh)) : (R[in.a] << in.sh) >> in.sh;
                R[in.d] = v & in.mask;
                break;
            }
            op_CVT:
                if (in.ty == T_F16X2 || in.ty == T_BF16X2) {
                    Instr one = in;
                    one.ty = in.ty == T_F16X2 ? T_F16 : T_BF16;
                    R[in.d] = (cvt(one, R[in.a]) << 16) | cvt(one, R[in.b]);
                } else {
                    R[in.d] = cvt(in, R[in.a]);
                }
                break;
            op_PACK: {
                uint64_t r = 0;
                int bits = in.size * 8;
                uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
                for (int k = in.nvec - 1; k >= 0; --k) r = (bits >= 64 ? 0 : r << bits) | (R[in.v[k]] & m);
                R[in.d] = r;
                break;
            }
            op_UNPACK: {
                uint64_t a = R[in.a];
                int bits = in.size * 8;
                uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
                for (int k = 0; k < in.nvec; ++k) R[in.v[k]] = (a >> (bits * k)) & m;
                R[S_SINK] = 0;
                break;
            }
            op_CVTA: {
                uint64_t a = R[in.a];
                if (in.space == SP_SHARED) a = (a & 0xffffffffu) + kSharedWindow;
                else if (in.space == SP_LOCAL) a = (a & 0xffffffffu) + kLocalWindow;
                else if (in.space == SP_KPARAM) a = (a & 0xffffffffu) + kParamWindow;
                R[in.d] = a & in.mask;
                break;
            }
            op_CVTA_TO: {
                uint64_t a = R[in.a];
                if (in.space == SP_SHARED) a -= kSharedWindow;
                else if (in.space == SP_LOCAL) a -= kLocalWindow;
                else if (in.space == SP_KPARAM) a -= kParamWindow;
                R[in.d] = a & in.mask;
                break;
            }
            op_ISSPACEP: {
                uint64_t a = R[in.a];
                bool sh = a - kSharedWindow < kWindowSize, lo = a - kLocalWindow < kWindowSize;
                bool pa = a - kParamWindow < kWindowSize;
                R[in.d] = in.space == SP_SHARED ? sh : in.space == SP_LOCAL ? lo : in.space == SP_KPARAM ? pa
                        : in.space == SP_GLOBAL ? !sh && !lo && !pa : 0;
                break;
            }
            op_CLOCK: R[in.d] = ((instructions + executed) >> (in.mod ? 32 : 0)) & in.mask; break;
            op_LD:
            op_ST: {
                uint64_t a = R[in.a] + uint64_t(in.imm);
                uint32_t total = uint32_t(in.size) * in.nvec;
                int real;
                bool st = in.op == OP_ST;
                SAVE();
                uint8_t* p = resolve(*this, t, in, in.space, a, total, st ? AC_STORE : AC_LOAD, &real);
                if (!p) {
                    if (abort) { status = RUN_FAULT; goto out; }
                    break;  // a finding that lets the thread continue (initcheck): value as read
                }
                if (real == SP_GLOBAL) (st ? C.global_store_bytes : C.global_load_bytes) += total;
                else if (real == SP_SHARED) C.shared_bytes += total;
                for (int k = 0; k < in.nvec; ++k) {
                    uint8_t* q = p + k * in.size;
                    if (st) {
                        uint64_t v = R[in.v[k]];
                        memcpy(q, &v, in.size);
                    } else {
                        uint64_t v = 0;
                        memcpy(&v, q, in.size);
                        if (type_signed(Type(in.ty)) && in.size < 8) v = uint64_t(sext(v, 64 - 8 * in.size));
                        R[in.v[k]] = v;
                    }
                }
                R[S_SINK] = 0;
                break;
            }
            op_ATOM:
            op_RED: {
                uint64_t a = R[in.a] + uint64_t(in.imm);
                int real;
                SAVE();
                uint8_t* p = resolve(*this, t, in, in.space, a, in.size, AC_ATOMIC, &real);
                if (!p) { status = RUN_FAULT; goto out; }
                C.atomics++;
                if (real == SP_GLOBAL) {
                    if (in.op == OP_ATOM) C.global_load_bytes += in.size;
                    C.global_store_bytes += in.size;
                } else {
                    C.shared_bytes += in.size * (in.op == OP_ATOM ? 2 : 1);
                }
                uint64_t old = 0, b = R[in.b], nv = 0;
                memcpy(&old, p, in.size);
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
                    case A_CAS: nv = (old & m) == (b & m) ? R[in.c] : old; break;
                    case A_INC: nv = (old & m) >= (b & m) ? 0 : old + 1; break;
                    case A_DEC: nv = ((old & m) == 0 || (old & m) > (b & m)) ? b : old - 1; break;
                    case A_AND: nv = old & b; break;
                    case A_OR: nv = old | b; break;
                    case A_XOR: nv = old ^ b; break;
                }
                memcpy(p, &nv, in.size);
                if (in.op == OP_ATOM) R[in.d] = old & m;
                R[S_SINK] = 0;
                break;
            }
            op_MBARRIER: {
                SAVE();
                int r = mbarrier(t, in, R);
                if (r < 0) { status = RUN_FAULT; goto out; }
                if (r > 0) { ++pc; goto out; }  // try_wait not complete: yield the rest of the slice
                break;
            }
            op_BRA: pc = uint32_t(in.imm); continue;
            op_BRX: pc = module->branch_tables[in.imm][R[in.a] & 0xffffffffu]; continue;
            op_CALL: {
                const CallSite& cs = module->calls[in.imm];
                if (cs.builtin) {
                    SAVE();
                    if (!call_builtin(t, in, cs)) { status = RUN_FAULT; goto out; }
                    break;
                }
                if (t.stack.size() >= 512) {
                    SAVE();
                    finding(719, CK_OTHER, t, in, "call stack overflow (more than 512 nested calls)");
                    status = RUN_FAULT;
                    goto out;
                }
                uint32_t caller_lp = t.lp;
                t.stack.push_back(CallFrame{t.fn, pc + 1, t.fp, t.lp, uint32_t(in.imm)});
                t.fp += fn->frame_slots();
                t.lp += (fn->local_bytes + 15) & ~15u;
                push_frame(t, cs.callee);
                for (auto& arg : cs.args) memcpy(&t.local[t.lp + arg.callee_off], &t.local[caller_lp + arg.caller_off], arg.size);
                RELOAD();
                continue;
            }
            op_RET:
                if (t.stack.empty()) { status = RUN_EXITED; ++pc; goto out; }
                {
                    CallFrame f = t.stack.back();
                    t.stack.pop_back();
                    const CallSite& cs = module->calls[f.call];
                    for (auto& r : cs.rets) memcpy(&t.local[f.lp + r.caller_off], &t.local[t.lp + r.callee_off], r.size);
                    t.fn = f.fn;
                    t.fp = f.fp;
                    t.lp = f.lp;
                    t.pc = f.ret_pc;
                    RELOAD();
                }
                continue;
            op_EXIT: status = RUN_EXITED; ++pc; goto out;
            op_TRAP:
                SAVE();
                finding(719, CK_OTHER, t, in, "the kernel executed trap");
                abort = true;
                status = RUN_FAULT;
                goto out;
            op_NOP: break;
            op_YIELD: ++pc; goto out;
            sched:  // a CTA barrier or warp collective: exec/collective.cpp completes it
                status = RUN_BLOCKED;
                goto out;
            default:
                SAVE();
                finding(719, CK_OTHER, t, in, "internal error: opcode not executable");
                abort = true;
                status = RUN_FAULT;
                goto out;
        }
        ++pc;
    }
out:
    t.pc = pc;
    instructions += executed;
    C.thread_instructions += executed;
    return status;
#undef SAVE
#undef RELOAD
}

// ------------------------------------------------------------------ memory access and checks
static void race_check(Exec& x, Thread& t, const Instr& in, uint64_t off, uint32_t size, int kind) {
    Cta& cta = *t.cta;
    uint32_t me = t.tid + 1, ep = cta.epoch, wep = cta.warp_epoch[t.warp];
    bool write = kind != AC_LOAD, atomic = kind == AC_ATOMIC;
    for (uint32_t i = 0; i < size; ++i) {
        Shadow& s = cta.shadow[off + i];
        // Another thread's access in this barrier epoch conflicts unless both are atomics, or both
        // threads are in one warp and a warp-synchronous collective separated the accesses.
        auto conflict = [&](uint32_t other, uint32_t oep, uint32_t owep) {
            if (other == 0 || other == me || oep != ep) return false;
            if (other != kManyReaders && (other - 1) / 32 == t.warp && owep != wep) return false;
            return true;
        };
        const char* what = nullptr;
        uint32_t other = 0, oline = 0;
        bool w_atomic = s.w_line >> 31;
        if (conflict(s.w_tid, s.w_epoch, s.w_wepoch) && !(atomic && w_atomic)) {
            what = w_atomic ? "an atomic" : "a write";
            other = s.w_tid;
            oline = s.w_line & 0x7fffffffu;
        } else if (write && (s.r_tid == kManyReaders ? s.r_epoch == ep : conflict(s.r_tid, s.r_epoch, s.r_wepoch))) {
            what = "a read";
            other = s.r_tid;
            oline = s.r_line;
        }
        if (what) {
            std::string by = other == kManyReaders ? "several threads" : "thread " + std::to_string(other - 1);
            const Thread& o = other != kManyReaders ? cta.threads[other - 1] : t;
            if (other != kManyReaders)
                by = "thread (" + std::to_string(o.tidx[0]) + "," + std::to_string(o.tidx[1]) + "," + std::to_string(o.tidx[2]) + ")";
            x.finding(719, CK_RACECHECK, t, in,
                      std::string("shared ") + access_name(kind) + " of " + std::to_string(size) + " bytes at shared offset " +
                          hex(off) + " races with " + what + " by " + by + " at line " + std::to_string(oline) +
                          " (no barrier between them)");
            return;
        }
        if (write) {
            s.w_tid = me;
            s.w_epoch = ep;
            s.w_wepoch = wep;
            s.w_line = in.line | (atomic ? 0x80000000u : 0);
            if (!atomic) s.r_tid = 0;
        } else if (s.r_tid == 0 || s.r_epoch != ep || s.r_tid == me) {
            s.r_tid = me;
            s.r_epoch = ep;
            s.r_wepoch = wep;
            s.r_line = in.line;
        } else if (s.r_tid != kManyReaders) {
            bool same_warp_synced = (s.r_tid - 1) / 32 == t.warp && s.r_wepoch != wep;
            if (!same_warp_synced) s.r_tid = kManyReaders;
            else s.r_tid = me, s.r_wepoch = wep;
            s.r_line = in.line;
        }
    }
}

uint8_t* resolve(Exec& x, Thread& t, const Instr& in, int sp, uint64_t a, uint32_t size, int kind, int* real) {
    if (sp == SP_GENERIC) {
        if (a - kSharedWindow < kWindowSize) sp = SP_SHARED, a -= kSharedWindow;
        else if (a - kLocalWindow < kWindowSize) sp = SP_LOCAL, a -= kLocalWindow;
        else if (a - kParamWindow < kWindowSize) sp = SP_KPARAM, a -= kParamWindow;
        else sp = SP_GLOBAL;
    }
    *real = sp;
    auto what = [&](const char* extra) {
        return std::string(extra) + " " + space_name(sp) + " " + access_name(kind) + " of " + std::to_string(size) +
               " bytes at " + hex(sp == SP_GLOBAL ? a : a) + (sp == SP_GLOBAL ? "" : " (offset in the " + std::string(space_name(sp)) + " window)");
    };
    bool align_bad = x.conf.memcheck && misaligned(a, size);
    switch (sp) {
        case SP_GLOBAL: {
            if (a - x.cache_base > x.cache_size || x.cache_size - (a - x.cache_base) < size) {
                const Allocation* al = find_allocation(a);
                if (!al || al->size - (a - al->base) < size) {
                    std::string d = x.conf.memcheck ? ": " + describe_address(al ? al->base + al->size : a) : "";
                    if (x.conf.memcheck && al) d = ": the access ends " + std::to_string(a + size - al->base - al->size) +
                                                   " bytes past the end of its allocation; " + describe_address(a + size - 1);
                    else if (x.conf.memcheck) d = ": " + describe_address(a);
                    x.finding(700, CK_MEMCHECK, t, in, what("invalid") + d);
                    x.abort = true;
                    return nullptr;
                }
                x.cache_alloc = al;
                x.cache_base = al->base;
                x.cache_size = al->size;
            }
            if (align_bad) {
                x.finding(700, CK_MEMCHECK, t, in, what("misaligned") + " (needs " + std::to_string(size) + "-byte alignment)");
                x.abort = true;
                return nullptr;
            }
            const Allocation& al = *x.cache_alloc;
            if (al.init) {
                if (kind != AC_STORE && x.conf.initcheck) {
                    uint64_t bad;
                    if (!is_initialized(al, a, size, &bad)) {
                        x.finding(719, CK_INITCHECK, t, in,
                                  std::string("uninitialised global ") + access_name(kind) + " of " + std::to_string(size) +
                                      " bytes at " + hex(a) + ": first unwritten byte " + describe_address(bad));
                    }
                }
                if (kind != AC_LOAD) mark_initialized(al, a, size);
            }
            if (x.cfg.access) x.cfg.access->note(al, a, size, kind != AC_STORE, kind != AC_LOAD);  // streamcheck
            return reinterpret_cast<uint8_t*>(a);
        }
        case SP_SHARED: {
            if (a - kReservedSmemOffset < kReservedSmemBytes && !t.cta->reserved_smem.empty()) {
                if (kReservedSmemBytes - (a - kReservedSmemOffset) < size || (align_bad)) {
                    x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds or misaligned") + " in the reserved shared memory");
                    x.abort = true;
                    return nullptr;
                }
                return t.cta->reserved_smem.data() + (a - kReservedSmemOffset);
            }
            if (a >= x.smem_size || x.smem_size - a < size) {
                x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds") + ": the block has " + std::to_string(x.smem_size) +
                                                        " bytes of shared memory");
                x.abort = true;
                return nullptr;
            }
            if (align_bad) {
                x.finding(700, CK_MEMCHECK, t, in, what("misaligned") + " (needs " + std::to_string(size) + "-byte alignment)");
                x.abort = true;
                return nullptr;
            }
            if (x.conf.racecheck) race_check(x, t, in, a, size, kind);
            return t.cta->smem.data() + a;
        }
        case SP_LOCAL: {
            if (a >= t.local.size() || t.local.size() - a < size) {
                x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds") + ": the thread has " + std::to_string(t.local.size()) +
                                                        " bytes of local memory");
                x.abort = true;
                return nullptr;
            }
            if (align_bad) {
                x.finding(700, CK_MEMCHECK, t, in, what("misaligned") + " (needs " + std::to_string(size) + "-byte alignment)");
                x.abort = true;
                return nullptr;
            }
            return t.local.data() + a;
        }
        case SP_KPARAM: {
            uint32_t pb = x.kernel->info.param_bytes;
            if (a >= pb || pb - a < size) {
                x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds") + ": the parameters are " + std::to_string(pb) + " bytes");
                x.abort = true;
                return nullptr;
            }
            if (kind != AC_LOAD) {
                x.finding(700, CK_MEMCHECK, t, in, what("invalid") + ": kernel parameters are read-only");
                x.abort = true;
                return nullptr;
            }
            return const_cast<uint8_t*>(x.cfg.params) + a;
        }
    }
    x.finding(700, CK_MEMCHECK, t, in, what("unsupported"));
    x.abort = true;
    return nullptr;
}

}  // namespace softgpu
