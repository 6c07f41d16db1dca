// ptx/decode_compute.cpp: the decoders of comparisons and selection (setp/set, selp, slct, testp),
// conversions (cvt), SIMD video instructions (v*2/v*4, dp4a/dp2a, bmsk) and integer and float
// arithmetic, named in ptx/opcodes.def.
#include "ptx/decoder.hpp"

namespace softgpu {
namespace decode {

bool Decoder::decode_setp(Instr& in) {
    static const std::pair<const char*, Cmp> cmps[] = {
        {"eq", C_EQ}, {"ne", C_NE}, {"lt", C_LT}, {"le", C_LE}, {"gt", C_GT}, {"ge", C_GE}, {"lo", C_LO},
        {"ls", C_LS}, {"hi", C_HI}, {"hs", C_HS}, {"equ", C_EQU}, {"neu", C_NEU}, {"ltu", C_LTU}, {"leu", C_LEU},
        {"gtu", C_GTU}, {"geu", C_GEU}, {"num", C_NUM}, {"nan", C_NAN}};
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

bool Decoder::decode_selp(Instr& in) {
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

bool Decoder::decode_slct(Instr& in) {
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

bool Decoder::decode_testp(Instr& in) {
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

bool Decoder::decode_cvt(Instr& in) {
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

bool Decoder::decode_simd(Instr& in) {
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

bool Decoder::decode_arith(Instr& in) {
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

}  // namespace decode
}  // namespace softgpu
