// ptx/decoder.hpp: the decoder's state and helpers, shared by its files:
//   ptx/decode.cpp           one instruction: guard, mnemonic lookup in the ptx/opcodes.def table, the
//                            common checks; one function's body; the Module; the engine's module API
//   ptx/decode_symbols.cpp   module- and function-scope declarations and their layout
//   ptx/decode_operands.cpp  literals, registers, special registers, addresses
//   ptx/decode_memory.cpp, decode_control.cpp, decode_compute.cpp   the decoders of opcodes.def
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "ptx/parse.hpp"
#include "ptx/program.hpp"

namespace softgpu {
namespace decode {

struct Sym {
    enum Kind { Reg, Global, Shared, KParam, Local, Func, Label } kind = Reg;
    uint64_t value = 0;  // slot, address, offset, function index
    uint64_t size = 0;
};

inline uint64_t width_mask(int bits) { return bits >= 64 ? ~0ull : (1ull << bits) - 1; }

// Parses a PTX numeric literal as a value of type ty (float forms become ty's bits). False if not a number.
bool parse_number(const std::string& s, bool neg, Type ty, uint64_t* out);

struct Operand {
    std::vector<Tok> t;
    uint32_t line = 0;
};

// Splits instruction operands at top-level commas.
std::vector<Operand> split_operands(const std::vector<Tok>& t, size_t from);

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

struct Mods {
    std::vector<std::string> w;
    std::vector<bool> used;
    void reset(const std::string& op) {
        w.clear();
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

struct Decoder {
    ParsedModule& pm;
    Module* m;
    std::string* error;
    std::map<std::string, Sym> module_syms;
    std::map<std::string, uint32_t> func_index;
    std::set<std::string> extern_shared;
    uint32_t shared_top = 0;
    FnState* st = nullptr;
    uint32_t line = 0;
    // Dynamic shared memory starts after this kernel's static part: placeholder consts patched
    // when the module's layout is final.
    std::vector<std::pair<Function*, uint32_t>> dyn_slots;

    // The instruction being decoded (decode_instr sets these for the opcode's decoder).
    std::string instr_text;  // its opcode with modifiers, for messages
    Mods md;                 // its modifier words
    std::string op;          // its mnemonic
    std::vector<Operand> ops;

    Decoder(ParsedModule& p, Module* mod, std::string* e) : pm(p), m(mod), error(e) {}

    bool fail(const std::string& msg);
    bool unsupported(const std::string& what);

    // module-scope symbols (ptx/decode_symbols.cpp)
    uint32_t alloc_shared(uint64_t size, uint32_t align);
    bool init_bytes(const VarDecl& d, uint8_t* dst, uint64_t size);
    bool module_vars();
    // per-function symbols
    const Sym* lookup(const std::string& name);
    uint32_t const_slot(uint64_t v);
    uint32_t local_alloc(uint64_t size, uint32_t align);
    bool declare(const std::vector<Tok>& t);

    // operands (ptx/decode_operands.cpp)
    bool is_special(const std::string& s, uint32_t* slot);
    bool src(const Operand& o, Type ty, uint32_t* slot);
    uint32_t dyn_shared_slot();
    bool dst(const Operand& o, uint32_t* slot);
    bool dst_pair(const Operand& o, uint32_t* a, uint32_t* b);
    bool vec_elems(const Operand& o, std::vector<Operand>* out);
    bool is_vec(const Operand& o) { return !o.t.empty() && o.t[0].is("{"); }
    bool symbol_address(const std::vector<Tok>& t, size_t from, size_t to, uint32_t* base, int64_t* off, Space* sp);
    bool address(const Operand& o, uint32_t* base, int64_t* off, Space* sp);
    bool pred_src(const Operand& o, uint32_t* slot, bool* negated);

    // instructions (ptx/decode.cpp)
    bool decode_function(FuncText& ft, Function& fn);
    bool decode_instr(const Stmt& s);
    bool nops(size_t lo, size_t hi);  // operand count in [lo, hi]
    bool finish(const Instr& x);      // every modifier consumed: emit x
    bool one_type(Type* ty);          // exactly one type word
    static void set_int(Instr& x, Type ty);
    Instr* emit(Instr in) {
        in.line = line;
        st->fn->code.push_back(in);
        return &st->fn->code.back();
    }

    // The decoders named in ptx/opcodes.def.
    bool decode_mov(Instr& in);        // ptx/decode_memory.cpp
    bool decode_ldst(Instr& in);
    bool decode_cvta(Instr& in);
    bool decode_atom(Instr& in);
    bool decode_mbarrier(Instr& in);
    bool decode_bra(Instr& in);        // ptx/decode_control.cpp
    bool decode_brx(Instr& in);
    bool decode_call(Instr& in);
    bool decode_ret(Instr& in);
    bool decode_exit(Instr& in);
    bool decode_trap(Instr& in);
    bool decode_nanosleep(Instr& in);
    bool decode_nop(Instr& in);
    bool decode_bar(Instr& in);
    bool decode_shfl(Instr& in);
    bool decode_vote(Instr& in);
    bool decode_redux(Instr& in);
    bool decode_match(Instr& in);
    bool decode_activemask(Instr& in);
    bool decode_setp(Instr& in);       // ptx/decode_compute.cpp
    bool decode_selp(Instr& in);
    bool decode_slct(Instr& in);
    bool decode_testp(Instr& in);
    bool decode_cvt(Instr& in);
    bool decode_simd(Instr& in);
    bool decode_arith(Instr& in);
};

}  // namespace decode
}  // namespace softgpu
