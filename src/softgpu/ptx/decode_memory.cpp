// ptx/decode_memory.cpp: the decoders of data movement and memory instructions (mov, ld/st/ldu,
// cvta/isspacep, atom/red, mbarrier), named in ptx/opcodes.def.
#include "ptx/decoder.hpp"

namespace softgpu {
namespace decode {

bool Decoder::decode_mov(Instr& in) {
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

bool Decoder::decode_ldst(Instr& in) {
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

bool Decoder::decode_cvta(Instr& in) {
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

bool Decoder::decode_atom(Instr& in) {
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

bool Decoder::decode_mbarrier(Instr& in) {
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

}  // namespace decode
}  // namespace softgpu
