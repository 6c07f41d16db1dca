// ptx/decode.cpp: parsed PTX -> executable Module (flat Instr arrays, resolved slots, symbol layout),
// plus the engine-side module API of softgpu.hpp (load_module, find_kernel, ...).
//
// Layout decisions (documented here once):
//  * KernelInfo::num_regs = sum over the kernel's .reg declarations of count * ceil(bits / 32), with
//    each predicate counting 1 (functions it calls are not added).
//  * Shared memory: every module-scope .shared variable (and .shared declared inside a .func) gets
//    one offset in a module-wide layout starting at 0; a kernel's own .shared variables follow it.
//    static_smem = that module-wide part + the kernel's own part; dynamic shared memory follows.
//  * Local memory: each function's frame holds its .local variables and its .param scratch
//    (call-site arguments, its own parameters and return values). local_bytes = the kernel's frame
//    plus the largest frame of any function in the module (one level of calls).
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "ptx/parse.hpp"
#include "ptx/program.hpp"

namespace softgpu {

namespace {

struct Sym {
    enum Kind { Reg, Global, Shared, KParam, Local, Func, Label } kind = Reg;
    uint64_t value = 0;  // slot, address, offset, function index
    uint64_t size = 0;
};

Type parse_type(const std::string& s) {
    static const std::map<std::string, Type> m = {
        {"b8", T_B8}, {"b16", T_B16}, {"b32", T_B32}, {"b64", T_B64}, {"u8", T_U8}, {"u16", T_U16},
        {"u32", T_U32}, {"u64", T_U64}, {"s8", T_S8}, {"s16", T_S16}, {"s32", T_S32}, {"s64", T_S64},
        {"f16", T_F16}, {"f16x2", T_F16X2}, {"bf16", T_BF16}, {"bf16x2", T_BF16X2}, {"f32", T_F32},
        {"f64", T_F64}, {"pred", T_PRED}, {"b128", T_B128}};
    auto it = m.find(s);
    return it == m.end() ? T_NONE : it->second;
}

uint64_t width_mask(int bits) { return bits >= 64 ? ~0ull : (1ull << bits) - 1; }

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

// Parses a PTX numeric literal; *is_float tells whether it was a float form. Returns false if not a number.
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

struct Operand {
    std::vector<Tok> t;
    uint32_t line = 0;
};

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

struct Decoder;

// Per-function decoding state.
struct FnState {
    Function* fn = nullptr;
    FuncText* text = nullptr;
    std::vector<std::map<std::string, Sym>> scopes;
    std::map<uint64_t, uint32_t> const_slots;
    std::map<std::string, uint32_t> labels;
    std::vector<std::pair<size_t, std::string>> fixups;  // instr index -> label (bra)
    std::vector<std::pair<size_t, std::string>> table_fixups;  // brx: table index -> table label
    std::map<std::string, std::vector<std::string>> branch_tables;
    uint32_t shared_end = 0;
};

struct Decoder {
    ParsedModule& pm;
    Module* m;
    std::string* error;
    std::map<std::string, Sym> module_syms;
    std::map<std::string, uint32_t> func_index;
    std::set<std::string> extern_shared;
    uint32_t shared_top = 0;
    FnState* st = nullptr;
    std::string instr_text;  // the opcode being decoded, for messages
    uint32_t line = 0;

    Decoder(ParsedModule& p, Module* mod, std::string* e) : pm(p), m(mod), error(e) {}

    bool fail(const std::string& msg) {
        std::string where = st ? " in " + std::string(st->fn->entry ? "kernel " : "function ") + st->fn->name : "";
        *error = "line " + std::to_string(line) + ": " + msg + where;
        return false;
    }
    bool unsupported(const std::string& what) {
        return fail("unsupported instruction '" + instr_text + "'" + (what.empty() ? "" : " (" + what + ")"));
    }

    // ------------------------------------------------------------ module-scope symbols
    uint32_t alloc_shared(uint64_t size, uint32_t align) {
        if (!align) align = 1;
        shared_top = (shared_top + align - 1) / align * align;
        uint32_t off = shared_top;
        shared_top += uint32_t(size);
        return off;
    }

    bool init_bytes(const VarDecl& d, uint8_t* dst, uint64_t size) {
        uint64_t esz = type_size_bytes(d.type);
        Type ty = parse_type(d.type.substr(1));
        uint64_t pos = 0;
        for (size_t i = 0; i < d.init.size(); ++i) {
            const Tok& k = d.init[i];
            if (k.is("{") || k.is("}") || k.is(",")) continue;
            bool neg = false;
            if (k.is("-")) { neg = true; if (++i >= d.init.size()) break; }
            uint64_t v;
            if (!parse_number(d.init[i].s, neg, ty, &v)) {
                line = k.line;
                return fail("unsupported initialiser '" + d.init[i].s + "' of " + d.name);
            }
            if (pos + esz > size) { line = k.line; return fail("too many initialisers for " + d.name); }
            memcpy(dst + pos, &v, esz);
            pos += esz;
        }
        return true;
    }

    bool module_vars() {
        // .func-scope .shared variables join the module layout too (see the header comment).
        for (auto& f : pm.funcs)
            for (auto& s : f.body)
                if (!f.entry && s.kind == Stmt::Instr && !s.t.empty() && s.t[0].is(".shared")) {
                    VarDecl d;
                    if (!parse_decl(s.t, 0, &d, error)) return false;
                    Sym sym{Sym::Shared, alloc_shared(d.count * type_size_bytes(d.type), d.align), 0};
                    module_syms[f.name + "::" + d.name] = sym;
                }
        for (auto& d : pm.vars) {
            line = d.line;
            uint64_t size = d.count * type_size_bytes(d.type) * d.vec;
            if (d.space == ".shared") {
                if (d.is_extern || (d.is_array && d.count == 0)) {
                    extern_shared.insert(d.name);
                    if (d.align > m->dyn_shared_align) m->dyn_shared_align = d.align;
                    module_syms[d.name] = Sym{Sym::Shared, 0, 0};  // resolved per kernel
                    continue;
                }
                module_syms[d.name] = Sym{Sym::Shared, alloc_shared(size, d.align), size};
            } else if (d.space == ".global" || d.space == ".const") {
                if (d.is_extern) return fail("external .global/.const variable " + d.name + " is not supported");
                uint64_t addr = alloc_module_global(size ? size : 1, d.align ? d.align : 1);
                if (!addr) return fail("out of memory for module variable " + d.name);
                m->globals.push_back(GlobalVar{d.name, addr, size});
                memset(reinterpret_cast<void*>(addr), 0, size);
                if (!d.init.empty() && !init_bytes(d, reinterpret_cast<uint8_t*>(addr), size)) return false;
                module_syms[d.name] = Sym{Sym::Global, addr, size};
            } else {
                return fail("module-scope " + d.space + " variable " + d.name + " is not supported");
            }
        }
        m->module_shared_bytes = shared_top;
        return true;
    }

    // ------------------------------------------------------------ per-function symbols
    const Sym* lookup(const std::string& name) {
        for (auto it = st->scopes.rbegin(); it != st->scopes.rend(); ++it) {
            auto f = it->find(name);
            if (f != it->end()) return &f->second;
        }
        auto g = module_syms.find(st->fn->name + "::" + name);
        if (g != module_syms.end()) return &g->second;
        g = module_syms.find(name);
        if (g != module_syms.end()) return &g->second;
        return nullptr;
    }

    uint32_t const_slot(uint64_t v) {
        auto it = st->const_slots.find(v);
        if (it != st->const_slots.end()) return it->second;
        uint32_t idx = uint32_t(st->fn->consts.size());
        st->fn->consts.push_back(v);
        return st->const_slots[v] = idx | 0x80000000u;  // rebased once nregs is final
    }

    uint32_t local_alloc(uint64_t size, uint32_t align) {
        if (!align) align = 1;
        Function* f = st->fn;
        f->local_bytes = (f->local_bytes + align - 1) / align * align;
        uint32_t off = f->local_bytes;
        f->local_bytes += uint32_t(size);
        if (align > f->local_align) f->local_align = align;
        return off;
    }

    bool declare(const std::vector<Tok>& t) {
        VarDecl d;
        if (!parse_decl(t, 0, &d, error)) return false;
        auto& scope = st->scopes.back();
        if (d.space == ".reg") {
            int bits = d.type == ".pred" ? 32 : int(type_size_bytes(d.type) * 8) * int(d.vec);
            uint32_t units = uint32_t((bits + 31) / 32);
            auto add = [&](const std::string& name) {
                scope[name] = Sym{Sym::Reg, st->fn->nregs++, 0};
                st->fn->reg_bits.push_back(uint8_t(d.type == ".pred" ? 1 : std::min(bits, 255)));
                st->fn->reg_units += units;
            };
            if (!d.init.empty() && d.init[0].is("<>")) {
                for (uint64_t k = 0; k < d.count; ++k) add(d.name + std::to_string(k));
                return true;
            }
            add(d.name);
            // `.reg .b32 a, b, c`: further names after commas.
            for (size_t i = 0; i < t.size(); ++i)
                if (t[i].is(",") && i + 1 < t.size()) add(t[i + 1].s);
            return true;
        }
        uint64_t size = d.count * type_size_bytes(d.type) * d.vec;
        if (d.space == ".local" || d.space == ".param") {
            scope[d.name] = Sym{Sym::Local, local_alloc(size, d.align ? d.align : uint32_t(type_size_bytes(d.type))), size};
            return true;
        }
        if (d.space == ".shared") {
            if (!st->fn->entry) return true;  // laid out with the module (module_vars)
            uint32_t align = d.align ? d.align : 1;
            st->shared_end = (st->shared_end + align - 1) / align * align;
            scope[d.name] = Sym{Sym::Shared, st->shared_end, size};
            st->shared_end += uint32_t(size);
            return true;
        }
        return fail("unsupported declaration '" + d.space + "' of " + d.name);
    }

    // ------------------------------------------------------------ operands
    bool is_special(const std::string& s, uint32_t* slot) {
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
    bool src(const Operand& o, Type ty, uint32_t* slot) {
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

    // Dynamic shared memory starts after this kernel's static part: a placeholder const patched
    // when the kernel's layout is final.
    std::vector<std::pair<Function*, uint32_t>> dyn_slots;
    uint32_t dyn_shared_slot() {
        uint32_t idx = uint32_t(st->fn->consts.size());
        st->fn->consts.push_back(0);
        dyn_slots.push_back({st->fn, idx});
        return idx | 0x80000000u;
    }

    bool dst(const Operand& o, uint32_t* slot) {
        if (o.t.size() == 1 && o.t[0].is("_")) { *slot = S_SINK; return true; }
        if (o.t.size() != 1) return fail("bad destination operand of '" + instr_text + "'");
        const Sym* sym = lookup(o.t[0].s);
        if (!sym || sym->kind != Sym::Reg) return fail("destination '" + o.t[0].s + "' of '" + instr_text + "' is not a register");
        *slot = kNumFixed + uint32_t(sym->value);
        return true;
    }

    // `%p1|%p2` destination pairs.
    bool dst_pair(const Operand& o, uint32_t* a, uint32_t* b) {
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
    bool vec_elems(const Operand& o, std::vector<Operand>* out) {
        if (o.t.size() < 2 || !o.t.front().is("{") || !o.t.back().is("}"))
            return fail("vector operand expected in '" + instr_text + "'");
        std::vector<Tok> inner(o.t.begin() + 1, o.t.end() - 1);
        *out = split_operands(inner, 0);
        return true;
    }
    bool is_vec(const Operand& o) { return !o.t.empty() && o.t[0].is("{"); }

    // Tokens [from, to) of `sym`, `sym+off`, `%reg`, `%reg+off`, `off` -> base slot + offset.
    bool symbol_address(const std::vector<Tok>& t, size_t from, size_t to, uint32_t* base, int64_t* off, Space* sp) {
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

    bool address(const Operand& o, uint32_t* base, int64_t* off, Space* sp) {
        if (o.t.size() < 3 || !o.t.front().is("[") || !o.t.back().is("]"))
            return fail("address operand [..] expected in '" + instr_text + "'");
        return symbol_address(o.t, 1, o.t.size() - 1, base, off, sp);
    }

    // `!%p` or `%p` predicate source.
    bool pred_src(const Operand& o, uint32_t* slot, bool* negated) {
        Operand x = o;
        *negated = false;
        if (!x.t.empty() && x.t[0].is("!")) {
            *negated = true;
            x.t.erase(x.t.begin());
        }
        return src(x, T_PRED, slot);
    }

    // ------------------------------------------------------------ instructions
    bool decode_function(FuncText& ft, Function& fn);
    bool decode_instr(const Stmt& s);
    Instr* emit(Instr in) {
        in.line = line;
        st->fn->code.push_back(in);
        return &st->fn->code.back();
    }
};

// Modifier words of one opcode; every word must be consumed by the decoder, or the instruction is
// refused as unsupported (never silently misread).
struct Mods {
    std::vector<std::string> w;
    std::vector<bool> used;
    explicit Mods(const std::string& op) {
        size_t a = 0;
        while (a <= op.size()) {
            size_t b = op.find('.', a);
            if (b == std::string::npos) b = op.size();
            w.push_back(op.substr(a, b - a));
            a = b + 1;
        }
        used.assign(w.size(), false);
        used[0] = true;
    }
    const std::string& base() const { return w[0]; }
    bool take(const char* s) {
        for (size_t i = 1; i < w.size(); ++i)
            if (!used[i] && w[i] == s) return used[i] = true;
        return false;
    }
    // All type words, in order.
    std::vector<Type> types() {
        std::vector<Type> out;
        for (size_t i = 1; i < w.size(); ++i) {
            Type t = parse_type(w[i]);
            if (!used[i] && t != T_NONE) { used[i] = true; out.push_back(t); }
        }
        return out;
    }
    void ignore_memory_qualifiers() {
        static const char* words[] = {"weak", "volatile", "relaxed", "acquire", "release", "acq_rel", "sc", "cta",
                                      "gpu", "sys", "cluster", "nc", "ca", "cg", "cs", "lu", "cv", "wb", "wt",
                                      "mmio", "unified", "aligned"};
        for (size_t i = 1; i < w.size(); ++i) {
            if (used[i]) continue;
            for (const char* x : words)
                if (w[i] == x) used[i] = true;
            if (w[i].compare(0, 4, "L1::") == 0 || w[i].compare(0, 4, "L2::") == 0) used[i] = true;
        }
    }
    Round round() {
        static const std::pair<const char*, Round> r[] = {{"rn", R_RN}, {"rz", R_RZ}, {"rm", R_RM}, {"rp", R_RP},
                                                          {"rni", R_RNI}, {"rzi", R_RZI}, {"rmi", R_RMI},
                                                          {"rpi", R_RPI}, {"rna", R_RNA}};
        for (auto& p : r)
            if (take(p.first)) return p.second;
        return R_NONE;
    }
    Space space() {
        if (take("global")) return SP_GLOBAL;
        if (take("shared") || take("shared::cta")) return SP_SHARED;
        if (take("local")) return SP_LOCAL;
        if (take("param")) return SP_KPARAM;
        if (take("const")) return SP_CONST;
        if (take("generic")) return SP_GENERIC;
        return SP_GENERIC;
    }
    std::string leftover() const {
        for (size_t i = 1; i < w.size(); ++i)
            if (!used[i]) return w[i];
        return "";
    }
};

bool Decoder::decode_instr(const Stmt& s) {
    const auto& t = s.t;
    line = s.line;
    size_t i = 0;
    Instr in;
    if (t[0].is(".reg") || t[0].is(".local") || t[0].is(".shared") || t[0].is(".param"))
        return declare(t);
    if (t[0].s[0] == '.') return fail("unknown or unsupported directive '" + t[0].s + "'");
    if (t[0].is("@")) {
        size_t k = 1;
        if (k < t.size() && t[k].is("!")) { in.flags |= F_PNEG; ++k; }
        if (k >= t.size()) return fail("bad guard predicate");
        const Sym* p = lookup(t[k].s);
        if (!p || p->kind != Sym::Reg) return fail("guard '" + t[k].s + "' is not a predicate register");
        in.pred = kNumFixed + uint32_t(p->value);
        i = k + 1;
    }
    if (i >= t.size()) return fail("guard without an instruction");
    instr_text = t[i].s;
    Mods md(instr_text);
    const std::string& op = md.base();
    std::vector<Operand> ops = split_operands(t, i + 1);
    auto nops = [&](size_t lo, size_t hi) {
        if (ops.size() < lo || ops.size() > hi)
            return fail("'" + instr_text + "' takes " + std::to_string(lo) + (lo == hi ? "" : ".." + std::to_string(hi)) +
                        " operands, got " + std::to_string(ops.size()));
        return true;
    };
    auto finish = [&](const Instr& x) {
        std::string left = md.leftover();
        if (!left.empty()) return unsupported("modifier ." + left);
        emit(x);
        return true;
    };
    auto one_type = [&](Type* ty) {
        std::vector<Type> ts = md.types();
        if (ts.size() != 1) return unsupported("expected one type");
        *ty = ts[0];
        return true;
    };
    auto set_int = [&](Instr& x, Type ty) {
        int bits = type_bits(ty);
        x.ty = ty;
        x.mask = width_mask(bits);
        x.sh = uint8_t(64 - bits);
    };

    // -------------------------------------------------- data movement
    if (op == "mov") {
        Type ty;
        if (!one_type(&ty) || !nops(2, 2)) return false;
        int bits = type_bits(ty);
        if (is_vec(ops[1])) {  // pack
            std::vector<Operand> el;
            if (!vec_elems(ops[1], &el) || el.size() < 2 || el.size() > 4) return unsupported("vector size");
            in.op = OP_PACK;
            in.nvec = uint8_t(el.size());
            in.size = uint8_t(bits / 8 / el.size());  // bytes per element, as the interpreter reads it
            for (size_t k = 0; k < el.size(); ++k)
                if (!src(el[k], T_B64, &in.v[k])) return false;
            if (!dst(ops[0], &in.d)) return false;
            return finish(in);
        }
        if (is_vec(ops[0])) {  // unpack
            std::vector<Operand> el;
            if (!vec_elems(ops[0], &el) || el.size() < 2 || el.size() > 4) return unsupported("vector size");
            in.op = OP_UNPACK;
            in.nvec = uint8_t(el.size());
            in.size = uint8_t(bits / 8 / el.size());  // bytes per element
            for (size_t k = 0; k < el.size(); ++k)
                if (!dst(el[k], &in.v[k])) return false;
            if (!src(ops[1], T_B64, &in.a)) return false;
            return finish(in);
        }
        if (!dst(ops[0], &in.d)) return false;
        const std::string& name = ops[1].t[0].s;
        if (ops[1].t.size() == 1 && (name == "%clock" || name == "%clock64" || name == "%globaltimer" ||
                                     name == "%globaltimer_lo" || name == "%globaltimer_hi")) {
            in.op = OP_CLOCK;
            in.mask = width_mask(bits);
            in.mod = name == "%globaltimer_hi";
            return finish(in);
        }
        const Sym* sym = ops[1].t.size() >= 1 ? lookup(name) : nullptr;
        if (sym && (sym->kind == Sym::Local || sym->kind == Sym::KParam || sym->kind == Sym::Func)) {
            if (sym->kind == Sym::Func) return unsupported("taking the address of a function");
            uint32_t base;
            int64_t off;
            Space sp;
            if (!symbol_address(ops[1].t, 0, ops[1].t.size(), &base, &off, &sp)) return false;
            // A kernel parameter's address is its offset in the parameter space (cvta.param makes it generic).
            if (sym->kind == Sym::KParam) base = S_ZERO;
            in.op = OP_ADD;
            set_int(in, T_U64);
            in.a = base;
            in.b = const_slot(uint64_t(off));
            return finish(in);
        }
        in.op = OP_MOV;
        in.ty = ty;
        in.mask = ty == T_PRED ? 1 : width_mask(bits);
        if (!src(ops[1], ty, &in.a)) return false;
        return finish(in);
    }
    if (op == "ld" || op == "st" || op == "ldu") {
        bool load = op != "st";
        Space sp = md.space();
        md.ignore_memory_qualifiers();
        int nvec = md.take("v2") ? 2 : md.take("v4") ? 4 : 1;
        Type ty;
        if (!one_type(&ty)) return false;
        if (ty == T_B128 || ty == T_PRED) return unsupported("type");
        if (!nops(2, 2)) return unsupported("cache policy operand");
        const Operand& mem = load ? ops[1] : ops[0];
        const Operand& reg = load ? ops[0] : ops[1];
        uint32_t base;
        int64_t off;
        Space sym_sp;
        if (!address(mem, &base, &off, &sym_sp)) return false;
        if (sym_sp == SP_LOCAL && (sp == SP_KPARAM || sp == SP_LOCAL)) sp = SP_LOCAL;
        else if (sym_sp == SP_KPARAM) {
            if (!load) return unsupported("store to a kernel parameter");
            sp = SP_KPARAM;
        } else if (sp == SP_KPARAM) return unsupported("parameter access through a register address");
        if (sp == SP_CONST) sp = SP_GLOBAL;  // .const variables live in module-global storage
        in.op = load ? OP_LD : OP_ST;
        in.space = sp;
        in.ty = ty;
        in.size = uint8_t(type_bits(ty) / 8);
        in.nvec = uint8_t(nvec);
        in.a = base;
        in.imm = off;
        if (nvec > 1) {
            std::vector<Operand> el;
            if (!vec_elems(reg, &el) || int(el.size()) != nvec) return unsupported("vector operand count");
            for (int k = 0; k < nvec; ++k)
                if (!(load ? dst(el[k], &in.v[k]) : src(el[k], ty, &in.v[k]))) return false;
        } else if (!(load ? dst(reg, &in.v[0]) : src(reg, ty, &in.v[0]))) {
            return false;
        }
        return finish(in);
    }
    if (op == "cvta" || op == "isspacep") {
        bool to = md.take("to");
        Space sp = md.space();
        if (sp == SP_CONST) sp = SP_GLOBAL;
        std::vector<Type> ts = md.types();
        if (op == "isspacep") {
            if (!nops(2, 2) || !dst(ops[0], &in.d) || !src(ops[1], T_U64, &in.a)) return false;
            in.op = OP_ISSPACEP;
            in.space = sp;
            return finish(in);
        }
        if (ts.size() != 1 || !nops(2, 2)) return unsupported("");
        if (sp == SP_GENERIC) return unsupported("state space");
        in.op = to ? OP_CVTA_TO : OP_CVTA;
        in.space = sp;
        in.mask = width_mask(type_bits(ts[0]));
        if (!dst(ops[0], &in.d) || !src(ops[1], T_U64, &in.a)) return false;
        return finish(in);
    }

    // -------------------------------------------------- control
    if (op == "bra") {
        md.take("uni");
        if (!nops(1, 1)) return false;
        in.op = OP_BRA;
        st->fixups.push_back({st->fn->code.size(), ops[0].t[0].s});
        return finish(in);
    }
    if (op == "brx") {
        if (!md.take("idx")) return unsupported("");
        md.take("uni");
        if (!nops(2, 2) || !src(ops[0], T_U32, &in.a)) return false;
        in.op = OP_BRX;
        st->table_fixups.push_back({st->fn->code.size(), ops[1].t[0].s});
        return finish(in);
    }
    if (op == "call") {
        md.take("uni");
        // call (rets), fname, (args);  or  call fname, (args);  or  call fname;
        size_t k = 0;
        std::vector<std::string> rets, args;
        auto names = [&](const Operand& o, std::vector<std::string>* out) {
            for (auto& x : o.t)
                if (x.kind == 'i') out->push_back(x.s);
        };
        if (k < ops.size() && ops[k].t[0].is("(")) names(ops[k++], &rets);
        if (k >= ops.size() || ops[k].t.size() != 1) return unsupported("indirect call");
        std::string fname = ops[k++].t[0].s;
        auto fi = func_index.find(fname);
        if (fi == func_index.end()) return unsupported("call to unknown function " + fname);
        if (k < ops.size()) names(ops[k++], &args);
        if (k != ops.size()) return unsupported("call prototype");
        FuncText& callee = pm.funcs[fi->second];
        if (args.size() != callee.params.size() || rets.size() != callee.rets.size())
            return fail("call to " + fname + " with a wrong number of arguments or results");
        CallSite cs;
        cs.callee = fi->second;
        for (int pass = 0; pass < 2; ++pass) {
            auto& names_ = pass ? rets : args;
            auto& decls = pass ? callee.rets : callee.params;
            for (size_t j = 0; j < names_.size(); ++j) {
                const Sym* sy = lookup(names_[j]);
                if (!sy || sy->kind != Sym::Local) return fail("call argument '" + names_[j] + "' is not a .param variable");
                uint32_t size = uint32_t(decls[j].count * type_size_bytes(decls[j].type) * decls[j].vec);
                (pass ? cs.rets : cs.args).push_back(CallArg{uint32_t(sy->value), 0, size});  // callee offsets later
            }
        }
        in.op = OP_CALL;
        in.imm = int64_t(m->calls.size());
        m->calls.push_back(cs);
        return finish(in);
    }
    if (op == "ret") { md.take("uni"); in.op = OP_RET; return finish(in); }
    if (op == "exit") { in.op = OP_EXIT; return finish(in); }
    if (op == "trap" || op == "brkpt") { in.op = OP_TRAP; return finish(in); }
    if (op == "nanosleep") {
        md.types();
        in.op = OP_YIELD;
        return finish(in);
    }
    if (op == "membar" || op == "fence") {
        for (size_t k = 1; k < md.w.size(); ++k) md.used[k] = true;  // ordering is sequential here
        in.op = OP_NOP;
        return finish(in);
    }
    if (op == "prefetch" || op == "prefetchu") {
        for (size_t k = 1; k < md.w.size(); ++k) md.used[k] = true;
        in.op = OP_NOP;
        return finish(in);
    }

    // -------------------------------------------------- mbarrier (exec/mbarrier.cpp)
    if (op == "mbarrier") {
        in.op = OP_MBARRIER;
        Space sp = md.space();
        if (md.take("shared::cta")) sp = SP_SHARED;
        for (const char* q : {"release", "acquire", "relaxed", "cta"}) md.take(q);
        bool drop = false;
        if (md.take("init")) in.mod = MB_INIT;
        else if (md.take("inval")) in.mod = MB_INVAL;
        else if (md.take("arrive")) in.mod = md.take("noComplete") ? MB_ARRIVE_NOCOMPLETE : md.take("expect_tx") ? MB_ARRIVE_EXPECT_TX : MB_ARRIVE;
        else if (md.take("arrive_drop")) { in.mod = MB_ARRIVE; drop = true; if (md.take("noComplete")) in.mod = MB_ARRIVE_NOCOMPLETE; }
        else if (md.take("expect_tx")) in.mod = MB_EXPECT_TX;
        else if (md.take("complete_tx")) in.mod = MB_COMPLETE_TX;
        else if (md.take("test_wait")) in.mod = MB_TEST_WAIT;
        else if (md.take("try_wait")) in.mod = MB_TRY_WAIT;
        else if (md.take("pending_count")) in.mod = MB_PENDING_COUNT;
        else return unsupported("operation");
        if (drop) in.mod2 = 1;
        if ((in.mod == MB_TEST_WAIT || in.mod == MB_TRY_WAIT) && md.take("parity")) in.flags |= F_HI;
        if (!md.take("b64")) return unsupported("type");
        if (in.mod == MB_PENDING_COUNT) {
            if (!nops(2, 2) || !dst(ops[0], &in.d) || !src(ops[1], T_B64, &in.a)) return false;
            return finish(in);
        }
        size_t k = 0;
        bool has_dst = in.mod == MB_ARRIVE || in.mod == MB_ARRIVE_NOCOMPLETE || in.mod == MB_ARRIVE_EXPECT_TX ||
                       in.mod == MB_TEST_WAIT || in.mod == MB_TRY_WAIT;
        if (has_dst && (ops.empty() || !dst(ops[k++], &in.d))) return false;
        if (k >= ops.size()) return unsupported("operands");
        uint32_t base;
        int64_t off;
        Space sym_sp;
        if (!address(ops[k++], &base, &off, &sym_sp)) return false;
        if (sp == SP_GENERIC && sym_sp != SP_GENERIC) sp = sym_sp;
        if (sp != SP_SHARED && sp != SP_GENERIC) return unsupported("state space");
        in.a = base;
        in.imm = off;
        in.space = sp;
        in.size = 8;
        in.b = const_slot(1);  // count / token / tx operand, default 1
        size_t extra = ops.size() - k;
        bool needs = in.mod == MB_INIT || in.mod == MB_ARRIVE_NOCOMPLETE || in.mod == MB_ARRIVE_EXPECT_TX ||
                     in.mod == MB_EXPECT_TX || in.mod == MB_COMPLETE_TX || in.mod == MB_TEST_WAIT || in.mod == MB_TRY_WAIT;
        size_t most = in.mod == MB_TRY_WAIT ? 2 : (in.mod == MB_ARRIVE || needs) ? 1 : 0;
        if (extra > most || (needs && extra == 0)) return unsupported("operand count");
        if (extra >= 1 && !src(ops[k], in.mod == MB_TEST_WAIT || in.mod == MB_TRY_WAIT ? T_B64 : T_U32, &in.b)) return false;
        if (extra == 2 && !src(ops[k + 1], T_U32, &in.c)) return false;  // try_wait's suspend-time hint: ignored
        return finish(in);
    }

    // -------------------------------------------------- atomics
    if (op == "atom" || op == "red") {
        Space sp = md.space();
        md.ignore_memory_qualifiers();
        md.take("noftz");
        static const std::pair<const char*, AtomOp> aops[] = {
            {"add", A_ADD}, {"min", A_MIN}, {"max", A_MAX}, {"exch", A_EXCH}, {"cas", A_CAS}, {"inc", A_INC},
            {"dec", A_DEC}, {"and", A_AND}, {"or", A_OR}, {"xor", A_XOR}};
        bool found = false;
        for (auto& p : aops)
            if (md.take(p.first)) { in.mod = p.second; found = true; break; }
        if (!found) return unsupported("atomic operation");
        Type ty;
        if (!one_type(&ty)) return false;
        if (ty == T_B128 || (type_float(ty) && !(in.mod == A_ADD || in.mod == A_MIN || in.mod == A_MAX || in.mod == A_EXCH)))
            return unsupported("type");
        bool red = op == "red";
        size_t want = (red ? 2 : 3) + (in.mod == A_CAS);
        if (!nops(want, want)) return unsupported("cache policy operand or operand count");
        size_t k = 0;
        if (!red && !dst(ops[k++], &in.d)) return false;
        uint32_t base;
        int64_t off;
        Space sym_sp;
        if (!address(ops[k++], &base, &off, &sym_sp)) return false;
        if (sp == SP_GENERIC && sym_sp != SP_GENERIC) sp = sym_sp;
        if (sp != SP_GLOBAL && sp != SP_SHARED && sp != SP_GENERIC) return unsupported("state space");
        in.a = base;
        in.imm = off;
        if (!src(ops[k++], ty, &in.b)) return false;
        if (in.mod == A_CAS && !src(ops[k++], ty, &in.c)) return false;
        in.op = red ? OP_RED : OP_ATOM;
        in.space = sp;
        in.ty = ty;
        in.size = uint8_t(type_bits(ty) / 8);
        return finish(in);
    }

    // -------------------------------------------------- barriers and warp collectives
    if (op == "bar" || op == "barrier") {
        if (md.take("warp")) {
            if (!md.take("sync") || !nops(1, 1) || !src(ops[0], T_U32, &in.c)) return unsupported("");
            in.op = OP_BAR_WARP;
            return finish(in);
        }
        md.take("cta");
        md.take("aligned");
        if (md.take("sync") || (op == "bar" && md.w.size() == 1)) {
            in.op = OP_BAR;
        } else if (md.take("arrive")) {
            in.op = OP_BAR_ARRIVE;
        } else if (md.take("red")) {
            in.op = OP_BAR_RED;
            if (md.take("popc")) in.mod = 0;
            else if (md.take("and")) in.mod = 1;
            else if (md.take("or")) in.mod = 2;
            else return unsupported("reduction");
            std::vector<Type> ts = md.types();
            if (ts.size() != 1) return unsupported("type");
            in.ty = ts[0];
            if (!nops(3, 4) || !dst(ops[0], &in.d) || !src(ops[1], T_U32, &in.a)) return false;
            if (ops.size() == 4 && !src(ops[2], T_U32, &in.b)) return false;
            bool neg;
            if (!pred_src(ops.back(), &in.e, &neg)) return false;
            if (neg) in.flags |= F_CNEG;
            in.mod2 = ops.size() == 4;
            return finish(in);
        } else {
            return unsupported("");
        }
        if (!nops(1, 2) || !src(ops[0], T_U32, &in.a)) return false;
        if (ops.size() == 2 && !src(ops[1], T_U32, &in.b)) return false;
        in.mod2 = ops.size() == 2;  // thread count given
        return finish(in);
    }
    if (op == "shfl") {
        if (!md.take("sync")) return unsupported("shfl without .sync");
        if (md.take("up")) in.mod = 0;
        else if (md.take("down")) in.mod = 1;
        else if (md.take("bfly")) in.mod = 2;
        else if (md.take("idx")) in.mod = 3;
        else return unsupported("mode");
        Type ty;
        if (!one_type(&ty) || !nops(5, 5)) return false;
        in.op = OP_SHFL;
        if (!dst_pair(ops[0], &in.d, &in.d2) || !src(ops[1], T_B32, &in.a) || !src(ops[2], T_U32, &in.b) ||
            !src(ops[3], T_U32, &in.c) || !src(ops[4], T_U32, &in.e))
            return false;
        return finish(in);
    }
    if (op == "vote") {
        if (!md.take("sync")) return unsupported("vote without .sync");
        if (md.take("all")) in.mod = 0;
        else if (md.take("any")) in.mod = 1;
        else if (md.take("uni")) in.mod = 2;
        else if (md.take("ballot")) in.mod = 3;
        else return unsupported("mode");
        md.types();
        if (!nops(3, 3) || !dst(ops[0], &in.d)) return false;
        bool neg;
        if (!pred_src(ops[1], &in.a, &neg) || !src(ops[2], T_U32, &in.e)) return false;
        if (neg) in.flags |= F_CNEG;
        in.op = OP_VOTE;
        return finish(in);
    }
    if (op == "redux") {
        if (!md.take("sync")) return unsupported("");
        static const char* rops[] = {"add", "min", "max", "and", "or", "xor"};
        bool found = false;
        for (int k = 0; k < 6; ++k)
            if (md.take(rops[k])) { in.mod = uint8_t(k); found = true; break; }
        Type ty;
        if (!found || !one_type(&ty) || !nops(3, 3)) return unsupported("operation");
        if (type_float(ty)) return unsupported("type");
        in.ty = ty;
        in.op = OP_REDUX;
        if (!dst(ops[0], &in.d) || !src(ops[1], ty, &in.a) || !src(ops[2], T_U32, &in.e)) return false;
        return finish(in);
    }
    if (op == "match") {
        if (md.take("any")) in.mod = 0;
        else if (md.take("all")) in.mod = 1;
        else return unsupported("mode");
        if (!md.take("sync")) return unsupported("");
        Type ty;
        if (!one_type(&ty) || !nops(3, 3)) return false;
        in.ty = ty;
        in.mask = width_mask(type_bits(ty));
        in.op = OP_MATCH;
        if (!dst_pair(ops[0], &in.d, &in.d2) || !src(ops[1], ty, &in.a) || !src(ops[2], T_U32, &in.e)) return false;
        return finish(in);
    }
    if (op == "activemask") {
        md.types();
        if (!nops(1, 1) || !dst(ops[0], &in.d)) return false;
        in.op = OP_ACTIVEMASK;
        return finish(in);
    }

    // -------------------------------------------------- SIMD video instructions, dp4a/dp2a, bmsk
    if (op == "dp4a" || op == "dp2a" || op == "bmsk" || (op.size() > 2 && op[0] == 'v' && (op.back() == '2' || op.back() == '4'))) {
        in.op = OP_SIMD;
        std::vector<Type> ts = md.types();
        auto int32 = [](Type t) { return t == T_U32 || t == T_S32; };
        if (op == "bmsk") {
            if (md.take("clamp")) in.mod = SV_BMSK_CLAMP;
            else if (md.take("wrap")) in.mod = SV_BMSK_WRAP;
            else return unsupported("mode");
            if (ts.size() != 1 || ts[0] != T_B32 || !nops(3, 3)) return unsupported("type");
            if (!dst(ops[0], &in.d) || !src(ops[1], T_U32, &in.a) || !src(ops[2], T_U32, &in.b)) return false;
            return finish(in);
        }
        if (op == "dp4a" || op == "dp2a") {
            in.mod = SV_DP4A;
            if (op == "dp2a") {
                if (md.take("lo")) in.mod = SV_DP2A_LO;
                else if (md.take("hi")) in.mod = SV_DP2A_HI;
                else return unsupported("missing .lo/.hi");
            }
            if (ts.size() != 2 || !int32(ts[0]) || !int32(ts[1]) || !nops(4, 4)) return unsupported("type");
            in.ty2 = ts[0];
            in.space = ts[1];
            in.ty = (ts[0] == T_S32 || ts[1] == T_S32) ? T_S32 : T_U32;
        } else {
            static const std::pair<const char*, SimdOp> vops[] = {{"vadd", SV_ADD}, {"vsub", SV_SUB}, {"vavrg", SV_AVRG},
                                                                 {"vabsdiff", SV_ABSDIFF}, {"vmin", SV_MIN}, {"vmax", SV_MAX},
                                                                 {"vset", SV_SET}};
            std::string base = op.substr(0, op.size() - 1);
            bool found = false;
            for (auto& v : vops)
                if (base == v.first) in.mod = v.second, found = true;
            if (!found) return unsupported("");
            in.nvec = op.back() == '2' ? 2 : 4;
            in.size = uint8_t((1u << in.nvec) - 1);  // default destination mask: every lane
            if (in.mod == SV_SET) {
                static const std::pair<const char*, Cmp> vc[] = {{"eq", C_EQ}, {"ne", C_NE}, {"lt", C_LT},
                                                                 {"le", C_LE}, {"gt", C_GT}, {"ge", C_GE}};
                bool cmp = false;
                for (auto& p : vc)
                    if (md.take(p.first)) in.mod2 = p.second, cmp = true;
                if (!cmp || ts.size() != 2) return unsupported("comparison");
                ts.insert(ts.begin(), T_U32);
            }
            if (ts.size() != 3 || !int32(ts[0]) || !int32(ts[1]) || !int32(ts[2]) || !nops(4, 4)) return unsupported("type");
            in.ty = ts[0];
            in.ty2 = ts[1];
            in.space = ts[2];
            if (md.take("add")) in.pad = 1;
            else if (md.take("sat")) in.flags |= F_SAT;
            if (in.mod == SV_SET && (in.flags & F_SAT)) return unsupported("modifier .sat");
        }
        if (!dst(ops[0], &in.d) || !src(ops[1], T_U32, &in.a) || !src(ops[2], T_U32, &in.b) || !src(ops[3], T_U32, &in.c))
            return false;
        return finish(in);
    }

    // -------------------------------------------------- comparisons and selection
    static const std::pair<const char*, Cmp> cmps[] = {
        {"eq", C_EQ}, {"ne", C_NE}, {"lt", C_LT}, {"le", C_LE}, {"gt", C_GT}, {"ge", C_GE}, {"lo", C_LO},
        {"ls", C_LS}, {"hi", C_HI}, {"hs", C_HS}, {"equ", C_EQU}, {"neu", C_NEU}, {"ltu", C_LTU}, {"leu", C_LEU},
        {"gtu", C_GTU}, {"geu", C_GEU}, {"num", C_NUM}, {"nan", C_NAN}};
    if (op == "setp" || op == "set") {
        bool found = false;
        for (auto& p : cmps)
            if (md.take(p.first)) { in.mod = p.second; found = true; break; }
        if (!found) return unsupported("comparison");
        if (md.take("and")) in.mod2 = B_AND;
        else if (md.take("or")) in.mod2 = B_OR;
        else if (md.take("xor")) in.mod2 = B_XOR;
        if (md.take("ftz")) in.flags |= F_FTZ;
        std::vector<Type> ts = md.types();
        Type cty;
        if (op == "setp") {
            if (ts.size() != 1) return unsupported("type");
            cty = ts[0];
            in.op = OP_SETP;
            if (!nops(3, 4) || !dst_pair(ops[0], &in.d, &in.d2)) return false;
        } else {
            if (ts.size() != 2) return unsupported("types");
            cty = ts[1];
            in.ty = ts[0];
            in.op = OP_SET;
            if (!nops(3, 4) || !dst(ops[0], &in.d)) return false;
        }
        if (cty == T_BF16 || cty == T_BF16X2 || cty == T_F16 || cty == T_F16X2 || cty == T_F32 || cty == T_F64) {}
        else if (cty == T_PRED || cty == T_B128) return unsupported("type");
        in.ty2 = cty;
        in.mask = width_mask(type_bits(cty));
        in.sh = uint8_t(64 - type_bits(cty));
        if (!src(ops[1], cty, &in.a) || !src(ops[2], cty, &in.b)) return false;
        if (ops.size() == 4) {
            if (in.mod2 == B_NONE) return fail("'" + instr_text + "' has a predicate operand but no .and/.or/.xor");
            bool neg;
            if (!pred_src(ops[3], &in.c, &neg)) return false;
            if (neg) in.flags |= F_CNEG;
        } else if (in.mod2 != B_NONE) {
            return fail("'" + instr_text + "' needs a predicate operand");
        }
        return finish(in);
    }
    if (op == "selp") {
        Type ty;
        if (!one_type(&ty) || !nops(4, 4)) return false;
        in.op = OP_SELP;
        in.mask = width_mask(type_bits(ty));
        bool neg;
        if (!dst(ops[0], &in.d) || !src(ops[1], ty, &in.a) || !src(ops[2], ty, &in.b) || !pred_src(ops[3], &in.c, &neg))
            return false;
        if (neg) std::swap(in.a, in.b);
        return finish(in);
    }
    if (op == "slct") {
        if (md.take("ftz")) in.flags |= F_FTZ;
        std::vector<Type> ts = md.types();
        if (ts.size() != 2 || !nops(4, 4)) return unsupported("types");
        in.op = OP_SLCT;
        in.mask = width_mask(type_bits(ts[0]));
        in.ty2 = ts[1];
        if (!dst(ops[0], &in.d) || !src(ops[1], ts[0], &in.a) || !src(ops[2], ts[0], &in.b) || !src(ops[3], ts[1], &in.c))
            return false;
        return finish(in);
    }
    if (op == "testp") {
        static const char* kinds[] = {"finite", "infinite", "number", "notanumber", "normal", "subnormal"};
        bool found = false;
        for (int k = 0; k < 6; ++k)
            if (md.take(kinds[k])) { in.mod = uint8_t(k); found = true; break; }
        Type ty;
        if (!found || !one_type(&ty) || !nops(2, 2)) return unsupported("");
        in.op = OP_TESTP;
        in.ty = ty;
        if (!dst(ops[0], &in.d) || !src(ops[1], ty, &in.a)) return false;
        return finish(in);
    }

    // -------------------------------------------------- conversions
    if (op == "cvt") {
        in.mod = md.round();
        if (md.take("ftz")) in.flags |= F_FTZ;
        if (md.take("sat")) in.flags |= F_SAT;
        if (md.take("relu")) in.flags |= F_RELU;
        std::vector<Type> ts = md.types();
        if (ts.size() != 2) return unsupported("types");
        in.ty = ts[0];
        in.ty2 = ts[1];
        if (in.ty == T_F16X2 || in.ty == T_BF16X2) {
            if (in.ty2 != T_F32 || !nops(3, 3)) return unsupported("");
            in.op = OP_CVT;
            if (!dst(ops[0], &in.d) || !src(ops[1], T_F32, &in.a) || !src(ops[2], T_F32, &in.b)) return false;
            return finish(in);
        }
        if (!nops(2, 2) || in.ty == T_PRED || in.ty2 == T_PRED || in.ty == T_B128 || in.ty2 == T_F16X2 ||
            in.ty2 == T_BF16X2)
            return unsupported("types");
        if (!dst(ops[0], &in.d) || !src(ops[1], Type(in.ty2), &in.a)) return false;
        bool ints = !type_float(Type(in.ty)) && !type_float(Type(in.ty2));
        if (ints && !(in.flags & F_SAT)) {
            in.op = OP_CVT_INT;
            in.mask = width_mask(type_bits(Type(in.ty)));
            in.sh = uint8_t(64 - type_bits(Type(in.ty2)));
            in.mod = type_signed(Type(in.ty2));
            return finish(in);
        }
        in.op = OP_CVT;
        return finish(in);
    }

    // -------------------------------------------------- arithmetic
    static const std::pair<const char*, FloatOp> fops[] = {
        {"add", FO_ADD}, {"sub", FO_SUB}, {"mul", FO_MUL}, {"fma", FO_FMA}, {"mad", FO_FMA}, {"div", FO_DIV},
        {"min", FO_MIN}, {"max", FO_MAX}, {"neg", FO_NEG}, {"abs", FO_ABS}, {"rcp", FO_RCP}, {"sqrt", FO_SQRT},
        {"rsqrt", FO_RSQRT}, {"ex2", FO_EX2}, {"lg2", FO_LG2}, {"sin", FO_SIN}, {"cos", FO_COS},
        {"tanh", FO_TANH}, {"copysign", FO_COPYSIGN}};
    std::vector<Type> peek_types;
    for (size_t k = 1; k < md.w.size(); ++k)
        if (parse_type(md.w[k]) != T_NONE) peek_types.push_back(parse_type(md.w[k]));
    bool is_float_op = peek_types.size() == 1 && type_float(peek_types[0]);
    if (is_float_op) {
        int fo = -1;
        for (auto& p : fops)
            if (op == p.first) fo = p.second;
        if (fo < 0) return unsupported("");
        Type ty;
        one_type(&ty);
        in.op = OP_FLOAT;
        in.ty = ty;
        in.mod = uint8_t(fo);
        in.mod2 = md.round();
        md.take("approx");
        md.take("full");
        if (md.take("ftz")) in.flags |= F_FTZ;
        if (md.take("sat")) in.flags |= F_SAT;
        if (md.take("NaN")) in.flags |= F_NAN;
        if (md.take("relu")) in.flags |= F_RELU;
        md.take("noftz");
        int n = fo == FO_FMA ? 3 : (fo >= FO_NEG && fo <= FO_TANH) ? 1 : 2;
        if (!nops(n + 1, n + 1) || !dst(ops[0], &in.d) || !src(ops[1], ty, &in.a)) return false;
        if (n >= 2 && !src(ops[2], ty, &in.b)) return false;
        if (n >= 3 && !src(ops[3], ty, &in.c)) return false;
        if (ty == T_F32 && in.flags == 0 && (in.mod2 == R_NONE || in.mod2 == R_RN)) {
            if (fo == FO_ADD) in.op = OP_FADD32;
            if (fo == FO_SUB) in.op = OP_FSUB32;
            if (fo == FO_MUL) in.op = OP_FMUL32;
            if (fo == FO_FMA) in.op = OP_FFMA32;
        }
        return finish(in);
    }
    struct IntOp { const char* name; Op op; int nsrc; };
    static const IntOp iops[] = {
        {"add", OP_ADD, 2}, {"sub", OP_SUB, 2}, {"div", OP_DIV, 2}, {"rem", OP_REM, 2}, {"min", OP_MIN, 2},
        {"max", OP_MAX, 2}, {"neg", OP_NEG, 1}, {"abs", OP_ABS, 1}, {"and", OP_AND, 2}, {"or", OP_OR, 2},
        {"xor", OP_XOR, 2}, {"not", OP_NOT, 1}, {"cnot", OP_CNOT, 1}, {"shl", OP_SHL, 2}, {"shr", OP_SHR, 2},
        {"lop3", OP_LOP3, 4}, {"bfe", OP_BFE, 3}, {"bfi", OP_BFI, 4}, {"prmt", OP_PRMT, 3}, {"popc", OP_POPC, 1},
        {"clz", OP_CLZ, 1}, {"brev", OP_BREV, 1}, {"bfind", OP_BFIND, 1}, {"sad", OP_SAD, 3},
        {"mul", OP_MUL_LO, 2}, {"mad", OP_MAD_LO, 3}, {"mul24", OP_MUL24, 2}, {"mad24", OP_MAD24, 3},
        {"shf", OP_SHF, 3}};
    const IntOp* io = nullptr;
    for (auto& x : iops)
        if (op == x.name) io = &x;
    if (!io) return unsupported("");
    in.op = io->op;
    if (op == "mul" || op == "mad" || op == "mul24" || op == "mad24") {
        if (md.take("hi")) { in.flags |= F_HI; if (op == "mul") in.op = OP_MUL_HI; if (op == "mad") in.op = OP_MAD_HI; }
        else if (md.take("wide")) { if (op == "mul") in.op = OP_MUL_WIDE; else if (op == "mad") in.op = OP_MAD_WIDE; else return unsupported(""); }
        else if (!md.take("lo")) return unsupported("missing .lo/.hi/.wide");
    }
    if (op == "add" || op == "sub") {
        if (md.take("cc")) return unsupported("carry");
        if (md.take("sat")) in.op = op == "add" ? OP_ADD_SAT : OP_SUB_SAT;
    }
    if (op == "shf") {
        if (md.take("l")) in.mod = 0;
        else if (md.take("r")) in.mod = 1;
        else return unsupported("direction");
        if (md.take("clamp")) in.mod2 = 1;
        else if (!md.take("wrap")) return unsupported("mode");
    }
    if (op == "prmt") {
        static const char* modes[] = {"f4e", "b4e", "rc8", "ecl", "ecr", "rc16"};
        for (int k = 0; k < 6; ++k)
            if (md.take(modes[k])) in.mod = uint8_t(k + 1);
    }
    if (op == "bfind" && md.take("shiftamt")) in.mod = 1;
    Type ty;
    if (!one_type(&ty)) return false;
    if (ty == T_B128 || type_float(ty)) return unsupported("type");
    set_int(in, ty);
    if (ty == T_PRED) {
        if (in.op != OP_AND && in.op != OP_OR && in.op != OP_XOR && in.op != OP_NOT) return unsupported("type");
        in.mask = 1;
        in.sh = 63;
    }
    if (in.op == OP_MUL_WIDE || in.op == OP_MAD_WIDE) in.mask = width_mask(2 * type_bits(ty));
    int n = io->nsrc;
    if (op == "lop3") n = 4;
    if (op == "bfi") n = 4;
    if (!nops(n + 1, n + 1) || !dst(ops[0], &in.d)) return false;
    // Shift amounts, bit positions and lengths are .u32 operands.
    Type t1 = ty, t2 = (op == "shl" || op == "shr" || op == "bfe") ? T_U32 : ty, t3 = T_U32;
    if (op == "mad" || op == "sad") t3 = in.op == OP_MAD_WIDE ? (type_signed(ty) ? T_S64 : T_U64) : ty;
    if (op == "shf") t2 = ty;
    if (!src(ops[1], t1, &in.a)) return false;
    if (n >= 2 && !src(ops[2], t2, &in.b)) return false;
    if (n >= 3 && !src(ops[3], t3, &in.c)) return false;
    if (n >= 4) {
        if (op == "lop3") {
            uint64_t lut;
            if (ops[4].t.size() != 1 || !parse_number(ops[4].t[0].s, false, T_U32, &lut)) return unsupported("immLut");
            in.imm = int64_t(lut & 0xff);
        } else if (!src(ops[4], T_U32, &in.e)) {
            return false;
        }
    }
    return finish(in);
}

bool Decoder::decode_function(FuncText& ft, Function& fn) {
    FnState fs;
    fs.fn = &fn;
    fs.text = &ft;
    fs.shared_end = m->module_shared_bytes;
    st = &fs;
    fs.scopes.emplace_back();
    line = ft.line;
    // Parameters: kernel parameters index the launch's parameter buffer; a .func's live in its frame.
    if (ft.entry) {
        uint32_t off = 0;
        KernelInfo& info = m->kernels.back()->info;
        for (auto& p : ft.params) {
            uint32_t size = uint32_t(p.count * type_size_bytes(p.type) * p.vec);
            uint32_t align = p.align ? p.align : uint32_t(type_size_bytes(p.type));
            off = (off + align - 1) / align * align;
            info.params.push_back(ParamInfo{off, size, align});
            fs.scopes[0][p.name] = Sym{Sym::KParam, off, size};
            off += size;
        }
        info.param_bytes = off;
    } else {
        for (int pass = 0; pass < 2; ++pass)
            for (auto& p : pass ? ft.rets : ft.params) {
                uint32_t size = uint32_t(p.count * type_size_bytes(p.type) * p.vec);
                uint32_t off = local_alloc(size, p.align ? p.align : uint32_t(type_size_bytes(p.type)));
                (pass ? fn.ret_off : fn.param_off).push_back(off);
                (pass ? fn.ret_size : fn.param_size).push_back(size);
                fs.scopes[0][p.name] = Sym{Sym::Local, off, size};
            }
    }
    // Labels are function-wide; collect them first so forward branches resolve.
    for (size_t k = 0; k < ft.body.size(); ++k) {
        const Stmt& s = ft.body[k];
        if (s.kind == Stmt::Label) fs.labels[s.t[0].s] = 0;
        if (s.kind == Stmt::Instr && !s.t.empty() && s.t[0].is(".branchtargets")) {
            line = s.line;
            return fail("brx.idx branch tables are not supported");
        }
    }
    for (const Stmt& s : ft.body) {
        line = s.line;
        switch (s.kind) {
            case Stmt::Open: fs.scopes.emplace_back(); break;
            case Stmt::Close:
                if (fs.scopes.size() <= 1) return fail("unbalanced '}'");
                fs.scopes.pop_back();
                break;
            case Stmt::Label: fs.labels[s.t[0].s] = uint32_t(fn.code.size()); break;
            case Stmt::Instr:
                if (!decode_instr(s)) return false;
                break;
        }
    }
    // Falling off the end of a body returns.
    Instr end;
    end.op = OP_RET;
    end.line = line;
    fn.code.push_back(end);
    for (auto& f : fs.fixups) {
        auto it = fs.labels.find(f.second);
        if (it == fs.labels.end()) {
            line = fn.code[f.first].line;
            return fail("branch to unknown label '" + f.second + "'");
        }
        fn.code[f.first].imm = it->second;
    }
    // Constants live after the registers: rebase the placeholder indices.
    uint32_t cbase = kNumFixed + fn.nregs;
    auto rebase = [&](uint32_t& x) {
        if (x & 0x80000000u) x = cbase + (x & 0x7fffffffu);
    };
    for (auto& in : fn.code) {
        rebase(in.pred); rebase(in.a); rebase(in.b); rebase(in.c); rebase(in.e);
        for (auto& v : in.v) rebase(v);
    }
    fn.shared_bytes_end = fs.shared_end;
    st = nullptr;
    return true;
}

}  // namespace

Module::~Module() {
    for (auto& g : globals) free_module_global(g.addr);
    for (Kernel* k : kernels) delete k;
}

std::unique_ptr<Module> load_module(const char* ptx, size_t len, std::string* error) {
    ParsedModule pm;
    if (!parse_ptx(ptx, len, &pm, error)) return nullptr;
    std::unique_ptr<Module> m(new Module);
    Decoder dec(pm, m.get(), error);
    // Functions may be declared (prototype) and defined later: the definition wins.
    for (size_t i = 0; i < pm.funcs.size(); ++i) {
        auto it = dec.func_index.find(pm.funcs[i].name);
        if (it == dec.func_index.end() || pm.funcs[i].has_body) dec.func_index[pm.funcs[i].name] = uint32_t(i);
    }
    if (!dec.module_vars()) return nullptr;
    m->functions.resize(pm.funcs.size());
    for (size_t i = 0; i < pm.funcs.size(); ++i) {
        FuncText& ft = pm.funcs[i];
        Function& fn = m->functions[i];
        fn.name = ft.name;
        fn.entry = ft.entry;
        fn.defined = ft.has_body;
        if (!ft.has_body) continue;
        if (ft.entry) {
            Kernel* k = new Kernel;
            k->module = m.get();
            k->fn = uint32_t(i);
            k->info.name = ft.name;
            m->kernels.push_back(k);
        }
        if (!dec.decode_function(ft, fn)) return nullptr;
        if (ft.entry) {
            Kernel* k = m->kernels.back();
            k->info.static_smem = fn.shared_bytes_end;
            k->info.num_regs = int(fn.reg_units);
            uint32_t mx = ft.maxntid[0] * ft.maxntid[1] * ft.maxntid[2];
            if (mx) k->info.max_threads = mx;
            for (int d = 0; d < 3; ++d) k->info.reqntid[d] = ft.reqntid[d];
            if (ft.reqntid[0]) k->info.max_threads = ft.reqntid[0] * ft.reqntid[1] * ft.reqntid[2];
        }
    }
    // Dynamic shared memory starts at one module-wide offset (after every kernel's static part), so
    // a .func that references it needs no per-kernel patching.
    uint32_t static_end = m->module_shared_bytes;
    for (Kernel* k : m->kernels) static_end = std::max(static_end, k->info.static_smem);
    uint32_t al = m->dyn_shared_align;
    uint32_t dyn_base = (static_end + al - 1) / al * al;
    for (auto& ds : dec.dyn_slots) ds.first->consts[ds.second] = dyn_base;
    for (Kernel* k : m->kernels) k->static_smem_end = dyn_base;
    // Check every call site: callee defined; fill callee-side offsets.
    for (auto& cs : m->calls) {
        Function& callee = m->functions[cs.callee];
        if (!callee.defined) {
            static const std::pair<const char*, Builtin> builtins[] = {
                {"vprintf", BI_VPRINTF}, {"malloc", BI_MALLOC}, {"free", BI_FREE}, {"__assertfail", BI_ASSERTFAIL}};
            for (auto& b : builtins)
                if (callee.name == b.first) cs.builtin = b.second;
            if (cs.builtin) continue;  // arguments stay at the caller's offsets
            *error = "call to function " + callee.name + " which has no body in this module";
            return nullptr;
        }
        for (size_t j = 0; j < cs.args.size(); ++j) cs.args[j].callee_off = callee.param_off[j];
        for (size_t j = 0; j < cs.rets.size(); ++j) cs.rets[j].callee_off = callee.ret_off[j];
    }
    uint32_t max_func_local = 0;
    for (auto& f : m->functions)
        if (!f.entry) max_func_local = std::max(max_func_local, f.local_bytes);
    for (Kernel* k : m->kernels) k->info.local_bytes = m->functions[k->fn].local_bytes + max_func_local;
    return m;
}

void destroy_module(Module* m) { delete m; }

Kernel* find_kernel(Module* m, const char* name) {
    for (Kernel* k : m->kernels)
        if (k->info.name == name) return k;
    return nullptr;
}

KernelInfo& kernel_info(Kernel* k) { return k->info; }

bool find_global(Module* m, const char* name, uint64_t* addr, uint64_t* size) {
    for (auto& g : m->globals)
        if (g.name == name) {
            *addr = g.addr;
            *size = g.size;
            return true;
        }
    return false;
}

}  // namespace softgpu
