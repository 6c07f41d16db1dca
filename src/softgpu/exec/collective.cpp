// exec/collective.cpp: CTA barriers (bar/barrier .sync/.arrive/.red) and warp collectives
// (shfl, vote, redux, match, bar.warp.sync). A thread that reaches one blocks with its pc on the
// instruction; the last participant to arrive completes it for everyone and advances their pcs.
#include <algorithm>
#include <cstring>

#include "exec/exec.hpp"

namespace softgpu {

static inline uint64_t* regs_of(Thread& t) { return t.regs.data() + t.fp; }
static inline const Instr& instr_of(Exec& x, const Thread& t) { return x.module->functions[t.fn].code[t.pc]; }

void Exec::release_barrier(Cta& cta, uint32_t id) {
    Cta::Barrier& b = cta.bars[id];
    for (Thread& t : cta.threads) {
        if (t.state != TS_BARRIER) continue;
        const Instr& in = instr_of(*this, t);
        if ((regs_of(t)[in.a] & 15) != id) continue;
        if (in.op == OP_BAR_RED) {
            uint64_t r = in.mod == 0 ? b.popc : in.mod == 1 ? b.all : b.any;
            regs_of(t)[in.d] = r;
            regs_of(t)[S_SINK] = 0;
        }
        t.state = TS_READY;
        ++t.pc;
    }
    b = Cta::Barrier();
    cta.epoch = uint32_t(epoch_counter++);  // racecheck: accesses before and after are ordered
}

// Threads a barrier waits for: the count operand if given, else every thread of the CTA that has
// not exited (exited threads count as arrived, as on hardware).
static uint32_t expected(const Exec& x, Thread& t, const Instr& in) {
    if (in.mod2) return uint32_t(regs_of(t)[in.b]);
    return t.cta->live;
    (void)x;
}

void Exec::arrive_barrier(Thread& t) {
    Cta& cta = *t.cta;
    const Instr& in = instr_of(*this, t);
    uint32_t id = uint32_t(regs_of(t)[in.a]);
    if (id >= 16) {
        finding(719, CK_OTHER, t, in, "barrier id " + std::to_string(id) + " out of range (0..15)");
        abort = true;
        return;
    }
    Cta::Barrier& b = cta.bars[id];
    uint32_t want = expected(*this, t, in);
    if (in.mod2 && (want == 0 || want % 32 || want > block_threads + 31)) {
        finding(719, CK_OTHER, t, in, "barrier thread count " + std::to_string(want) + " is not a positive multiple of 32");
        abort = true;
        return;
    }
    b.expected = want;
    b.arrived++;
    if (in.op == OP_BAR_RED) {
        bool p = (regs_of(t)[in.e] & 1) ^ ((in.flags & F_CNEG) != 0);
        b.popc += p;
        b.all = b.all && p;
        b.any = b.any || p;
    }
    if (in.op == OP_BAR_ARRIVE) {
        ++t.pc;
        t.state = TS_READY;
    } else {
        t.state = TS_BARRIER;
        b.waiting++;
    }
    // With a count, arrivals are counted per thread here (hardware counts whole warps).
    if (b.arrived >= b.expected) release_barrier(cta, id);
}

void Exec::on_exit(Thread& t) {
    Cta& cta = *t.cta;
    t.state = TS_EXITED;
    cta.live--;
    // A barrier without a count may now be complete.
    for (uint32_t id = 0; id < 16; ++id) {
        Cta::Barrier& b = cta.bars[id];
        if (b.waiting == 0) continue;
        bool counted = false;
        for (Thread& o : cta.threads)
            if (o.state == TS_BARRIER && (regs_of(o)[instr_of(*this, o).a] & 15) == id && !instr_of(*this, o).mod2)
                counted = true;
        if (counted && b.arrived >= cta.live) release_barrier(cta, id);
    }
    // Collectives waiting on this lane can never complete.
    uint32_t base = t.warp * 32;
    for (uint32_t l = 0; l < 32 && base + l < cta.threads.size(); ++l) {
        Thread& o = cta.threads[base + l];
        if (o.state != TS_COLLECTIVE) continue;
        const Instr& in = instr_of(*this, o);
        uint32_t mask = uint32_t(regs_of(o)[in.op == OP_BAR_WARP ? in.c : in.e]);
        if (mask >> t.lane & 1) {
            finding(719, CK_OTHER, o, in, "warp collective waits for lane " + std::to_string(t.lane) +
                                              " of its member mask, which has exited (deadlock)");
            abort = true;
            return;
        }
    }
}

void Exec::arrive_collective(Thread& t) {
    t.state = TS_COLLECTIVE;
    complete_collective(*t.cta, t);
}

// Completes the collective t waits at if every lane named by its member mask has arrived.
bool Exec::complete_collective(Cta& cta, Thread& t) {
    const Instr& in = instr_of(*this, t);
    uint32_t mask = uint32_t(regs_of(t)[in.op == OP_BAR_WARP ? in.c : in.e]);
    uint32_t base = t.warp * 32;
    if (!(mask >> t.lane & 1)) {
        finding(719, CK_OTHER, t, in, "the thread's own lane is not in the member mask " + std::to_string(mask));
        abort = true;
        return false;
    }
    Thread* members[32];
    uint32_t present = 0;  // lanes that exist and take part
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(mask >> l & 1) || base + l >= cta.threads.size()) continue;  // lanes past the block do not exist
        Thread& o = cta.threads[base + l];
        if (o.state == TS_EXITED) {
            finding(719, CK_OTHER, t, in, "warp collective names lane " + std::to_string(l) +
                                              " in its member mask, which has exited (deadlock)");
            abort = true;
            return false;
        }
        if (o.state != TS_COLLECTIVE) return false;  // still on its way
        if (instr_of(*this, o).op != in.op) {
            // Another kind of collective is fine while its member mask leaves this lane out (it
            // completes without us, then the lane comes on here); if it waits for this lane, neither can.
            const Instr& oi = instr_of(*this, o);
            if (!(uint32_t(regs_of(o)[oi.op == OP_BAR_WARP ? oi.c : oi.e]) >> t.lane & 1)) return false;
            finding(719, CK_OTHER, t, in, "lanes of one member mask wait at different kinds of warp collective (line " +
                                              std::to_string(instr_of(*this, o).line) + ")");
            abort = true;
            return false;
        }
        members[l] = &o;
        present |= 1u << l;
    }
    // Every member computes its result from the others' operands.
    uint64_t vals[32], res[32], pres[32];
    for (uint32_t l = 0; l < 32; ++l)
        if (present >> l & 1) {
            const Instr& mi = instr_of(*this, *members[l]);
            uint64_t v = regs_of(*members[l])[mi.a];
            if (in.op == OP_VOTE) v = (v & 1) ^ ((mi.flags & F_CNEG) != 0);
            vals[l] = v;
        }
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(present >> l & 1)) continue;
        Thread& m = *members[l];
        const Instr& mi = instr_of(*this, m);
        uint64_t* R = regs_of(m);
        res[l] = 0;
        pres[l] = 0;
        switch (mi.op) {
            case OP_SHFL: {
                uint32_t b = uint32_t(R[mi.b]) & 31, c = uint32_t(R[mi.c]);
                uint32_t seg = (c >> 8) & 31, clamp = c & 31;
                uint32_t maxl = (l & seg) | (clamp & ~seg), minl = l & seg;
                int32_t j;
                bool p;
                switch (mi.mod) {
                    case 0: j = int32_t(l) - int32_t(b); p = j >= int32_t(maxl); break;
                    case 1: j = int32_t(l + b); p = j <= int32_t(maxl); break;
                    case 2: j = int32_t(l ^ b); p = j <= int32_t(maxl); break;
                    default: j = int32_t(minl | (b & ~seg)); p = j <= int32_t(maxl); break;
                }
                if (!p) j = int32_t(l);
                res[l] = (present >> j & 1) ? vals[j] & 0xffffffffu : vals[l] & 0xffffffffu;
                pres[l] = p;
                break;
            }
            case OP_VOTE: {
                uint32_t ballot = 0;
                for (uint32_t k = 0; k < 32; ++k)
                    if ((present >> k & 1) && vals[k]) ballot |= 1u << k;
                switch (mi.mod) {
                    case 0: res[l] = ballot == present; break;
                    case 1: res[l] = ballot != 0; break;
                    case 2: res[l] = ballot == 0 || ballot == present; break;
                    default: res[l] = ballot; break;
                }
                break;
            }
            case OP_REDUX: {
                bool s = type_signed(Type(mi.ty));
                uint64_t acc = 0;
                bool first = true;
                for (uint32_t k = 0; k < 32; ++k) {
                    if (!(present >> k & 1)) continue;
                    uint32_t v = uint32_t(vals[k]);
                    if (first) { acc = v; first = false; continue; }
                    switch (mi.mod) {
                        case 0: acc = uint32_t(acc + v); break;
                        case 1: acc = s ? uint32_t(std::min(int32_t(acc), int32_t(v))) : std::min(uint32_t(acc), v); break;
                        case 2: acc = s ? uint32_t(std::max(int32_t(acc), int32_t(v))) : std::max(uint32_t(acc), v); break;
                        case 3: acc &= v; break;
                        case 4: acc |= v; break;
                        default: acc ^= v; break;
                    }
                }
                res[l] = acc;
                break;
            }
            case OP_MATCH: {
                uint32_t same = 0;
                for (uint32_t k = 0; k < 32; ++k)
                    if ((present >> k & 1) && (vals[k] & mi.mask) == (vals[l] & mi.mask)) same |= 1u << k;
                if (mi.mod == 0) res[l] = same;
                else { res[l] = same == present ? present : 0; pres[l] = same == present; }
                break;
            }
            default: break;  // bar.warp.sync: synchronisation only
        }
    }
    cta.warp_epoch[t.warp] = uint32_t(epoch_counter++);  // racecheck: members are now ordered
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(present >> l & 1)) continue;
        Thread& m = *members[l];
        const Instr& mi = instr_of(*this, m);
        uint64_t* R = regs_of(m);
        if (mi.op != OP_BAR_WARP) R[mi.d] = res[l];
        if (mi.op == OP_SHFL || mi.op == OP_MATCH) R[mi.d2] = pres[l];
        R[S_SINK] = 0;
        m.state = TS_READY;
        ++m.pc;
    }
    return true;
}


// activemask: the lanes of the warp that execute this activemask together. A lane that reaches
// one waits; the mask is settled once no lane of the warp is still running towards it (each has
// exited or blocked somewhere), or as soon as a lane of the warp uses up its time slice elsewhere
// (`diverged`: it is on another path now). Lanes waiting at the same instruction in the same call
// depth form one group and each gets the group's mask; lanes on the other side of a branch are 0.
void Exec::settle_activemask(Cta& cta, uint32_t warp, bool diverged) {
    uint32_t base = warp * 32, end = std::min<uint32_t>(base + 32, uint32_t(cta.threads.size()));
    if (!diverged)
        for (uint32_t i = base; i < end; ++i)
            if (cta.threads[i].state == TS_READY) return;
    uint32_t left = 0;
    for (uint32_t i = base; i < end; ++i) left |= uint32_t(cta.threads[i].state == TS_ACTIVEMASK) << (i - base);
    while (left) {
        Thread& lead = cta.threads[base + __builtin_ctz(left)];
        uint32_t group = 0;
        for (uint32_t m = left; m; m &= m - 1) {
            Thread& o = cta.threads[base + __builtin_ctz(m)];
            if (o.fn == lead.fn && o.pc == lead.pc && o.stack.size() == lead.stack.size()) group |= 1u << o.lane;
        }
        for (uint32_t m = group; m; m &= m - 1) {
            Thread& o = cta.threads[base + __builtin_ctz(m)];
            regs_of(o)[instr_of(*this, o).d] = group;
            o.state = TS_READY;
            ++o.pc;
        }
        left &= ~group;
    }
    cta.at_activemask[warp] = 0;
}

}  // namespace softgpu
