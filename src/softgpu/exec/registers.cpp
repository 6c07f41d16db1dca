// exec/registers.cpp: registers per thread as the hardware would allocate them.
//
// Exact when nvJitLink is configured (runtime/jitlink.cpp: ptxas' own count for the profile's
// architecture). Otherwise estimated from a liveness analysis of the decoded program: the most
// values live at once over any instruction (32-bit units: 64-bit values count 2, 128-bit 4;
// predicates live in their own 7-entry file and do not count; a value loaded from a kernel
// parameter and never rewritten costs nothing, as ptxas reads it from the constant bank), plus a
// fixed overhead for what ptxas always keeps, and the temporaries of the operations ptxas expands
// into instruction sequences (division, IEEE reciprocal and square root); constants fitted to
// minimise the corpus' error. PTX declares a fresh virtual
// register for nearly every value, so the declared count (KernelInfo::num_regs) is far too high;
// the live count is what ptxas' allocator has to fit. The measured error of the estimate against
// ptxas is stated in tests/softgpu/test_registers.py and the README.
#include <algorithm>

#include "driver/driver.hpp"
#include "runtime/jitlink.hpp"
#include "ptx/program.hpp"

namespace softgpu {
namespace {

constexpr int kOverhead = 2;  // what ptxas keeps besides the values (fitted: see the file comment)

using Bits = std::vector<uint64_t>;

struct Access {
    std::vector<uint32_t> uses, defs;
};

// The register slots an instruction reads and writes (slot numbers rebased to 0..nregs).
Access accesses(const Instr& in, uint32_t nregs) {
    Access a;
    auto reg = [&](uint32_t s, std::vector<uint32_t>* out) {
        if (s >= kNumFixed && s < kNumFixed + nregs) out->push_back(s - kNumFixed);
    };
    reg(in.pred, &a.uses);
    reg(in.a, &a.uses), reg(in.b, &a.uses), reg(in.c, &a.uses), reg(in.e, &a.uses);
    reg(in.d, &a.defs), reg(in.d2, &a.defs);
    bool vec_defs = in.op == OP_LD || in.op == OP_UNPACK;
    for (uint32_t v : in.v) reg(v, vec_defs ? &a.defs : &a.uses);
    return a;
}

std::vector<uint32_t> successors(const Module& m, const Function& fn, size_t i) {
    const Instr& in = fn.code[i];
    std::vector<uint32_t> out;
    bool guarded = in.pred != 0;
    switch (in.op) {
        case OP_BRA:
            out.push_back(uint32_t(in.imm));
            if (guarded) out.push_back(uint32_t(i + 1));
            break;
        case OP_BRX:
            if (size_t(in.imm) < m.branch_tables.size()) out = m.branch_tables[size_t(in.imm)];
            break;
        case OP_RET: case OP_EXIT: case OP_TRAP:
            if (guarded) out.push_back(uint32_t(i + 1));
            break;
        default: out.push_back(uint32_t(i + 1));
    }
    out.erase(std::remove_if(out.begin(), out.end(), [&](uint32_t s) { return s >= fn.code.size(); }), out.end());
    return out;
}

int units(uint8_t bits) { return bits <= 1 ? 0 : (bits + 31) / 32; }

// Temporaries of the instruction sequences ptxas expands some PTX operations into (integer
// division and remainder, IEEE float division, reciprocal and square root): live only there.
int expansion(const Instr& in) {
    constexpr int div32 = 4, div64 = 12, f32 = 8, f64 = 8;  // fitted on the corpus (test_registers.py)
    if (in.op == OP_DIV || in.op == OP_REM) return in.mask == ~0ull ? div64 : div32;
    if (in.op != OP_FLOAT) return 0;
    if (in.mod != FO_DIV && in.mod != FO_RCP && in.mod != FO_SQRT && in.mod != FO_RSQRT) return 0;
    if (in.ty == T_F64) return f64;
    return in.ty == T_F32 && in.mod2 != R_NONE ? f32 : 0;
}

// The largest number of 32-bit register units live at once in one function.
int max_pressure(const Module& m, const Function& fn) {
    size_t n = fn.code.size();
    uint32_t nregs = fn.nregs;
    size_t words = (nregs + 63) / 64;
    if (n == 0 || nregs == 0 || fn.reg_bits.size() != nregs) return 0;
    std::vector<Access> acc(n);
    std::vector<std::vector<uint32_t>> succ(n);
    for (size_t i = 0; i < n; ++i) acc[i] = accesses(fn.code[i], nregs), succ[i] = successors(m, fn, i);
    std::vector<Bits> live_in(n, Bits(words, 0));
    Bits out(words);
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t i = n; i-- > 0;) {
            std::fill(out.begin(), out.end(), 0);
            for (uint32_t s : succ[i])
                for (size_t w = 0; w < words; ++w) out[w] |= live_in[s][w];
            if (fn.code[i].pred == 0)  // a guarded write may not happen: it kills nothing
                for (uint32_t d : acc[i].defs) out[d / 64] &= ~(1ull << (d % 64));
            for (uint32_t u : acc[i].uses) out[u / 64] |= 1ull << (u % 64);
            if (out != live_in[i]) live_in[i] = out, changed = true;
        }
    }
    // Kernel parameters stay in the constant bank (ptxas reads them as operands): a register loaded
    // from one and never written otherwise costs nothing while it waits.
    std::vector<uint8_t> weight(nregs);
    for (uint32_t r = 0; r < nregs; ++r) weight[r] = uint8_t(units(fn.reg_bits[r]));
    std::vector<uint8_t> param_only(nregs, 2);  // 2: no definition seen yet
    for (size_t i = 0; i < n; ++i)
        for (uint32_t d : acc[i].defs) {
            bool from_param = fn.code[i].op == OP_LD && fn.code[i].space == SP_KPARAM;
            param_only[d] = (param_only[d] != 0 && from_param) ? 1 : 0;
        }
    for (uint32_t r = 0; r < nregs; ++r)
        if (param_only[r] == 1) weight[r] = 0;
    // Pressure at an instruction: what is live into it plus what it writes.
    int best = 0;
    for (size_t i = 0; i < n; ++i) {
        Bits here = live_in[i];
        for (uint32_t d : acc[i].defs) here[d / 64] |= 1ull << (d % 64);
        int p = expansion(fn.code[i]);
        for (size_t w = 0; w < words; ++w)
            for (uint64_t x = here[w]; x; x &= x - 1) p += weight[w * 64 + size_t(__builtin_ctzll(x))];
        best = std::max(best, p);
    }
    return best;
}

// A kernel's estimate: its own pressure or that of any function it calls, whichever is larger.
int estimate(const Module& m, uint32_t entry) {
    std::vector<bool> seen(m.functions.size(), false);
    std::vector<uint32_t> todo = {entry};
    int best = 0;
    while (!todo.empty()) {
        uint32_t f = todo.back();
        todo.pop_back();
        if (f >= seen.size() || seen[f]) continue;
        seen[f] = true;
        const Function& fn = m.functions[f];
        best = std::max(best, max_pressure(m, fn));
        for (const Instr& in : fn.code)
            if (in.op == OP_CALL && size_t(in.imm) < m.calls.size()) todo.push_back(m.calls[size_t(in.imm)].callee);
    }
    return std::min(best + kOverhead, 255);
}

}  // namespace

void assign_registers(Module* m, const char* ptx, size_t len) {
    const DeviceProfile& p = device_profile();
    std::map<std::string, JitCounts> exact;
    std::string why;
    bool have_exact = exact_registers(ptx, len, p.cc_major * 10 + p.cc_minor, &exact, &why);
    for (Kernel* k : m->kernels) {
        KernelInfo& info = k->info;
        info.estimated_regs = estimate(*m, k->fn);
        auto it = exact.find(info.name);
        info.regs_exact = have_exact && it != exact.end();
        info.alloc_regs = info.regs_exact ? it->second.registers : info.estimated_regs;
        info.spill_bytes = info.regs_exact ? it->second.spill_bytes : 0;
    }
}

uint32_t kernel_registers(const KernelInfo& info) {
    return uint32_t(std::min(std::max(info.alloc_regs, 0), int(device_profile().max_registers_per_thread)));
}

}  // namespace softgpu
