// exec/exec.hpp: run-time state of a launch (threads, CTAs, checks) shared by the scheduler
// (exec/executor.cpp), the interpreter loop (exec/interp.cpp) and the collectives (exec/collective.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "ptx/program.hpp"

namespace softgpu {

// TS_ACTIVEMASK: at activemask, waiting until the rest of its warp has gone its own way (see
// Exec::settle_activemask).
enum ThreadState : uint8_t { TS_READY, TS_BARRIER, TS_COLLECTIVE, TS_ACTIVEMASK, TS_EXITED };

struct CallFrame { uint32_t fn, ret_pc, fp, lp, call; };

struct Cta;

struct Thread {
    uint32_t pc = 0, fn = 0, fp = 0, lp = 0;
    uint8_t state = TS_READY;
    uint32_t tid = 0, lane = 0, warp = 0;  // linear index in the CTA, lane, warp in the CTA
    uint32_t tidx[3] = {0, 0, 0};
    Cta* cta = nullptr;
    uint64_t spec[kNumFixed] = {};
    std::vector<uint64_t> regs;
    std::vector<uint8_t> local;
    std::vector<CallFrame> stack;
};

// racecheck shadow of one shared-memory byte: the last writer and the last reader(s).
struct Shadow {
    uint32_t w_tid, w_epoch, w_wepoch, w_line;  // w_tid = tid + 1, 0 = none; w_line bit 31: atomic
    uint32_t r_tid, r_epoch, r_wepoch, r_line;  // r_tid = kManyReaders when several threads read
};
constexpr uint32_t kManyReaders = 0xffffffffu;

struct Cta {
    uint32_t idx[3] = {0, 0, 0};
    std::vector<Thread> threads;
    std::vector<uint8_t> smem;
    std::vector<uint8_t> reserved_smem;  // kReservedSmemBytes when the module uses it
    std::vector<Shadow> shadow;
    uint32_t live = 0;  // threads not exited
    struct Barrier { uint32_t arrived = 0, waiting = 0, expected = 0; uint32_t popc = 0; bool all = true, any = false; };
    Barrier bars[16];
    uint32_t epoch = 0;                 // racecheck barrier epoch (unique over the launch)
    std::vector<uint32_t> warp_epoch;   // racecheck warp-synchronisation epoch per warp
    std::vector<uint8_t> at_activemask; // per warp: lanes waiting at activemask
};

enum RunStatus { RUN_YIELD, RUN_BLOCKED, RUN_EXITED, RUN_FAULT };

struct Exec {
    Kernel* kernel;
    Module* module;
    const LaunchConfig& cfg;
    LaunchCounts* counts;
    std::string* report;
    Config conf;
    int result = 0;
    int report_lines = 0;
    bool abort = false;
    uint64_t instructions = 0;  // thread-instructions so far (watchdog)
    uint64_t epoch_counter = 1;
    uint32_t block_threads = 0, block_warps = 0;
    uint32_t smem_size = 0;
    uint64_t rng = 0;
    uint64_t grid_workspace = 0;  // %envreg1:2
    std::set<std::pair<int, uint32_t>> reported;  // (check, line): one finding per check and line
    // Allocation cache of the global load/store path.
    uint64_t cache_base = 1, cache_size = 0;
    const Allocation* cache_alloc = nullptr;

    Exec(Kernel* k, const LaunchConfig& c, LaunchCounts* n, std::string* r)
        : kernel(k), module(k->module), cfg(c), counts(n), report(r), conf(config()) {}

    void init_thread(Thread& t, Cta& cta, uint32_t tid);
    void push_frame(Thread& t, uint32_t fn);
    RunStatus run(Thread& t, uint32_t budget);
    // Collectives and barriers (exec/collective.cpp).
    void arrive_barrier(Thread& t);
    void arrive_collective(Thread& t);
    void on_exit(Thread& t);
    void release_barrier(Cta& cta, uint32_t id);
    bool complete_collective(Cta& cta, Thread& t);
    void settle_activemask(Cta& cta, uint32_t warp, bool diverged);
    // vprintf, malloc, free, __assertfail (exec/builtins.cpp); false when the launch must stop.
    bool call_builtin(Thread& t, const Instr& in, const CallSite& cs);
    int mbarrier(Thread& t, const Instr& in, uint64_t* R);  // exec/mbarrier.cpp
    // Findings (exec/executor.cpp).
    void finding(int code, int check, const Thread& t, const Instr& in, const std::string& what);
    std::string where(const Thread& t) const;
    uint64_t next_random();
};

// Memory access resolution with the checks (exec/access.cpp): a host pointer, or null after a finding.
enum Access { AC_LOAD, AC_STORE, AC_ATOMIC };
uint8_t* resolve(Exec& x, Thread& t, const Instr& in, int sp, uint64_t a, uint32_t size, int kind, int* real_space);

uint32_t simd_instr(const Instr& in, uint32_t a, uint32_t b, uint32_t c);  // exec/video.cpp

enum Check { CK_MEMCHECK, CK_RACECHECK, CK_INITCHECK, CK_OTHER };

}  // namespace softgpu
