// ptx/program.hpp: the decoded form of a PTX module, shared by the decoder and the executor.
//
// Every function becomes a flat array of fixed-size Instr. Operands are slot indices into the
// current frame's uint64_t array, laid out as
//     [0 .. kNumFixed)                  fixed slots: zero, the `_` sink, frame local base, special registers
//     [kNumFixed .. + nregs)            the function's declared registers
//     [.. + consts.size())              immediates and symbol addresses (copied in when a frame starts)
// so the executor reads every source operand the same way, `R[in.a]`, with no immediate/register test.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ptx/types.hpp"
#include "softgpu.hpp"

namespace softgpu {

// Fixed slots of every frame.
enum Slot : uint32_t {
    S_ZERO = 0,
    S_SINK,
    S_LOCAL_BASE,  // local-space address of this frame's local variables
    S_TID_X, S_TID_Y, S_TID_Z,
    S_NTID_X, S_NTID_Y, S_NTID_Z,
    S_CTAID_X, S_CTAID_Y, S_CTAID_Z,
    S_NCTAID_X, S_NCTAID_Y, S_NCTAID_Z,
    S_LANEID, S_WARPID, S_NWARPID, S_SMID, S_NSMID, S_GRIDID,
    S_DYN_SMEM, S_TOTAL_SMEM,
    S_LANEMASK_EQ, S_LANEMASK_LE, S_LANEMASK_LT, S_LANEMASK_GE, S_LANEMASK_GT,
    S_ENVREG1, S_ENVREG2,  // high and low halves of the grid-sync workspace address (cooperative launches; else 0)
    kNumFixed
};

// Generic-address windows of the shared and local spaces (outside any user-space host address).
constexpr uint64_t kSharedWindow = 0xFFFF000000000000ull;
constexpr uint64_t kLocalWindow = 0xFFFE000000000000ull;
constexpr uint64_t kParamWindow = 0xFFFD000000000000ull;  // kernel parameters (cvta.param)
constexpr uint64_t kWindowSize = 1ull << 32;
// The reserved shared memory of every CTA (%reserved_smem_offset_*: cooperative_groups' multi-warp
// tile scratch) lies at this fixed offset of the shared window, apart from the kernel's own shared
// memory so memcheck still bounds that exactly.
constexpr uint32_t kReservedSmemOffset = 0x80000000u;
constexpr uint32_t kReservedSmemBytes = 1024;

enum Space : uint8_t { SP_GENERIC, SP_GLOBAL, SP_SHARED, SP_LOCAL, SP_KPARAM, SP_CONST };

// Rounding modes (cvt and float arithmetic). RN is the default.
enum Round : uint8_t { R_NONE, R_RN, R_RZ, R_RM, R_RP, R_RNI, R_RZI, R_RMI, R_RPI, R_RNA };

// Comparison operators of setp/set.
enum Cmp : uint8_t {
    C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE, C_LO, C_LS, C_HI, C_HS,
    C_EQU, C_NEU, C_LTU, C_LEU, C_GTU, C_GEU, C_NUM, C_NAN
};
// Boolean combination with the optional predicate operand of setp/set.
enum BoolOp : uint8_t { B_NONE, B_AND, B_OR, B_XOR };

// Atomic / reduction operations.
enum AtomOp : uint8_t { A_ADD, A_MIN, A_MAX, A_EXCH, A_CAS, A_INC, A_DEC, A_AND, A_OR, A_XOR };

enum Flag : uint8_t { F_FTZ = 1, F_SAT = 2, F_PNEG = 4, F_NAN = 8, F_RELU = 16, F_CNEG = 32, F_HI = 64 };

// The executable operations, from ptx/opcodes.def.
enum Op : uint16_t {
#define SG_OP(name, text, where) OP_##name,
#include "ptx/opcodes.def"
    OP_COUNT
};
inline const char* op_name(uint16_t op) {
    static constexpr const char* names[] = {
#define SG_OP(name, text, where) text,
#include "ptx/opcodes.def"
    };
    return op < OP_COUNT ? names[op] : "an unknown operation";
}

// Float operations for OP_FLOAT (in.mod).
enum FloatOp : uint8_t {
    FO_ADD, FO_SUB, FO_MUL, FO_FMA, FO_DIV, FO_MIN, FO_MAX, FO_NEG, FO_ABS, FO_RCP, FO_SQRT, FO_RSQRT,
    FO_EX2, FO_LG2, FO_SIN, FO_COS, FO_TANH, FO_COPYSIGN
};

// SIMD operations for OP_SIMD (in.mod). vop2/vop4 and vset use in.nvec lanes, in.ty/ty2/space
// as d/a/b types, in.size as the destination lane mask, in.pad = 1 for the .add accumulate.
enum SimdOp : uint8_t {
    SV_ADD, SV_SUB, SV_AVRG, SV_ABSDIFF, SV_MIN, SV_MAX, SV_SET, SV_DP4A, SV_DP2A_LO, SV_DP2A_HI,
    SV_BMSK_CLAMP, SV_BMSK_WRAP
};

struct Instr {
    uint16_t op = OP_NOP;
    uint8_t ty = T_NONE;   // operation type
    uint8_t ty2 = T_NONE;  // second type: cvt source, setp/set compare type, atom element
    uint8_t mod = 0;       // Cmp / Round / FloatOp / AtomOp / shfl mode / vote mode ... by opcode
    uint8_t mod2 = 0;      // BoolOp, rounding of float ops, ...
    uint8_t flags = 0;     // Flag bits
    uint8_t space = SP_GENERIC;
    uint8_t nvec = 1;      // vector length of ld/st, element count of pack/unpack
    uint8_t size = 0;      // bytes per element of memory accesses
    uint8_t sh = 0;        // 64 - integer width (sign extension shift)
    uint8_t pad = 0;
    uint32_t pred = 0;     // guard predicate slot (0 = none; F_PNEG negates)
    uint32_t d = S_SINK, d2 = S_SINK;  // destinations (d2: setp's second, shfl/match predicate)
    uint32_t a = S_ZERO, b = S_ZERO, c = S_ZERO, e = S_ZERO;  // sources
    uint32_t v[4] = {S_SINK, S_SINK, S_SINK, S_SINK};           // vector elements of ld/st/mov
    uint64_t mask = ~0ull; // integer width mask
    int64_t imm = 0;       // address offset, branch target, side-table index
    uint32_t line = 0;     // PTX source line
};

struct CallArg { uint32_t caller_off, callee_off, size; };
// mbarrier operations for OP_MBARRIER (in.mod); in.flags F_HI marks .parity waits.
enum MbarOp : uint8_t {
    MB_INIT, MB_INVAL, MB_ARRIVE, MB_ARRIVE_NOCOMPLETE, MB_ARRIVE_DROP, MB_ARRIVE_EXPECT_TX, MB_EXPECT_TX,
    MB_COMPLETE_TX, MB_TEST_WAIT, MB_TRY_WAIT, MB_PENDING_COUNT
};

// Undefined functions the engine implements itself (exec/builtins.cpp).
enum Builtin : uint8_t { BI_NONE, BI_VPRINTF, BI_MALLOC, BI_FREE, BI_ASSERTFAIL };
struct CallSite {
    uint32_t callee;                 // function index
    uint8_t builtin = BI_NONE;       // when the callee is one of the engine's builtins
    std::vector<CallArg> args;       // copied caller -> callee at the call
    std::vector<CallArg> rets;       // copied callee -> caller at ret
};

struct Function {
    std::string name;
    bool entry = false;
    bool defined = false;
    std::vector<Instr> code;
    uint32_t nregs = 0;                 // register slots
    uint32_t reg_units = 0;             // 32-bit units declared (KernelInfo::num_regs)
    std::vector<uint8_t> reg_bits;      // per register slot: 1 (predicate), 16, 32, 64 or 128 bits
    std::vector<uint64_t> consts;       // slots [kNumFixed + nregs, ...)
    uint32_t local_bytes = 0;           // this frame's .local variables and .param scratch
    uint32_t local_align = 8;
    uint32_t shared_bytes_end = 0;      // end of shared window used by kernel-scope .shared
    std::vector<uint32_t> param_off, param_size;  // .func parameters (in the local frame)
    std::vector<uint32_t> ret_off, ret_size;      // .func return values (in the local frame)
    uint32_t frame_slots() const { return kNumFixed + nregs + uint32_t(consts.size()); }
};

struct GlobalVar {
    std::string name;
    uint64_t addr = 0, size = 0;
};

}  // namespace softgpu

// The engine's Module and Kernel, defined in the softgpu namespace as softgpu.hpp declares.
namespace softgpu {

class Module {
public:
    std::vector<Function> functions;
    std::vector<CallSite> calls;
    std::vector<std::vector<uint32_t>> branch_tables;  // brx.idx targets (code indices)
    std::vector<GlobalVar> globals;                     // .global/.const, owned here
    std::vector<Kernel*> kernels;
    uint32_t module_shared_bytes = 0;                   // module-scope .shared, start of the window
    uint32_t dyn_shared_align = 16;
    bool uses_reserved_smem = false;                    // some function reads %reserved_smem_offset_*
    ~Module();
};

class Kernel {
public:
    Module* module = nullptr;
    uint32_t fn = 0;       // index of the entry in module->functions
    uint32_t static_smem_end = 0;  // shared window offset where dynamic shared memory starts
    uint64_t grid_workspace = 0;   // %envreg1:2 of its cooperative launches (a module global, zeroed per launch)
    KernelInfo info;
};

}  // namespace softgpu
