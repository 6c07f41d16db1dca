// ptx/decode_symbols.cpp: declarations and their layout: module-scope variables (.global/.const
// storage and initialisers, the module-wide .shared layout), a function's registers, .local and
// .param frame, kernel-scope .shared; name lookup through the scopes; constant slots.
#include <algorithm>
#include <cstring>

#include "ptx/decoder.hpp"

namespace softgpu {
namespace decode {

uint32_t Decoder::alloc_shared(uint64_t size, uint32_t align) {
    if (!align) align = 1;
    shared_top = (shared_top + align - 1) / align * align;
    uint32_t off = shared_top;
    shared_top += uint32_t(size);
    return off;
}

bool Decoder::init_bytes(const VarDecl& d, uint8_t* dst, uint64_t size) {
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

bool Decoder::module_vars() {
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

const Sym* Decoder::lookup(const std::string& name) {
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

uint32_t Decoder::const_slot(uint64_t v) {
    auto it = st->const_slots.find(v);
    if (it != st->const_slots.end()) return it->second;
    uint32_t idx = uint32_t(st->fn->consts.size());
    st->fn->consts.push_back(v);
    return st->const_slots[v] = idx | 0x80000000u;  // rebased once nregs is final
}

uint32_t Decoder::local_alloc(uint64_t size, uint32_t align) {
    if (!align) align = 1;
    Function* f = st->fn;
    f->local_bytes = (f->local_bytes + align - 1) / align * align;
    uint32_t off = f->local_bytes;
    f->local_bytes += uint32_t(size);
    if (align > f->local_align) f->local_align = align;
    return off;
}

bool Decoder::declare(const std::vector<Tok>& t) {
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

}  // namespace decode
}  // namespace softgpu
