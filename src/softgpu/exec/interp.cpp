// exec/interp.cpp: the interpreter loop. One thread runs until it blocks (barrier, warp
// collective), exits, faults, or uses up its time slice. Memory accesses are checked in
// exec/access.cpp (memcheck, racecheck, initcheck) and counted here.
#include <cstring>

#include "exec/alu.hpp"
#include "exec/exec.hpp"

namespace softgpu {

using namespace alu;

RunStatus Exec::run(Thread& t, uint32_t budget) {
    const Function* fn = &module->functions[t.fn];
    const Instr* code = fn->code.data();
    uint64_t* R = t.regs.data() + t.fp;
    uint32_t pc = t.pc;
    uint64_t executed = 0;
    RunStatus status = RUN_YIELD;
    LaunchCounts& C = *counts;
#define SAVE() (t.pc = pc)
#define RELOAD()                                   \
    do {                                           \
        fn = &module->functions[t.fn];             \
        code = fn->code.data();                    \
        R = t.regs.data() + t.fp;                  \
        pc = t.pc;                                 \
    } while (0)
    while (executed < budget) {
        const Instr& in = code[pc];
        ++executed;
        if (in.pred && !((R[in.pred] ^ ((in.flags & F_PNEG) ? 1 : 0)) & 1)) {
            ++pc;
            continue;
        }
        // The dispatch is generated from ptx/opcodes.def: each INTERP operation jumps to its label
        // op_NAME below (a missing label does not compile), each SCHED one hands the thread to the
        // scheduler. Labels stay inside the switch, so `break` ends an operation (++pc) and
        // `continue` has set pc itself.
        switch (in.op) {
#define SG_DISPATCH_INTERP(name) goto op_##name;
#define SG_DISPATCH_SCHED(name) goto sched;
#define SG_OP(name, text, where) case OP_##name: SG_DISPATCH_##where(name)
#include "ptx/opcodes.def"
#undef SG_DISPATCH_INTERP
#undef SG_DISPATCH_SCHED
            op_MOV: R[in.d] = R[in.a] & in.mask; break;
            op_ADD: R[in.d] = (R[in.a] + R[in.b]) & in.mask; break;
            op_SUB: R[in.d] = (R[in.a] - R[in.b]) & in.mask; break;
            op_MUL_LO: R[in.d] = (R[in.a] * R[in.b]) & in.mask; break;
            op_MAD_LO: R[in.d] = (R[in.a] * R[in.b] + R[in.c]) & in.mask; break;
            op_MUL_WIDE:
            op_MAD_WIDE: {
                uint64_t p = type_signed(Type(in.ty)) ? uint64_t(sext(R[in.a], in.sh) * sext(R[in.b], in.sh))
                                                      : (R[in.a] & ((1ull << (64 - in.sh)) - 1)) * (R[in.b] & ((1ull << (64 - in.sh)) - 1));
                if (in.op == OP_MAD_WIDE) p += R[in.c];
                R[in.d] = p & in.mask;
                break;
            }
            op_MUL_HI:
            op_MAD_HI: R[in.d] = mul_hi(in, R[in.a], R[in.b], R[in.c]); break;
            op_MUL24:
            op_MAD24: R[in.d] = mul24(in, R[in.a], R[in.b], R[in.c]); break;
            op_DIV:
            op_REM: R[in.d] = div_rem(in, R[in.a], R[in.b]); break;
            op_MIN:
            op_MAX: {
                bool lt;
                if (type_signed(Type(in.ty))) lt = sext(R[in.a], in.sh) < sext(R[in.b], in.sh);
                else lt = (R[in.a] & in.mask) < (R[in.b] & in.mask);
                R[in.d] = ((in.op == OP_MIN) == lt ? R[in.a] : R[in.b]) & in.mask;
                break;
            }
            op_NEG: R[in.d] = (0 - R[in.a]) & in.mask; break;
            op_ABS: { int64_t a = sext(R[in.a], in.sh); R[in.d] = uint64_t(a < 0 ? -a : a) & in.mask; break; }
            op_SAD: R[in.d] = sad(in, R[in.a], R[in.b], R[in.c]); break;
            op_SIMD: R[in.d] = simd_instr(in, uint32_t(R[in.a]), uint32_t(R[in.b]), uint32_t(R[in.c])); break;
            op_ADD_SAT:
            op_SUB_SAT: R[in.d] = add_sat(in, R[in.a], R[in.b]); break;
            op_AND: R[in.d] = R[in.a] & R[in.b] & in.mask; break;
            op_OR: R[in.d] = (R[in.a] | R[in.b]) & in.mask; break;
            op_XOR: R[in.d] = (R[in.a] ^ R[in.b]) & in.mask; break;
            op_NOT: R[in.d] = ~R[in.a] & in.mask; break;
            op_CNOT: R[in.d] = (R[in.a] & in.mask) == 0; break;
            op_SHL: {
                uint64_t n = R[in.b] & 0xffffffffu;
                R[in.d] = n >= uint64_t(64 - in.sh) ? 0 : (R[in.a] << n) & in.mask;
                break;
            }
            op_SHR: {
                uint64_t n = R[in.b] & 0xffffffffu;
                int bits = 64 - in.sh;
                if (type_signed(Type(in.ty))) R[in.d] = uint64_t(sext(R[in.a], in.sh) >> (n >= uint64_t(bits) ? bits - 1 : n)) & in.mask;
                else R[in.d] = n >= uint64_t(bits) ? 0 : (R[in.a] & in.mask) >> n;
                break;
            }
            op_LOP3: {
                uint64_t a = R[in.a], b = R[in.b], c = R[in.c], r = 0;
                for (int i = 0; i < 8; ++i)
                    if (in.imm >> i & 1) r |= ((i & 4) ? a : ~a) & ((i & 2) ? b : ~b) & ((i & 1) ? c : ~c);
                R[in.d] = r & in.mask;
                break;
            }
            op_SHF: {
                uint64_t n = R[in.c] & 0xffffffffu;
                n = in.mod2 ? (n > 32 ? 32 : n) : (n & 31);
                uint64_t v = (R[in.b] & 0xffffffffu) << 32 | (R[in.a] & 0xffffffffu);
                R[in.d] = in.mod == 0 ? uint32_t((v << n) >> 32) : uint32_t(v >> n);
                break;
            }
            op_BFE: R[in.d] = bfe(in, R[in.a], R[in.b], R[in.c]); break;
            op_BFI: R[in.d] = bfi(in, R[in.a], R[in.b], R[in.c], R[in.e]); break;
            op_PRMT: R[in.d] = prmt(uint32_t(R[in.a]), uint32_t(R[in.b]), uint32_t(R[in.c]), in.mod); break;
            op_POPC: R[in.d] = uint64_t(__builtin_popcountll(R[in.a] & in.mask)); break;
            op_CLZ: {
                uint64_t a = R[in.a] & in.mask;
                int bits = 64 - in.sh;
                R[in.d] = a == 0 ? uint64_t(bits) : uint64_t(__builtin_clzll(a) - in.sh);
                break;
            }
            op_BREV: {
                uint64_t a = R[in.a], r = 0;
                int bits = 64 - in.sh;
                for (int i = 0; i < bits; ++i) r |= ((a >> i) & 1) << (bits - 1 - i);
                R[in.d] = r;
                break;
            }
            op_BFIND: R[in.d] = bfind(in, R[in.a]); break;
            op_FADD32: R[in.d] = f32_result(as_f32(R[in.a]) + as_f32(R[in.b])); break;
            op_FSUB32: R[in.d] = f32_result(as_f32(R[in.a]) - as_f32(R[in.b])); break;
            op_FMUL32: R[in.d] = f32_result(as_f32(R[in.a]) * as_f32(R[in.b])); break;
            op_FFMA32: R[in.d] = f32_result(std::fma(as_f32(R[in.a]), as_f32(R[in.b]), as_f32(R[in.c]))); break;
            op_FLOAT: R[in.d] = float_instr(in, R[in.a], R[in.b], R[in.c]); break;
            op_SETP: {
                uint64_t a = R[in.a], b = R[in.b];
                if (in.ty2 == T_F16X2 || in.ty2 == T_BF16X2) {
                    R[in.d] = combine(compare(a, b, in, 0), in, R[in.c]);
                    R[in.d2] = combine(compare(a, b, in, 1), in, R[in.c]);
                } else {
                    bool r = compare(a, b, in, 0);
                    R[in.d] = combine(r, in, R[in.c]);
                    R[in.d2] = combine(!r, in, R[in.c]);
                }
                R[S_SINK] = 0;
                break;
            }
            op_SET: {
                bool x2 = in.ty2 == T_F16X2 || in.ty2 == T_BF16X2;
                uint64_t r = 0;
                for (int lane = 0; lane < (x2 ? 2 : 1); ++lane) {
                    bool v = combine(compare(R[in.a], R[in.b], in, lane), in, R[in.c]);
                    uint64_t one;
                    switch (in.ty) {
                        case T_F32: one = 0x3f800000u; break;
                        case T_F16: case T_F16X2: one = 0x3c00; break;
                        case T_BF16: case T_BF16X2: one = 0x3f80; break;
                        default: one = x2 ? 0xffff : 0xffffffffu; break;
                    }
                    if (v) r |= one << (16 * lane);
                }
                R[in.d] = r;
                break;
            }
            op_SELP: R[in.d] = ((R[in.c] & 1) ? R[in.a] : R[in.b]) & in.mask; break;
            op_SLCT: {
                bool ge = in.ty2 == T_F32 ? float_value(R[in.c], T_F32, in.flags & F_FTZ) >= 0 : sext(R[in.c], 32) >= 0;
                R[in.d] = (ge ? R[in.a] : R[in.b]) & in.mask;
                break;
            }
            op_TESTP: {
                double x = float_value(R[in.a], in.ty, false);
                int c = std::fpclassify(x);
                if (in.ty == T_F32) c = std::fpclassify(as_f32(R[in.a]));
                bool r = false;
                switch (in.mod) {
                    case 0: r = std::isfinite(x); break;
                    case 1: r = std::isinf(x); break;
                    case 2: r = !std::isnan(x); break;
                    case 3: r = std::isnan(x); break;
                    case 4: r = c == FP_NORMAL; break;
                    case 5: r = c == FP_SUBNORMAL; break;
                }
                R[in.d] = r;
                break;
            }
            op_CVT_INT: {
                uint64_t v = in.mod ? uint64_t(sext(R[in.a], in.sh)) : (R[in.a] << in.sh) >> in.sh;
                R[in.d] = v & in.mask;
                break;
            }
            op_CVT:
                if (in.ty == T_F16X2 || in.ty == T_BF16X2) {
                    Instr one = in;
                    one.ty = in.ty == T_F16X2 ? T_F16 : T_BF16;
                    R[in.d] = (cvt(one, R[in.a]) << 16) | cvt(one, R[in.b]);
                } else {
                    R[in.d] = cvt(in, R[in.a]);
                }
                break;
            op_PACK: {
                uint64_t r = 0;
                int bits = in.size * 8;
                uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
                for (int k = in.nvec - 1; k >= 0; --k) r = (bits >= 64 ? 0 : r << bits) | (R[in.v[k]] & m);
                R[in.d] = r;
                break;
            }
            op_UNPACK: {
                uint64_t a = R[in.a];
                int bits = in.size * 8;
                uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
                for (int k = 0; k < in.nvec; ++k) R[in.v[k]] = (a >> (bits * k)) & m;
                R[S_SINK] = 0;
                break;
            }
            op_CVTA: {
                uint64_t a = R[in.a];
                if (in.space == SP_SHARED) a = (a & 0xffffffffu) + kSharedWindow;
                else if (in.space == SP_LOCAL) a = (a & 0xffffffffu) + kLocalWindow;
                else if (in.space == SP_KPARAM) a = (a & 0xffffffffu) + kParamWindow;
                R[in.d] = a & in.mask;
                break;
            }
            op_CVTA_TO: {
                uint64_t a = R[in.a];
                if (in.space == SP_SHARED) a -= kSharedWindow;
                else if (in.space == SP_LOCAL) a -= kLocalWindow;
                else if (in.space == SP_KPARAM) a -= kParamWindow;
                R[in.d] = a & in.mask;
                break;
            }
            op_ISSPACEP: {
                uint64_t a = R[in.a];
                bool sh = a - kSharedWindow < kWindowSize, lo = a - kLocalWindow < kWindowSize;
                bool pa = a - kParamWindow < kWindowSize;
                R[in.d] = in.space == SP_SHARED ? sh : in.space == SP_LOCAL ? lo : in.space == SP_KPARAM ? pa
                        : in.space == SP_GLOBAL ? !sh && !lo && !pa : 0;
                break;
            }
            op_CLOCK: R[in.d] = ((instructions + executed) >> (in.mod ? 32 : 0)) & in.mask; break;
            op_LD:
            op_ST: {
                uint64_t a = R[in.a] + uint64_t(in.imm);
                uint32_t total = uint32_t(in.size) * in.nvec;
                int real;
                bool st = in.op == OP_ST;
                SAVE();
                uint8_t* p = resolve(*this, t, in, in.space, a, total, st ? AC_STORE : AC_LOAD, &real);
                if (!p) {
                    if (abort) { status = RUN_FAULT; goto out; }
                    break;  // a finding that lets the thread continue (initcheck): value as read
                }
                if (real == SP_GLOBAL) (st ? C.global_store_bytes : C.global_load_bytes) += total;
                else if (real == SP_SHARED) C.shared_bytes += total;
                for (int k = 0; k < in.nvec; ++k) {
                    uint8_t* q = p + k * in.size;
                    if (st) {
                        uint64_t v = R[in.v[k]];
                        memcpy(q, &v, in.size);
                    } else {
                        uint64_t v = 0;
                        memcpy(&v, q, in.size);
                        if (type_signed(Type(in.ty)) && in.size < 8) v = uint64_t(sext(v, 64 - 8 * in.size));
                        R[in.v[k]] = v;
                    }
                }
                R[S_SINK] = 0;
                break;
            }
            op_ATOM:
            op_RED: {
                uint64_t a = R[in.a] + uint64_t(in.imm);
                int real;
                SAVE();
                uint8_t* p = resolve(*this, t, in, in.space, a, in.size, AC_ATOMIC, &real);
                if (!p) { status = RUN_FAULT; goto out; }
                C.atomics++;
                if (real == SP_GLOBAL) {
                    if (in.op == OP_ATOM) C.global_load_bytes += in.size;
                    C.global_store_bytes += in.size;
                } else {
                    C.shared_bytes += in.size * (in.op == OP_ATOM ? 2 : 1);
                }
                uint64_t old = 0, b = R[in.b], nv = 0;
                memcpy(&old, p, in.size);
                int bits = in.size * 8;
                uint64_t m = bits >= 64 ? ~0ull : (1ull << bits) - 1;
                nv = atomic_value(in, old, b, R[in.c]);
                memcpy(p, &nv, in.size);
                if (in.op == OP_ATOM) R[in.d] = old & m;
                R[S_SINK] = 0;
                break;
            }
            op_MBARRIER: {
                SAVE();
                int r = mbarrier(t, in, R);
                if (r < 0) { status = RUN_FAULT; goto out; }
                if (r > 0) { ++pc; goto out; }  // try_wait not complete: yield the rest of the slice
                break;
            }
            op_BRA: pc = uint32_t(in.imm); continue;
            op_BRX: pc = module->branch_tables[in.imm][R[in.a] & 0xffffffffu]; continue;
            op_CALL: {
                const CallSite& cs = module->calls[in.imm];
                if (cs.builtin) {
                    SAVE();
                    if (!call_builtin(t, in, cs)) { status = RUN_FAULT; goto out; }
                    break;
                }
                if (t.stack.size() >= 512) {
                    SAVE();
                    finding(719, CK_OTHER, t, in, "call stack overflow (more than 512 nested calls)");
                    status = RUN_FAULT;
                    goto out;
                }
                uint32_t caller_lp = t.lp;
                t.stack.push_back(CallFrame{t.fn, pc + 1, t.fp, t.lp, uint32_t(in.imm)});
                t.fp += fn->frame_slots();
                t.lp += (fn->local_bytes + 15) & ~15u;
                push_frame(t, cs.callee);
                for (auto& arg : cs.args) memcpy(&t.local[t.lp + arg.callee_off], &t.local[caller_lp + arg.caller_off], arg.size);
                RELOAD();
                continue;
            }
            op_RET:
                if (t.stack.empty()) { status = RUN_EXITED; ++pc; goto out; }
                {
                    CallFrame f = t.stack.back();
                    t.stack.pop_back();
                    const CallSite& cs = module->calls[f.call];
                    for (auto& r : cs.rets) memcpy(&t.local[f.lp + r.caller_off], &t.local[t.lp + r.callee_off], r.size);
                    t.fn = f.fn;
                    t.fp = f.fp;
                    t.lp = f.lp;
                    t.pc = f.ret_pc;
                    RELOAD();
                }
                continue;
            op_EXIT: status = RUN_EXITED; ++pc; goto out;
            op_TRAP:
                SAVE();
                finding(719, CK_OTHER, t, in, "the kernel executed trap");
                abort = true;
                status = RUN_FAULT;
                goto out;
            op_NOP: break;
            op_YIELD: ++pc; goto out;
            sched:  // a CTA barrier or warp collective: exec/collective.cpp completes it
                status = RUN_BLOCKED;
                goto out;
            default:
                SAVE();
                finding(719, CK_OTHER, t, in, "internal error: opcode not executable");
                abort = true;
                status = RUN_FAULT;
                goto out;
        }
        ++pc;
    }
out:
    t.pc = pc;
    instructions += executed;
    C.thread_instructions += executed;
    return status;
#undef SAVE
#undef RELOAD
}

}  // namespace softgpu
