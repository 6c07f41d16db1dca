// ptx/decode_operands.cpp: operands of an instruction: numeric literals, registers, special
// registers, immediates, symbol addresses, vector and predicate operands.
#include <cstring>

#include "ptx/decoder.hpp"

namespace softgpu {
namespace decode {

namespace {

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

uint64_t f2bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
uint64_t d2bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
float bits2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
double bits2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

}  // namespace

bool parse_number(const std::string& s, bool neg, Type ty, uint64_t* out) {
    if (s.empty() || !(s[0] >= '0' && s[0] <= '9')) return false;
    bool fty = ty == T_F32 || ty == T_F64;
    if (s.size() == 10 && (s[1] == 'f' || s[1] == 'F')) {
        uint64_t v = 0;
        for (size_t i = 2; i < 10; ++i) { int h = hexval(s[i]); if (h < 0) return false; v = v * 16 + h; }
        if (neg) v ^= 0x80000000u;
        *out = ty == T_F64 ? d2bits(bits2f(uint32_t(v))) : v;
        return true;
    }
    if (s.size() == 18 && (s[1] == 'd' || s[1] == 'D')) {
        uint64_t v = 0;
        for (size_t i = 2; i < 18; ++i) { int h = hexval(s[i]); if (h < 0) return false; v = v * 16 + h; }
        if (neg) v ^= 0x8000000000000000ull;
        *out = ty == T_F32 ? f2bits(float(bits2d(v))) : v;
        return true;
    }
    std::string t = s;
    if (!t.empty() && (t.back() == 'U' || t.back() == 'u')) t.pop_back();
    if (t.find_first_of(".eE") != std::string::npos && t.find_first_of("xX") == std::string::npos) {
        double d = strtod(t.c_str(), nullptr);
        if (neg) d = -d;
        *out = ty == T_F32 ? f2bits(float(d)) : d2bits(d);
        return true;
    }
    char* end = nullptr;
    uint64_t v;
    if (t.size() > 2 && t[0] == '0' && (t[1] == 'b' || t[1] == 'B')) v = strtoull(t.c_str() + 2, &end, 2);
    else v = strtoull(t.c_str(), &end, 0);
    if (!end || *end) return false;
    if (neg) v = uint64_t(-int64_t(v));
    if (fty) *out = ty == T_F32 ? f2bits(float(int64_t(v))) : d2bits(double(int64_t(v)));
    else *out = v;
    return true;
}

// Splits instruction operands at top-level commas.
std::vector<Operand> split_operands(const std::vector<Tok>& t, size_t from) {
    std::vector<Operand> ops;
    Operand cur;
    int depth = 0;
    for (size_t i = from; i < t.size(); ++i) {
        const Tok& k = t[i];
        if (k.is("[") || k.is("{") || k.is("(")) ++depth;
        if (k.is("]") || k.is("}") || k.is(")")) --depth;
        if (depth == 0 && k.is(",")) {
            ops.push_back(std::move(cur));
            cur = Operand();
            continue;
        }
        cur.line = k.line;
        cur.t.push_back(k);
    }
    if (!cur.t.empty()) ops.push_back(std::move(cur));
    return ops;
}

bool Decoder::fail(const std::string& msg) {
    std::string where = st ? " in " + std::string(st->fn->entry ? "kernel " : "function ") + st->fn->name : "";
    *error = "line " + std::to_string(line) + ": " + msg + where;
    return false;
}

bool Decoder::unsupported(const std::string& what) {
    return fail("unsupported instruction '" + instr_text + "'" + (what.empty() ? "" : " (" + what + ")"));
}

bool Decoder::is_special(const std::string& s, uint32_t* slot) {
    static const std::map<std::string, uint32_t> m = {
        {"%tid.x", S_TID_X}, {"%tid.y", S_TID_Y}, {"%tid.z", S_TID_Z},
        {"%ntid.x", S_NTID_X}, {"%ntid.y", S_NTID_Y}, {"%ntid.z", S_NTID_Z},
        {"%ctaid.x", S_CTAID_X}, {"%ctaid.y", S_CTAID_Y}, {"%ctaid.z", S_CTAID_Z},
        {"%nctaid.x", S_NCTAID_X}, {"%nctaid.y", S_NCTAID_Y}, {"%nctaid.z", S_NCTAID_Z},
        {"%laneid", S_LANEID}, {"%warpid", S_WARPID}, {"%nwarpid", S_NWARPID}, {"%smid", S_SMID},
        {"%nsmid", S_NSMID}, {"%gridid", S_GRIDID}, {"%dynamic_smem_size", S_DYN_SMEM},
        {"%total_smem_size", S_TOTAL_SMEM}, {"%lanemask_eq", S_LANEMASK_EQ}, {"%lanemask_le", S_LANEMASK_LE},
        {"%lanemask_lt", S_LANEMASK_LT}, {"%lanemask_ge", S_LANEMASK_GE}, {"%lanemask_gt", S_LANEMASK_GT},
        {"%envreg1", S_ENVREG1}, {"%envreg2", S_ENVREG2}};
    static const std::map<std::string, uint32_t> reserved = {
        {"%reserved_smem_offset_begin", kReservedSmemOffset}, {"%reserved_smem_offset_0", kReservedSmemOffset},
        {"%reserved_smem_offset_1", kReservedSmemOffset + kReservedSmemBytes / 2},
        {"%reserved_smem_offset_end", kReservedSmemOffset + kReservedSmemBytes},
        {"%reserved_smem_offset_cap", kReservedSmemBytes}};
    auto r = reserved.find(s);
    if (r != reserved.end()) {
        this->m->uses_reserved_smem = true;
        *slot = const_slot(r->second);
        return true;
    }
    auto it = m.find(s);
    if (it == m.end()) return false;
    *slot = it->second;
    return true;
}

// A source operand of type ty: register, special register, immediate or symbol address.
bool Decoder::src(const Operand& o, Type ty, uint32_t* slot) {
    if (o.t.empty()) return fail("missing operand of '" + instr_text + "'");
    size_t i = 0;
    bool neg = false;
    if (o.t[0].is("-")) { neg = true; i = 1; }
    if (i >= o.t.size()) return fail("bad operand of '" + instr_text + "'");
    const std::string& s = o.t[i].s;
    uint64_t v;
    if (o.t.size() == i + 1 && parse_number(s, neg, ty, &v)) {
        *slot = const_slot(v);
        return true;
    }
    if (neg) return fail("negated operand '-" + s + "' of '" + instr_text + "' is not supported");
    if (o.t.size() != 1) {
        // symbol+offset
        uint32_t base;
        int64_t off;
        Space sp;
        if (!symbol_address(o.t, 0, o.t.size(), &base, &off, &sp)) return false;
        if (base != S_ZERO) return fail("local symbol arithmetic in an operand of '" + instr_text + "'");
        *slot = const_slot(uint64_t(off));
        return true;
    }
    if (is_special(s, slot)) return true;
    if (s == "_") { *slot = S_ZERO; return true; }
    if (s == "WARP_SZ") { *slot = const_slot(32); return true; }  // PTX's predefined constant
    const Sym* sym = lookup(s);
    if (!sym) return fail("unknown operand '" + s + "' of '" + instr_text + "'");
    switch (sym->kind) {
        case Sym::Reg: *slot = kNumFixed + uint32_t(sym->value); return true;
        case Sym::Global: *slot = const_slot(sym->value); return true;
        case Sym::Shared:
            if (extern_shared.count(s)) { *slot = dyn_shared_slot(); return true; }
            *slot = const_slot(sym->value);
            return true;
        default:
            return fail("operand '" + s + "' of '" + instr_text + "' cannot be used here");
    }
}

uint32_t Decoder::dyn_shared_slot() {
    uint32_t idx = uint32_t(st->fn->consts.size());
    st->fn->consts.push_back(0);
    dyn_slots.push_back({st->fn, idx});
    return idx | 0x80000000u;
}

bool Decoder::dst(const Operand& o, uint32_t* slot) {
    if (o.t.size() == 1 && o.t[0].is("_")) { *slot = S_SINK; return true; }
    if (o.t.size() != 1) return fail("bad destination operand of '" + instr_text + "'");
    const Sym* sym = lookup(o.t[0].s);
    if (!sym || sym->kind != Sym::Reg) return fail("destination '" + o.t[0].s + "' of '" + instr_text + "' is not a register");
    *slot = kNumFixed + uint32_t(sym->value);
    return true;
}

// `%p1|%p2` destination pairs.
bool Decoder::dst_pair(const Operand& o, uint32_t* a, uint32_t* b) {
    for (size_t i = 0; i < o.t.size(); ++i)
        if (o.t[i].is("|")) {
            Operand x, y;
            x.t.assign(o.t.begin(), o.t.begin() + i);
            y.t.assign(o.t.begin() + i + 1, o.t.end());
            return dst(x, a) && dst(y, b);
        }
    *b = S_SINK;
    return dst(o, a);
}

// `{a, b, c, d}` element operands.
bool Decoder::vec_elems(const Operand& o, std::vector<Operand>* out) {
    if (o.t.size() < 2 || !o.t.front().is("{") || !o.t.back().is("}"))
        return fail("vector operand expected in '" + instr_text + "'");
    std::vector<Tok> inner(o.t.begin() + 1, o.t.end() - 1);
    *out = split_operands(inner, 0);
    return true;
}

// Tokens [from, to) of `sym`, `sym+off`, `%reg`, `%reg+off`, `off` -> base slot + offset.
bool Decoder::symbol_address(const std::vector<Tok>& t, size_t from, size_t to, uint32_t* base, int64_t* off, Space* sp) {
    *base = S_ZERO;
    *off = 0;
    *sp = SP_GENERIC;
    size_t i = from;
    if (i >= to) return fail("empty address in '" + instr_text + "'");
    const std::string& s = t[i].s;
    uint64_t v;
    if (parse_number(s, false, T_U64, &v)) {
        *off = int64_t(v);
    } else {
        uint32_t sl;
        const Sym* sym = lookup(s);
        if (is_special(s, &sl)) *base = sl;
        else if (!sym) return fail("unknown symbol '" + s + "' in '" + instr_text + "'");
        else switch (sym->kind) {
            case Sym::Reg: *base = kNumFixed + uint32_t(sym->value); break;
            case Sym::Global: *off = int64_t(sym->value); *sp = SP_GLOBAL; break;
            case Sym::Shared:
                *sp = SP_SHARED;
                if (extern_shared.count(s)) *base = dyn_shared_slot();
                else *off = int64_t(sym->value);
                break;
            case Sym::KParam: *off = int64_t(sym->value); *sp = SP_KPARAM; break;
            case Sym::Local: *base = S_LOCAL_BASE; *off = int64_t(sym->value); *sp = SP_LOCAL; break;
            default: return fail("symbol '" + s + "' cannot be used as an address in '" + instr_text + "'");
        }
    }
    ++i;
    while (i < to) {
        bool neg = false;
        if (t[i].is("+")) ++i;
        if (i < to && t[i].is("-")) { neg = true; ++i; }
        if (i >= to || !parse_number(t[i].s, neg, T_S64, &v)) return fail("bad address offset in '" + instr_text + "'");
        *off += int64_t(v);
        ++i;
    }
    return true;
}

bool Decoder::address(const Operand& o, uint32_t* base, int64_t* off, Space* sp) {
    if (o.t.size() < 3 || !o.t.front().is("[") || !o.t.back().is("]"))
        return fail("address operand [..] expected in '" + instr_text + "'");
    return symbol_address(o.t, 1, o.t.size() - 1, base, off, sp);
}

// `!%p` or `%p` predicate source.
bool Decoder::pred_src(const Operand& o, uint32_t* slot, bool* negated) {
    Operand x = o;
    *negated = false;
    if (!x.t.empty() && x.t[0].is("!")) {
        *negated = true;
        x.t.erase(x.t.begin());
    }
    return src(x, T_PRED, slot);
}

}  // namespace decode
}  // namespace softgpu
