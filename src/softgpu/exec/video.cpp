// exec/video.cpp: the integer SIMD ("video") instructions NVRTC emits for the __v*, __dp4a,
// __dp2a and bit-mask intrinsics: vadd/vsub/vavrg/vabsdiff/vmin/vmax/vset on 2 half-words or 4
// bytes (default byte selectors, secondary merge or .add accumulate), dp4a, dp2a.lo/.hi, bmsk.
#include <algorithm>

#include "exec/exec.hpp"

namespace softgpu {

namespace {

// Lane i of v (lanes of `bits` bits), sign- or zero-extended.
inline int64_t lane(uint32_t v, int i, int bits, bool sgn) {
    uint32_t m = (1u << bits) - 1, x = (v >> (i * bits)) & m;
    return sgn && (x >> (bits - 1)) ? int64_t(x) - (int64_t(1) << bits) : int64_t(x);
}

bool compare(int64_t a, int64_t b, uint8_t cmp) {
    switch (cmp) {
        case C_EQ: return a == b;
        case C_NE: return a != b;
        case C_LT: return a < b;
        case C_LE: return a <= b;
        case C_GT: return a > b;
        default: return a >= b;
    }
}

}  // namespace

uint32_t simd_instr(const Instr& in, uint32_t a, uint32_t b, uint32_t c) {
    switch (in.mod) {
        case SV_DP4A: {
            int64_t acc = type_signed(Type(in.ty)) ? int64_t(int32_t(c)) : int64_t(c);
            for (int i = 0; i < 4; ++i)
                acc += lane(a, i, 8, type_signed(Type(in.ty2))) * lane(b, i, 8, type_signed(Type(in.space)));
            return uint32_t(acc);
        }
        case SV_DP2A_LO:
        case SV_DP2A_HI: {
            int64_t acc = type_signed(Type(in.ty)) ? int64_t(int32_t(c)) : int64_t(c);
            int base = in.mod == SV_DP2A_HI ? 2 : 0;
            for (int i = 0; i < 2; ++i)
                acc += lane(a, i, 16, type_signed(Type(in.ty2))) * lane(b, base + i, 8, type_signed(Type(in.space)));
            return uint32_t(acc);
        }
        case SV_BMSK_CLAMP:
        case SV_BMSK_WRAP: {
            uint64_t pos = a, width = b;
            if (in.mod == SV_BMSK_WRAP) pos &= 31, width &= 31;
            else pos = std::min<uint64_t>(pos, 32), width = std::min<uint64_t>(width, 32);
            if (pos >= 32) return 0;
            return uint32_t((((1ull << width) - 1) << pos) & 0xffffffffull);
        }
        default: break;
    }
    int n = in.nvec, bits = 32 / n;
    bool sa = type_signed(Type(in.ty2)), sb = type_signed(Type(in.space)), sd = type_signed(Type(in.ty));
    int64_t lo = in.mod == SV_SET ? 0 : sd ? -(int64_t(1) << (bits - 1)) : 0;
    int64_t hi = in.mod == SV_SET ? 1 : sd ? (int64_t(1) << (bits - 1)) - 1 : (int64_t(1) << bits) - 1;
    uint32_t lane_mask = (1u << bits) - 1;
    int64_t acc = 0;
    uint32_t merged = 0;
    for (int i = 0; i < n; ++i) {
        int64_t x = lane(a, i, bits, sa), y = lane(b, i, bits, sb), r;
        switch (in.mod) {
            case SV_ADD: r = x + y; break;
            case SV_SUB: r = x - y; break;
            case SV_AVRG: r = (x + y + 1) >> 1; break;  // rounds half up, as PTX specifies
            case SV_ABSDIFF: r = x > y ? x - y : y - x; break;
            case SV_MIN: r = std::min(x, y); break;
            case SV_MAX: r = std::max(x, y); break;
            default: r = compare(x, y, in.mod2); break;
        }
        if (!((in.size >> i) & 1)) {  // lane not in the destination mask: c's lane (merge) or nothing (add)
            merged |= c & (lane_mask << (i * bits));
            continue;
        }
        if (in.pad) { acc += r; continue; }
        if (in.flags & F_SAT) r = std::min(std::max(r, lo), hi);
        merged |= (uint32_t(r) & lane_mask) << (i * bits);
    }
    return in.pad ? uint32_t(acc + int64_t(c)) : merged;
}

}  // namespace softgpu
