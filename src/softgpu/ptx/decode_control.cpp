// ptx/decode_control.cpp: the decoders of control flow (bra, brx, call, ret, exit, trap,
// nanosleep), ordering (membar/fence, prefetch), CTA barriers and warp collectives, named in
// ptx/opcodes.def.
#include "ptx/decoder.hpp"

namespace softgpu {
namespace decode {

bool Decoder::decode_bra(Instr& in) {
    md.take("uni");
    if (!nops(1, 1)) return false;
    in.op = OP_BRA;
    st->fixups.push_back({st->fn->code.size(), ops[0].t[0].s});
    return finish(in);
}

bool Decoder::decode_brx(Instr& in) {
    if (!md.take("idx")) return unsupported("");
    md.take("uni");
    if (!nops(2, 2) || !src(ops[0], T_U32, &in.a)) return false;
    in.op = OP_BRX;
    st->table_fixups.push_back({st->fn->code.size(), ops[1].t[0].s});
    return finish(in);
}

bool Decoder::decode_call(Instr& in) {
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

bool Decoder::decode_ret(Instr& in) {
    md.take("uni");
    in.op = OP_RET;
    return finish(in);
}

bool Decoder::decode_exit(Instr& in) {
    in.op = OP_EXIT;
    return finish(in);
}

bool Decoder::decode_trap(Instr& in) {
    in.op = OP_TRAP;
    return finish(in);
}

bool Decoder::decode_nanosleep(Instr& in) {
    md.types();
    in.op = OP_YIELD;
    return finish(in);
}

bool Decoder::decode_nop(Instr& in) {
    // Ordering is sequential here and nothing is cached: every modifier is accepted.
    for (size_t k = 1; k < md.w.size(); ++k) md.used[k] = true;
    in.op = OP_NOP;
    return finish(in);
}

bool Decoder::decode_bar(Instr& in) {
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

bool Decoder::decode_shfl(Instr& in) {
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

bool Decoder::decode_vote(Instr& in) {
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

bool Decoder::decode_redux(Instr& in) {
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

bool Decoder::decode_match(Instr& in) {
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

bool Decoder::decode_activemask(Instr& in) {
    md.types();
    if (!nops(1, 1) || !dst(ops[0], &in.d)) return false;
    in.op = OP_ACTIVEMASK;
    return finish(in);
}

}  // namespace decode
}  // namespace softgpu
