// exec/alu_int.hpp: the values of integer ALU instructions that take more than one line in
// exec/interp.cpp's loop (high and 24-bit products, division, saturation, bit fields, permute).
// Inline: they are the interpreter loop's inner calls. in.sh = 64 - the type's width.
#pragma once

#include <cstdint>
#include <cstdlib>

#include "ptx/program.hpp"

namespace softgpu {
namespace alu {

inline int64_t sext(uint64_t v, int sh) { return int64_t(v << sh) >> sh; }

inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t c, int mode) {
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

// mul.hi / mad.hi: the high half of the double-width product (+ c for mad).
inline uint64_t mul_hi(const Instr& in, uint64_t a, uint64_t b, uint64_t c) {
    int bits = 64 - in.sh;
    uint64_t hi;
    if (type_signed(Type(in.ty))) {
        __int128 p = __int128(sext(a, in.sh)) * sext(b, in.sh);
        hi = uint64_t(p >> bits);
    } else {
        unsigned __int128 p = (unsigned __int128)(a & in.mask) * (b & in.mask);
        hi = uint64_t(p >> bits);
    }
    if (in.op == OP_MAD_HI) hi += c;
    return hi & in.mask;
}

// mul24 / mad24 (.lo, or .hi with F_HI).
inline uint64_t mul24(const Instr& in, uint64_t a, uint64_t b, uint64_t c) {
    bool s = type_signed(Type(in.ty));
    int64_t x = s ? sext(a, 40) : int64_t(a & 0xffffff);
    int64_t y = s ? sext(b, 40) : int64_t(b & 0xffffff);
    uint64_t p = uint64_t(x * y);
    uint64_t r = (in.flags & F_HI) ? (p >> 16) : p;
    if (in.op == OP_MAD24) r += c;
    return r & in.mask;
}

// div / rem, with the hardware's results for a zero divisor and for MIN / -1.
inline uint64_t div_rem(const Instr& in, uint64_t a, uint64_t b) {
    bool div = in.op == OP_DIV;
    if (type_signed(Type(in.ty))) {
        int64_t x = sext(a, in.sh), y = sext(b, in.sh);
        int64_t r;
        if (y == 0) r = div ? -1 : x;
        else if (y == -1) r = div ? int64_t(0ull - uint64_t(x)) : 0;
        else r = div ? x / y : x % y;
        return uint64_t(r) & in.mask;
    }
    uint64_t x = a & in.mask, y = b & in.mask;
    return y == 0 ? (div ? in.mask : x) : (div ? x / y : x % y);
}

// sad: |a - b| + c.
inline uint64_t sad(const Instr& in, uint64_t a, uint64_t b, uint64_t c) {
    bool s = type_signed(Type(in.ty));
    uint64_t x = a & in.mask, y = b & in.mask;
    uint64_t diff = s ? uint64_t(std::llabs(sext(a, in.sh) - sext(b, in.sh))) : (x > y ? x - y : y - x);
    return (diff + c) & in.mask;
}

// add.sat / sub.sat (signed 32-bit in PTX): clamped to the type's range.
inline uint64_t add_sat(const Instr& in, uint64_t a, uint64_t b) {
    int64_t x = sext(a, in.sh), y = sext(b, in.sh);
    __int128 r = in.op == OP_ADD_SAT ? __int128(x) + y : __int128(x) - y;
    int bits = 64 - in.sh;
    __int128 hi = (__int128(1) << (bits - 1)) - 1, lo = -hi - 1;
    if (r > hi) r = hi;
    if (r < lo) r = lo;
    return uint64_t(r) & in.mask;
}

// bfe: d[i] = (i < len && pos + i <= msb) ? a[pos + i] : sbit.
inline uint64_t bfe(const Instr& in, uint64_t a, uint64_t b, uint64_t c) {
    uint32_t bits = 64 - in.sh;
    uint32_t pos = uint32_t(b & 0xff), len = uint32_t(c & 0xff);
    a &= in.mask;
    uint32_t avail = pos < bits ? bits - pos : 0, keep = len < avail ? len : avail;
    uint64_t r = keep ? (a >> pos) & (keep >= 64 ? ~0ull : (1ull << keep) - 1) : 0;
    if (type_signed(Type(in.ty)) && len) {
        uint32_t sp = pos + len - 1 < bits ? pos + len - 1 : bits - 1;
        if ((a >> sp) & 1) r |= keep >= 64 ? 0 : ~0ull << keep;
    }
    return r & in.mask;
}

// bfi: the low len bits of f inserted into b at pos.
inline uint64_t bfi(const Instr& in, uint64_t f, uint64_t b, uint64_t c, uint64_t e) {
    int bits = 64 - in.sh;
    uint32_t pos = uint32_t(c & 0xff), len = uint32_t(e & 0xff);
    b &= in.mask;
    for (uint32_t i = 0; i < len && pos + i < uint32_t(bits); ++i) {
        uint64_t bit = 1ull << (pos + i);
        b = (f >> i & 1) ? (b | bit) : (b & ~bit);
    }
    return b & in.mask;
}

// bfind: the position of the most significant non-sign bit (.shiftamt: as a left shift), or ~0.
inline uint64_t bfind(const Instr& in, uint64_t a) {
    int bits = 64 - in.sh;
    a &= in.mask;
    if (type_signed(Type(in.ty)) && (a >> (bits - 1) & 1)) a = ~a & in.mask;
    uint32_t r = 0xffffffffu;
    if (a) {
        r = uint32_t(63 - __builtin_clzll(a));
        if (in.mod) r = uint32_t(bits - 1) - r;
    }
    return r;
}

}  // namespace alu
}  // namespace softgpu
