// executor.cpp: runs a grid. Ordinary launches run CTAs one after another, each to completion;
// cooperative launches keep every CTA resident and interleave them. Within a set of resident
// threads the scheduler gives each ready thread a time slice in turn (deterministic order, or a
// seeded random order and slice length when config().seed != 0), so spin-waits make progress.
#include <algorithm>
#include <cstring>
#include <map>

#include "engine_exec.hpp"

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

const char* op_name(uint16_t op) {
    switch (op) {
        case OP_BAR: return "bar.sync";
        case OP_BAR_RED: return "bar.red";
        case OP_BAR_WARP: return "bar.warp.sync";
        case OP_SHFL: return "shfl.sync";
        case OP_VOTE: return "vote.sync";
        case OP_REDUX: return "redux.sync";
        case OP_MATCH: return "match.sync";
        default: return "a collective";
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
    if (t.local.size() < kernel->info.local_bytes) t.local.resize(kernel->info.local_bytes);
    // Local memory is uninitialised on hardware; zero it so results never depend on stale data.
    std::fill(t.local.begin(), t.local.end(), 0);
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
    if (x.conf.racecheck) {
        if (cta.shadow.size() != x.smem_size) cta.shadow.assign(x.smem_size, Shadow{});
    }
    cta.live = x.block_threads;
    for (auto& b : cta.bars) b = Cta::Barrier();
    cta.epoch = uint32_t(x.epoch_counter++);
    cta.warp_epoch.assign(x.block_warps, 0);
    for (uint32_t w = 0; w < x.block_warps; ++w) cta.warp_epoch[w] = uint32_t(x.epoch_counter++);
    for (uint32_t i = 0; i < x.block_threads; ++i) x.init_thread(cta.threads[i], cta, i);
}

std::string deadlock_report(Exec& x, std::vector<Cta*>& ctas) {
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

// Runs the threads of the given resident CTAs until all exit; false on failure.
static bool run_resident(Exec& x, std::vector<Cta*>& ctas) {
    std::vector<Thread*> order;
    for (Cta* c : ctas)
        for (Thread& t : c->threads) order.push_back(&t);
    bool random = x.conf.seed != 0;
    uint32_t slice = x.conf.time_slice ? x.conf.time_slice : 4096;
    while (true) {
        bool progress = false, all_done = true;
        if (random)
            for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[x.next_random() % i]);
        for (Thread* tp : order) {
            Thread& t = *tp;
            if (t.state == TS_EXITED) continue;
            all_done = false;
            if (t.state != TS_READY) continue;
            progress = true;
            uint32_t budget = random ? 1 + uint32_t(x.next_random() % slice) : slice;
            RunStatus s = x.run(t, budget);
            if (x.abort) return false;
            switch (s) {
                case RUN_EXITED: x.on_exit(t); break;
                case RUN_BLOCKED: {
                    const Instr& in = x.module->functions[t.fn].code[t.pc];
                    if (in.op == OP_BAR || in.op == OP_BAR_ARRIVE || in.op == OP_BAR_RED) x.arrive_barrier(t);
                    else x.arrive_collective(t);
                    break;
                }
                case RUN_FAULT: return false;
                case RUN_YIELD: break;
            }
            if (x.abort) return false;
            if (x.instructions > x.conf.watchdog) {
                *x.report += "error: kernel " + x.kernel->info.name + ": watchdog: the launch exceeded " +
                             std::to_string(x.conf.watchdog) + " thread-instructions (CYBN_SOFTGPU_WATCHDOG); last at PTX line " +
                             std::to_string(x.module->functions[t.fn].code[t.pc].line) + ", " + x.where(t) + "\n";
                x.result = 719;
                return false;
            }
        }
        if (all_done) return true;
        if (!progress) {
            *x.report += deadlock_report(x, ctas);
            x.result = 719;
            return false;
        }
    }
}

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
    bool ok = true;
    if (cfg.cooperative) {
        std::vector<Cta> all(nctas);
        std::vector<Cta*> ctas;
        for (uint64_t i = 0; i < nctas; ++i) {
            setup_cta(x, all[i], i);
            ctas.push_back(&all[i]);
        }
        ok = run_resident(x, ctas);
    } else {
        std::vector<uint64_t> order;
        bool random = x.conf.seed != 0;
        if (random) {
            order.resize(nctas);
            for (uint64_t i = 0; i < nctas; ++i) order[i] = i;
            for (uint64_t i = nctas; i > 1; --i) std::swap(order[i - 1], order[x.next_random() % i]);
        }
        Cta cta;
        std::vector<Cta*> one{&cta};
        for (uint64_t i = 0; i < nctas && ok; ++i) {
            setup_cta(x, cta, random ? order[i] : i);
            ok = run_resident(x, one);
            if (x.abort) ok = false;
        }
    }
    if (!ok && x.result == 0) x.result = 719;
    return x.result;
}

}  // namespace softgpu
