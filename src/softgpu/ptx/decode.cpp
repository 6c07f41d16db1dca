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
#include <algorithm>
#include <unordered_map>

#include "ptx/decoder.hpp"

namespace softgpu {
namespace decode {

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
    md.reset(instr_text);
    op = md.base();
    ops = split_operands(t, i + 1);
    // One lookup in the table of ptx/opcodes.def finds the mnemonic's decoder.
    using Handler = bool (Decoder::*)(Instr&);
    static const std::unordered_map<std::string, Handler> decoders = {
#define SG_PTX(mnemonic, decoder) {mnemonic, &Decoder::decoder},
#include "ptx/opcodes.def"
    };
    auto h = decoders.find(op);
    if (h == decoders.end()) return unsupported("");
    return (this->*h->second)(in);
}

bool Decoder::nops(size_t lo, size_t hi) {
    if (ops.size() < lo || ops.size() > hi)
        return fail("'" + instr_text + "' takes " + std::to_string(lo) + (lo == hi ? "" : ".." + std::to_string(hi)) +
                    " operands, got " + std::to_string(ops.size()));
    return true;
}

bool Decoder::finish(const Instr& x) {
    std::string left = md.leftover();
    if (!left.empty()) return unsupported("modifier ." + left);
    emit(x);
    return true;
}

bool Decoder::one_type(Type* ty) {
    std::vector<Type> ts = md.types();
    if (ts.size() != 1) return unsupported("expected one type");
    *ty = ts[0];
    return true;
}

void Decoder::set_int(Instr& x, Type ty) {
    int bits = type_bits(ty);
    x.ty = ty;
    x.mask = width_mask(bits);
    x.sh = uint8_t(64 - bits);
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

}  // namespace decode


Module::~Module() {
    for (auto& g : globals) free_module_global(g.addr);
    for (Kernel* k : kernels) delete k;
}

std::unique_ptr<Module> load_module(const char* ptx, size_t len, std::string* error) {
    ParsedModule pm;
    if (!parse_ptx(ptx, len, &pm, error)) return nullptr;
    std::unique_ptr<Module> m(new Module);
    decode::Decoder dec(pm, m.get(), error);
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
