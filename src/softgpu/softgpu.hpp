// softgpu.hpp: the one internal interface between the two halves of the software GPU.
//
//   driver side  (driver/*.cpp, runtime/memory.cpp, runtime/counters.cpp): the cu* entry points, contexts, streams,
//                events, allocations and their shadow state, counters, configuration.
//   engine side  (ptx/parser.cpp, ptx/program.hpp/decode.cpp, exec/executor.cpp): PTX text -> decoded program ->
//                execution of a grid.
//
// Device addresses ARE host addresses: every device or pinned allocation lives inside one large
// virtual region reserved by runtime/memory.cpp, so the executor dereferences an address after checking it
// and never translates. Addresses are never reused, so a use after free is always detectable.
//
// Everything here is called with the driver's global lock held: one operation executes at a time
// (in async mode on the stream worker thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace softgpu {

// ---------------------------------------------------------------- configuration
// Read from the environment at first use (runtime/config.cpp), changeable through the softgpu* C API.
//   CYBN_SOFTGPU_CHECKS   "all"/1/on/true (default) | "none"/0/off/false | comma list of memcheck,racecheck,initcheck
//   CYBN_SOFTGPU_SEED     0 (default): deterministic schedule; otherwise seeds a randomised order
//   CYBN_SOFTGPU_MEMORY   device memory size in bytes, suffixes K/M/G allowed (default 4G)
//   CYBN_SOFTGPU_WATCHDOG thread-instructions one launch may execute before it fails (default 2^31,
//                         about 10 s of interpreting: a deadlocked spin-wait is reported in seconds)
//   CYBN_SOFTGPU_PROFILE  the device modelled: small (default) | a100 | h100 | h200 | l4 | t4 | rtx4090
//                         (driver/profiles.cpp; read by the driver side, not part of Config)
//   CYBN_SOFTGPU_NVJITLINK libnvJitLink path for exact register counts (runtime/jitlink.cpp); unset or 0: estimate
//   CYBN_SOFTGPU_ASYNC    1: streams run on a worker thread, asynchronously to the host (runtime/stream_queue.cpp)
//   CYBN_SOFTGPU_ASYNC_SEED  non-zero (async mode): random choice among ready streams and random delays
//   CYBN_SOFTGPU_STICKY   1: a kernel fault makes every later call on its context return the error
struct Config {
    bool memcheck = true;
    bool racecheck = true;
    bool initcheck = true;
    bool streamcheck = false;  // cross-stream ordering of global memory (on by default in async mode)
    bool async = false;
    bool sticky = false;
    uint64_t async_seed = 0;
    uint64_t seed = 0;
    uint32_t time_slice = 4096;  // instructions a thread runs before it yields to the others
    uint64_t watchdog = 1ull << 31;
    uint64_t memory_bytes = 4ull << 30;
};
Config& config();

// ---------------------------------------------------------------- counters (runtime/counters.cpp)
struct KernelCounters {
    uint64_t launches = 0;
    uint64_t thread_instructions = 0;
    uint64_t global_load_bytes = 0;
    uint64_t global_store_bytes = 0;
    uint64_t atomics = 0;
    uint64_t shared_bytes = 0;
    int registers = 0;          // per thread, as ptxas allocates them (CU_FUNC_ATTRIBUTE_NUM_REGS)
    uint32_t static_smem = 0;   // bytes
    uint32_t dynamic_smem = 0;  // bytes, of the last launch
};
struct LaunchRecord {
    std::string kernel;
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t dynamic_smem;
    KernelCounters counts;  // of this launch alone
};
struct Counters {
    KernelCounters total;
    std::map<std::string, KernelCounters> per_kernel;
    std::vector<LaunchRecord> launches;  // most recent launches (bounded by the driver)
};
Counters& counters();

// The executor accumulates into one of these during a launch; the driver folds it into Counters.
// (Plain integers: the hot loop increments them without indirection.)
using LaunchCounts = KernelCounters;

// ---------------------------------------------------------------- memory (runtime/memory.cpp)
enum class AllocKind : uint8_t { Device, Pinned, ModuleGlobal };

struct Allocation {
    uint64_t base = 0;
    uint64_t size = 0;
    AllocKind kind = AllocKind::Device;
    uint64_t serial = 0;      // 1, 2, 3 ... in order of allocation, for reports
    uint8_t* init = nullptr;  // initcheck shadow: one bit per byte, bit set = written; null = not tracked
};

// The live allocation containing addr, or null. Fast path for the executor: callers cache the
// result and re-use it while addresses stay inside [base, base + size).
const Allocation* find_allocation(uint64_t addr);
// Human-readable account of an address that is not valid: "0x.. is 4 bytes past the end of
// allocation #3 (1024 bytes at 0x..)", "0x.. lies in allocation #2, freed", "no allocation".
std::string describe_address(uint64_t addr);
// initcheck shadow: mark bytes written; test that bytes were written (first_bad gets the first
// unwritten address when it returns false). No-ops / true when a.init is null.
void mark_initialized(const Allocation& a, uint64_t addr, uint64_t size);
bool is_initialized(const Allocation& a, uint64_t addr, uint64_t size, uint64_t* first_bad);
// Storage for module-scope .global/.const variables: zero-filled and counted as initialised.
// Not counted as user allocations (leak counts ignore them).
uint64_t alloc_module_global(uint64_t size, uint64_t align);
void free_module_global(uint64_t addr);

// ---------------------------------------------------------------- modules and launches (engine side)
struct ParamInfo {
    uint32_t offset;  // in the packed parameter buffer, honouring each parameter's alignment
    uint32_t size;
    uint32_t align;
};
struct KernelInfo {
    std::string name;
    std::vector<ParamInfo> params;
    uint32_t param_bytes = 0;     // size of the packed parameter buffer
    int num_regs = 0;             // as in KernelCounters::registers
    uint32_t static_smem = 0;     // bytes of .shared declared in the kernel and functions it calls
    uint32_t local_bytes = 0;     // bytes of .local per thread
    uint32_t max_threads = 1024;  // .maxntid product if declared, else 1024
    uint32_t reqntid[3] = {0, 0, 0};  // .reqntid if declared
    uint32_t max_dynamic_smem = 48 * 1024;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (driver sets it)
    int alloc_regs = 0;        // registers per thread ptxas allocates: exact (nvJitLink) or estimated
    int estimated_regs = 0;    // the liveness estimate, always computed (exec/registers.cpp)
    int spill_bytes = 0;       // spill stores + loads per thread that ptxas reports (exact counts only)
    bool regs_exact = false;   // alloc_regs came from nvJitLink
};

class Module;  // defined by the engine
class Kernel;  // defined by the engine

// Parses and decodes PTX once. Returns null and fills *error ("line 12: unknown instruction
// 'foo.bar' in kernel k") when the text is not PTX or uses something the engine does not implement.
std::unique_ptr<Module> load_module(const char* ptx, size_t len, std::string* error);
void destroy_module(Module* m);  // frees its module globals; the unique_ptr deleter calls this
Kernel* find_kernel(Module* m, const char* name);
KernelInfo& kernel_info(Kernel* k);
// A module-scope .global or .const variable: its device address and size.
bool find_global(Module* m, const char* name, uint64_t* addr, uint64_t* size);

// streamcheck: the global bytes one launch touched, as one read and one write interval per
// allocation (coarse: bytes between two touched ones count as touched).
struct AccessSpan {
    uint64_t serial, base;
    uint64_t rlo = ~0ull, rhi = 0, wlo = ~0ull, whi = 0;
};
struct AccessLog {
    std::vector<AccessSpan> spans;
    size_t last = 0;
    void note(const Allocation& al, uint64_t a, uint64_t n, bool read, bool write) {
        if (last >= spans.size() || spans[last].serial != al.serial) {
            for (last = 0; last < spans.size() && spans[last].serial != al.serial; ++last) {}
            if (last == spans.size()) spans.push_back(AccessSpan{al.serial, al.base});
        }
        AccessSpan& s = spans[last];
        if (read) s.rlo = a < s.rlo ? a : s.rlo, s.rhi = a + n > s.rhi ? a + n : s.rhi;
        if (write) s.wlo = a < s.wlo ? a : s.wlo, s.whi = a + n > s.whi ? a + n : s.whi;
    }
};

struct LaunchConfig {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t dynamic_smem;
    bool cooperative;            // all CTAs co-resident and interleaved
    const uint8_t* params;       // packed parameter buffer of kernel_info(k).param_bytes bytes
    AccessLog* access = nullptr; // streamcheck: global accesses are noted here when set
};

// How many blocks of a launch are resident at once: blocks per SM by the driver's occupancy
// calculation (driver/launch.cpp; at least 1) and the SM count. An ordinary launch keeps
// blocks_per_sm x sms blocks resident (exec/executor.cpp), a cooperative one all of them.
struct Residency { uint32_t blocks_per_sm = 1, sms = 1; };
Residency residency(const KernelInfo& info, uint32_t threads, uint64_t dynamic_smem);

// Device-side runtime (exec/builtins.cpp): the malloc heap and printf FIFO sizes of the current
// context (driver/limits.cpp), and the FIFO's flush, which every synchronize calls, as the driver
// writes device printf output to stdout at synchronisation points.
struct DeviceLimits { uint64_t malloc_heap = 8 << 20, printf_fifo = 1 << 20; };
DeviceLimits device_limits();
void flush_device_printf();

// Runs the whole grid to completion (the driver has already validated the launch limits).
// Returns 0 (CUDA_SUCCESS) or a CUresult: CUDA_ERROR_ILLEGAL_ADDRESS (700) for memcheck findings,
// CUDA_ERROR_LAUNCH_FAILED (719) for racecheck/initcheck findings, deadlocks, the watchdog, or a
// construct met at run time that the engine does not implement. On failure *report holds every
// finding, one per line, each naming the kernel, the PTX line, block and thread index and address.
// *counts receives this launch's counters whether or not it failed.
int launch(Kernel* k, const LaunchConfig& cfg, LaunchCounts* counts, std::string* report);

}  // namespace softgpu

// std::unique_ptr<Module> is destroyed in driver files where Module is incomplete: its deleter
// calls destroy_module (which frees the module's globals and deletes it).
template <>
struct std::default_delete<softgpu::Module> {
    void operator()(softgpu::Module* m) const { softgpu::destroy_module(m); }
};
