// exec/executor.cpp: runs a grid. An ordinary launch keeps up to (occupancy x SMs) CTAs resident, made
// resident in launch order as earlier ones exit, as on hardware; a cooperative launch keeps every
// CTA resident. The scheduler gives each ready thread of every resident CTA a time slice in turn
// (deterministic order, or a seeded random order and slice length when config().seed != 0), so a
// block spinning on another resident block's flag makes progress. The seed permutes the
// interleaving, never which blocks are resident.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>

#include "exec/exec.hpp"

namespace softgpu {

namespace {

std::string triple(const uint32_t* v) {
    return "(" + std::to_string(v[0]) + "," + std::to_string(v[1]) + "," + std::to_string(v[2]) + ")";
}

const char* check_name(int check) {
    switch (check) {
        case CK_MEMCHECK: return "memcheck";
        case CK_RACECHECK: return "racecheck";
        case CK_INITCHECK: return "initcheck";
        default: return "error";
    }
}

constexpr int kMaxReportLines = 20;

}  // namespace

uint64_t Exec::next_random() {  // splitmix64
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::string Exec::where(const Thread& t) const {
    return "block " + triple(t.cta->idx) + " thread " + triple(t.tidx);
}

void Exec::finding(int code, int check, const Thread& t, const Instr& in, const std::string& what) {
    // memcheck outranks the others as the launch's result.
    if (code == 700 || result == 0) result = code;
    if (check != CK_OTHER && !reported.insert({check, in.line}).second) return;  // one per check and line
    if (report_lines >= kMaxReportLines) return;
    if (++report_lines == kMaxReportLines) {
        *report += "... (further findings omitted)\n";
        return;
    }
    *report += std::string(check_name(check)) + ": kernel " + kernel->info.name + ", PTX line " + std::to_string(in.line) +
               ", " + where(t) + ": " + what + "\n";
}

void Exec::push_frame(Thread& t, uint32_t fn_index) {
    const Function& f = module->functions[fn_index];
    t.fn = fn_index;
    t.pc = 0;
    size_t need = t.fp + f.frame_slots();
    if (t.regs.size() < need) t.regs.resize(need);
    uint64_t* R = t.regs.data() + t.fp;
    memcpy(R, t.spec, sizeof t.spec);
    R[S_ZERO] = 0;
    R[S_SINK] = 0;
    R[S_LOCAL_BASE] = t.lp;
    memset(R + kNumFixed, 0, f.nregs * sizeof(uint64_t));
    if (!f.consts.empty()) memcpy(R + kNumFixed + f.nregs, f.consts.data(), f.consts.size() * sizeof(uint64_t));
    size_t lneed = t.lp + ((f.local_bytes + 15) & ~15u);
    if (t.local.size() < lneed) t.local.resize(lneed);
}

void Exec::init_thread(Thread& t, Cta& cta, uint32_t tid) {
    const uint32_t* b = cfg.block;
    t.cta = &cta;
    t.tid = tid;
    t.tidx[0] = tid % b[0];
    t.tidx[1] = tid / b[0] % b[1];
    t.tidx[2] = tid / (b[0] * b[1]);
    t.lane = tid & 31;
    t.warp = tid >> 5;
    t.state = TS_READY;
    t.fp = t.lp = 0;
    t.stack.clear();
    uint64_t* s = t.spec;
    for (int d = 0; d < 3; ++d) {
        s[S_TID_X + d] = t.tidx[d];
        s[S_NTID_X + d] = b[d];
        s[S_CTAID_X + d] = cta.idx[d];
        s[S_NCTAID_X + d] = cfg.grid[d];
    }
    s[S_LANEID] = t.lane;
    s[S_WARPID] = t.warp;
    s[S_NWARPID] = block_warps;
    s[S_SMID] = 0;
    s[S_NSMID] = 1;
    s[S_GRIDID] = 1;
    s[S_DYN_SMEM] = cfg.dynamic_smem;
    s[S_TOTAL_SMEM] = smem_size;
    s[S_LANEMASK_EQ] = 1u << t.lane;
    s[S_LANEMASK_LT] = (1u << t.lane) - 1;
    s[S_LANEMASK_LE] = (1u << t.lane) | ((1u << t.lane) - 1);
    s[S_LANEMASK_GT] = ~uint32_t((1u << t.lane) | ((1u << t.lane) - 1));
    s[S_LANEMASK_GE] = ~uint32_t((1u << t.lane) - 1);
    s[S_ENVREG1] = grid_workspace >> 32;
    s[S_ENVREG2] = grid_workspace & 0xffffffffu;
    // Exactly this kernel's local memory (thread storage outlives launches; memcheck bounds local
    // accesses by its size). Uninitialised on hardware; zeroed so results never depend on stale data.
    t.local.assign(kernel->info.local_bytes, 0);
    push_frame(t, kernel->fn);
}

namespace {

void setup_cta(Exec& x, Cta& cta, uint64_t linear) {
    const uint32_t* g = x.cfg.grid;
    cta.idx[0] = uint32_t(linear % g[0]);
    cta.idx[1] = uint32_t(linear / g[0] % g[1]);
    cta.idx[2] = uint32_t(linear / (uint64_t(g[0]) * g[1]));
    if (cta.threads.size() != x.block_threads) cta.threads.resize(x.block_threads);
    cta.smem.assign(x.smem_size, 0);
    if (x.module->uses_reserved_smem) cta.reserved_smem.assign(kReservedSmemBytes, 0);
    else cta.reserved_smem.clear();
    if (x.conf.racecheck) {
        if (cta.shadow.size() != x.smem_size) cta.shadow.assign(x.smem_size, Shadow{});
    }
    cta.live = x.block_threads;
    for (auto& b : cta.bars) b = Cta::Barrier();
    cta.epoch = uint32_t(x.epoch_counter++);
    cta.warp_epoch.assign(x.block_warps, 0);
    cta.at_activemask.assign(x.block_warps, 0);
    for (uint32_t w = 0; w < x.block_warps; ++w) cta.warp_epoch[w] = uint32_t(x.epoch_counter++);
    for (uint32_t i = 0; i < x.block_threads; ++i) x.init_thread(cta.threads[i], cta, i);
}

std::string deadlock_report(Exec& x, const std::vector<Cta*>& ctas) {
    std::string r;
    int lines = 0;
    for (Cta* c : ctas) {
        std::map<std::pair<uint16_t, uint32_t>, uint32_t> waiting;  // (op, line) -> threads
        for (Thread& t : c->threads)
            if (t.state == TS_BARRIER || t.state == TS_COLLECTIVE) {
                const Instr& in = x.module->functions[t.fn].code[t.pc];
                waiting[{in.op, in.line}]++;
            }
        for (auto& w : waiting) {
            if (++lines > 10) return r + "...\n";
            r += "error: kernel " + x.kernel->info.name + ", PTX line " + std::to_string(w.first.second) + ", block " +
                 triple(c->idx) + ": deadlock: " + std::to_string(w.second) + " thread(s) wait at " + op_name(w.first.first) +
                 " that the other threads of the block never reach (" + std::to_string(c->live) + " not exited)\n";
        }
    }
    return r;
}

}  // namespace

// The resident blocks of a launch: up to `limit` CTAs at once, made resident in launch order as
// earlier ones exit; every round gives each ready thread of every resident CTA one time slice.
// CTA storage kept from launch to launch (the engine runs under the driver's lock), so the threads'
// register and local arrays are allocated once, not per launch; trimmed after a launch that needed
// more than kKeptThreads threads.
std::vector<std::unique_ptr<Cta>> g_slots;
constexpr size_t kKeptThreads = 1 << 16;

struct Scheduler {
    Exec& x;
    uint64_t nctas, next = 0, limit;
    Residency res;
    std::vector<std::unique_ptr<Cta>>& slots = g_slots;
    std::vector<Cta*> resident, free;
    std::vector<Thread*> order;
    bool random;
    bool yielded = false;  // some thread used up its slice (run_ordered's turn ends)
    uint32_t slice;

    Scheduler(Exec& e, uint64_t n, uint64_t lim, Residency r)
        : x(e), nctas(n), limit(lim), res(r), random(e.conf.seed != 0),
          slice(e.conf.time_slice ? e.conf.time_slice : 4096) {
        for (auto& c : slots) {
            c->shadow.clear();  // racecheck epochs restart with each launch: no stale shadow
            free.push_back(c.get());
        }
    }
    ~Scheduler() {
        size_t threads = 0, keep = 0;
        while (keep < slots.size() && (threads += slots[keep]->threads.size()) <= kKeptThreads) ++keep;
        slots.resize(keep);
    }

    // Retires exited CTAs and makes the next ones resident; true if the resident set changed.
    bool refill() {
        size_t kept = 0;
        for (Cta* c : resident) {
            if (c->live == 0) free.push_back(c);
            else resident[kept++] = c;
        }
        bool changed = kept != resident.size();
        resident.resize(kept);
        while (admit()) changed = true;
        if (changed) {
            order.clear();
            for (Cta* c : resident)
                for (Thread& t : c->threads) order.push_back(&t);
        }
        return changed;
    }

    std::string watchdog_report(const Thread& t) {
        std::string r = "error: kernel " + x.kernel->info.name + ": watchdog: the launch exceeded " +
                        std::to_string(x.conf.watchdog) + " thread-instructions (CYBN_SOFTGPU_WATCHDOG); last at PTX line " +
                        std::to_string(x.module->functions[t.fn].code[t.pc].line) + ", " + x.where(t) + "\n";
        r += "error: kernel " + x.kernel->info.name + ": " + std::to_string(resident.size()) + " resident block(s) still running:";
        int n = 0;
        for (Cta* c : resident) {
            if (++n > 8) { r += " ..."; break; }
            for (const Thread& o : c->threads)
                if (o.state != TS_EXITED) {
                    r += " " + triple(c->idx) + " at PTX line " + std::to_string(x.module->functions[o.fn].code[o.pc].line) + ";";
                    break;
                }
        }
        r += "\n";
        if (next < nctas) {
            const uint32_t* g = x.cfg.grid;
            uint32_t idx[3] = {uint32_t(next % g[0]), uint32_t(next / g[0] % g[1]), uint32_t(next / (uint64_t(g[0]) * g[1]))};
            r += "error: kernel " + x.kernel->info.name + ": " + std::to_string(nctas - next) + " block(s) from " + triple(idx) +
                 " on never became resident: at most " + std::to_string(limit) + " blocks are resident at once (" +
                 std::to_string(res.blocks_per_sm) + " per SM x " + std::to_string(res.sms) +
                 " SMs); a block that waits for a later block deadlocks\n";
        }
        return r;
    }

    // One time slice of a ready thread; false when the launch must stop.
    bool step(Thread& t) {
        uint32_t budget = random ? 1 + uint32_t(x.next_random() % slice) : slice;
        RunStatus s = x.run(t, budget);
        yielded = yielded || s == RUN_YIELD;
        if (x.abort) return false;
        switch (s) {
            case RUN_EXITED: x.on_exit(t); break;
            case RUN_BLOCKED: {
                const Instr& in = x.module->functions[t.fn].code[t.pc];
                if (in.op == OP_BAR || in.op == OP_BAR_ARRIVE || in.op == OP_BAR_RED) x.arrive_barrier(t);
                else if (in.op == OP_ACTIVEMASK) t.state = TS_ACTIVEMASK, t.cta->at_activemask[t.warp]++;
                else x.arrive_collective(t);
                break;
            }
            case RUN_FAULT: return false;
            case RUN_YIELD: break;
        }
        if (x.abort) return false;
        if (t.cta->at_activemask[t.warp]) x.settle_activemask(*t.cta, t.warp, s == RUN_YIELD);
        if (x.instructions > x.conf.watchdog) {
            *x.report += watchdog_report(t);
            x.result = 719;
            return false;
        }
        return true;
    }

    bool deadlock() {
        *x.report += deadlock_report(x, resident);
        x.result = 719;
        return false;
    }

    // Makes the next block resident (in launch order) if there is room.
    bool admit() {
        if (resident.size() >= limit || next >= nctas) return false;
        if (free.empty()) {
            slots.push_back(std::make_unique<Cta>());
            free.push_back(slots.back().get());
        }
        Cta* c = free.back();
        free.pop_back();
        setup_cta(x, *c, next);
        for (Thread& t : c->threads) t.spec[S_SMID] = uint32_t(next % res.sms);
        ++next;
        resident.push_back(c);
        return true;
    }

    // Deterministic schedule: rounds over the resident blocks in residency order, each block's
    // threads in order. A block that exits leaves at once and the next block becomes resident in
    // its place, and blocks are admitted as the round reaches them, so a grid of short blocks runs
    // one block at a time with its state hot in the host's cache, as residency allows.
    bool run_ordered() {
        while (true) {
            bool progress = false, admitted = false;
            for (size_t ci = 0;;) {
                if (ci == resident.size()) {
                    if (!admit()) break;
                    admitted = true;
                }
                // The block's turn: passes over its threads until one uses up a slice (a spin-wait,
                // a long loop) or none is ready; passes that only reach barriers cost little.
                Cta* c = resident[ci];
                for (bool ran = true; ran && c->live;) {
                    ran = yielded = false;
                    for (Thread& t : c->threads)
                        if (t.state == TS_READY) {
                            ran = progress = true;
                            if (!step(t)) return false;
                        }
                    if (yielded) break;
                }
                if (c->live == 0) {
                    free.push_back(c);
                    resident.erase(resident.begin() + ci);
                } else {
                    ++ci;
                }
            }
            if (resident.empty()) return true;
            if (!progress && !admitted) return deadlock();
        }
    }

    // Seeded schedule: each round shuffles every resident thread's turn and slice length.
    bool run_random() {
        refill();
        while (true) {
            bool progress = false;
            for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[x.next_random() % i]);
            for (Thread* tp : order)
                if (tp->state == TS_READY) {
                    progress = true;
                    if (!step(*tp)) return false;
                }
            bool changed = refill();
            if (resident.empty()) return true;
            if (!progress && !changed) return deadlock();
        }
    }

    bool run() { return random ? run_random() : run_ordered(); }
};

int launch(Kernel* k, const LaunchConfig& cfg, LaunchCounts* counts, std::string* report) {
    *counts = LaunchCounts();
    counts->launches = 1;
    counts->registers = k->info.num_regs;
    counts->static_smem = k->info.static_smem;
    counts->dynamic_smem = cfg.dynamic_smem;
    report->clear();
    Exec x(k, cfg, counts, report);
    x.rng = x.conf.seed;
    x.block_threads = cfg.block[0] * cfg.block[1] * cfg.block[2];
    x.block_warps = (x.block_threads + 31) / 32;
    x.smem_size = k->static_smem_end + cfg.dynamic_smem;
    uint64_t nctas = uint64_t(cfg.grid[0]) * cfg.grid[1] * cfg.grid[2];
    if (x.block_threads == 0 || nctas == 0) return 0;
    if (cfg.cooperative) {  // the workspace this_grid().sync() counts arrivals in
        if (!k->grid_workspace) {
            k->grid_workspace = alloc_module_global(16, 16);
            k->module->globals.push_back(GlobalVar{"(grid sync workspace of " + k->info.name + ")", k->grid_workspace, 16});
        }
        memset(reinterpret_cast<void*>(k->grid_workspace), 0, 16);
        x.grid_workspace = k->grid_workspace;
    }
    Residency res = residency(k->info, x.block_threads, cfg.dynamic_smem);
    uint64_t limit = cfg.cooperative ? nctas : uint64_t(res.blocks_per_sm) * res.sms;
    Scheduler sched(x, nctas, limit, res);
    bool ok = sched.run();
    if (!ok && x.result == 0) x.result = 719;
    return x.result;
}

}  // namespace softgpu
