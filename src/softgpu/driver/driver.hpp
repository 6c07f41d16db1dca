// driver/driver.hpp: internal helpers shared by the driver-side files (driver/*.cpp, runtime/memory.cpp,
// runtime/counters.cpp). Not part of the engine interface (that is softgpu.hpp).
#pragma once

// Driver-implementation mode of cuda.h: no cuX -> cuX_vN macros, every versioned and legacy
// prototype declared, so each entry point is defined under its real exported name. The
// prototypes get default visibility, so defining one exports it despite -fvisibility=hidden.
#define __CUDA_API_VERSION_INTERNAL
#pragma GCC visibility push(default)
#include <cuda.h>
#pragma GCC visibility pop

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "softgpu.hpp"

// Our own C API (softgpu*) and the few entry points cuda.h does not declare.
#define SG_EXPORT extern "C" __attribute__((visibility("default")))

// Handle types: cuda.h leaves these structs incomplete; the driver defines them.
namespace softgpu { struct Queue; }  // runtime/stream_queue.hpp: a stream's work and its pending error
struct CUctx_st {
    CUdevice device = 0;
    unsigned flags = 0;
    bool primary = false;
    unsigned long long id = 0;
    CUresult sticky = CUDA_SUCCESS;  // CYBN_SOFTGPU_STICKY: a kernel fault every later call returns
    std::shared_ptr<softgpu::Queue> legacy;  // the legacy default stream (created on first use)
    std::map<std::thread::id, std::shared_ptr<softgpu::Queue>> per_thread;  // per-thread default streams
    size_t stack_size = 1024, printf_fifo = 1 << 20, malloc_heap = 8 << 20;
    CUfunc_cache cache_config = CU_FUNC_CACHE_PREFER_NONE;
};
struct CUstream_st {
    CUctx_st* ctx = nullptr;
    unsigned flags = 0;
    int priority = 0;
    unsigned long long id = 0;
    std::shared_ptr<softgpu::Queue> queue;
};
struct CUevent_st {
    CUctx_st* ctx = nullptr;
    unsigned flags = 0;
    bool recorded = false;  // cuEventRecord was called
    bool timed = false;     // the last record has executed: `when` is its time
    std::chrono::steady_clock::time_point when;
    std::shared_ptr<softgpu::Queue> queue;  // where it was last recorded, and its position there
    uint64_t seq = 0;
    std::vector<uint64_t> clock;  // streamcheck: the vector clock of the recorded position
};
struct CUfunc_st;
struct CUmod_st {
    CUctx_st* ctx = nullptr;
    softgpu::Module* module = nullptr;
    std::vector<CUfunc_st*> functions;
};
struct CUfunc_st {
    CUmod_st* mod = nullptr;
    softgpu::Kernel* kernel = nullptr;
    CUfunc_cache cache_config = CU_FUNC_CACHE_PREFER_NONE;
};

namespace softgpu {

// The device the driver reports and enforces: one of the profiles of driver/profiles.cpp, chosen by
// CYBN_SOFTGPU_PROFILE at first use (default "small": sm_80 limits, 4 SMs).
struct DeviceProfile {
    const char* name = "";
    const char* device_name = "";     // cuDeviceGetName
    int cc_major = 8, cc_minor = 0;
    int sm_count = 4;
    uint32_t max_threads_per_block = 1024;
    uint32_t max_threads_per_sm = 2048;
    uint32_t max_blocks_per_sm = 32;
    uint32_t registers_per_sm = 65536;
    uint32_t registers_per_block = 65536;
    uint32_t max_registers_per_thread = 255;
    uint32_t reg_alloc_unit = 256;     // registers per warp are rounded up to this
    uint32_t sub_partitions = 4;       // the register file is split among 4 schedulers
    uint32_t smem_per_block = 48 * 1024;  // without opt-in
    uint32_t smem_per_sm = 0;
    uint32_t smem_optin_per_block = 0;
    uint32_t smem_reserved_per_block = 0;  // the driver's own use, per block (1 KiB from sm_80)
    uint32_t smem_alloc_unit = 128;
    uint32_t l2_bytes = 0, persisting_l2_max = 0, access_policy_window_max = 0;
    int clock_khz = 0, memory_clock_khz = 0, bus_width_bits = 0;
    int fp64_ratio = 2;                // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
    uint32_t max_warps_per_sm() const { return max_threads_per_sm / 32; }
};
const DeviceProfile& device_profile();
const std::string& profile_error();  // non-empty when CYBN_SOFTGPU_PROFILE names no profile
std::string profile_names();         // "small, a100, ..." for messages

// One lock around the whole driver: the interpreter is single-threaded, and in async mode the
// stream worker (runtime/stream_queue.cpp) holds it while it runs an operation. Recursive because entry
// points call each other; BigLock counts the depth so a wait can release every level.
std::recursive_mutex& big_lock();
struct BigLock {
    BigLock();
    ~BigLock();
};
#define SG_LOCK ::softgpu::BigLock sg_guard_
// Releases the lock (all levels this thread holds) around fn: host functions, delays.
void without_lock(const std::function<void()>& fn);

bool initialized();
// CUDA_ERROR_NOT_INITIALIZED before cuInit, else CUDA_SUCCESS.
CUresult check_init();
// The calling thread's current context (null if none); require_ctx adds the error codes.
CUctx_st* current_ctx();
CUresult require_ctx(CUctx_st** ctx);
bool valid_ctx(CUctx_st* ctx);
bool valid_stream(CUstream s);    // null, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD or a live stream
bool valid_event(CUevent e);
bool valid_module(CUmodule m);
bool valid_function(CUfunction f);
void register_handle(CUstream s);
void register_handle(CUevent e);
void register_handle(CUmodule m);
void register_handle(CUfunction f);
void unregister_handle(CUstream s);
void unregister_handle(CUevent e);
void unregister_handle(CUmodule m);
void unregister_handle(CUfunction f);
// Destroys a context's modules, streams, events and allocations (cuCtxDestroy, primary reset).
void release_context_resources(CUctx_st* ctx);
void unload_module(CUmodule m);  // driver/module.cpp
extern int g_fail_module_loads;  // the next n module loads fail (softgpuFailModuleLoads)
// exec/occupancy.cpp: NVIDIA's occupancy rules for the active profile.
struct OccupancyLimits { uint32_t blocks = 0, by_slots = 0, by_warps = 0, by_registers = 0, by_shared = 0; };
OccupancyLimits occupancy_limits(const KernelInfo& info, uint32_t threads, uint64_t dynamic_smem);
uint32_t occupancy(const KernelInfo& info, uint32_t threads, uint64_t dynamic_smem);  // resident blocks per SM
uint32_t declared_max_threads(const KernelInfo& info);      // 1024, .maxntid, .reqntid
uint32_t register_limited_threads(const KernelInfo& info);  // the largest block the register file holds
uint32_t function_max_threads(const KernelInfo& info);      // both: CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
// exec/registers.cpp / runtime/jitlink.cpp: registers per thread as ptxas allocates them for the profile's
// architecture (exact through nvJitLink when CYBN_SOFTGPU_NVJITLINK names it, else estimated).
uint32_t kernel_registers(const KernelInfo& info);
void assign_registers(Module* m, const char* ptx, size_t len);  // once per module load

// The last launch or module-load failure text (softgpuLastReport); failures also go to stderr.
void set_last_report(const std::string& text, bool print);
const std::string& last_report();

// ---------------------------------------------------------------- runtime/memory.cpp (driver side)
// Device allocations are counted against config().memory_bytes and the injection knobs.
CUresult mem_alloc(uint64_t size, AllocKind kind, CUctx_st* ctx, uint64_t* out);
// Frees the allocation starting exactly at base and of that kind; CUDA_ERROR_INVALID_VALUE otherwise.
CUresult mem_free(uint64_t base, AllocKind kind);
CUresult mem_register(void* p, uint64_t size, CUctx_st* ctx);
CUresult mem_unregister(void* p);
void free_context_allocations(CUctx_st* ctx);
// Pool-aware memcheck: the device allocation at base now holds an array of `bytes` (<= its size;
// 0: free in its pool), and accesses past that are out of bounds. INVALID_VALUE for other pointers.
CUresult pool_extent(uint64_t base, uint64_t bytes);
CUctx_st* pool_block_context(uint64_t base, uint64_t bytes);  // its context, or null when pool_extent would refuse
CUctx_st* allocation_context(const Allocation& a);
uint64_t device_bytes_in_use();
struct LiveCounts { uint64_t device_count, device_bytes, pinned_count, pinned_bytes; };
LiveCounts live_allocations();
// The allocation holding all of [addr, addr + size), or null.
const Allocation* find_range(uint64_t addr, uint64_t size);
// As find_range, but over what was really allocated, whatever a pool's logical extent says: copies and
// memsets are validated when enqueued, before the stream reaches a pool's extent change.
const Allocation* find_owner(uint64_t addr, uint64_t size);
// initcheck shadow of a DtoD copy: dst bytes take the src bytes' state (untracked src = written).
void copy_initialized(const Allocation& dst, uint64_t d, const Allocation& src, uint64_t s, uint64_t n);
extern long long g_fail_alloc_after;   // the nth device allocation from now fails; <= 0: off
extern long long g_alloc_budget;       // live device bytes allowed; < 0: off
// Config parse problems (bad CYBN_SOFTGPU_* values): cuInit refuses with this text.
const std::string& config_error();

// ---------------------------------------------------------------- runtime/counters.cpp (driver side)
struct Traffic {
    uint64_t htod_bytes = 0, dtoh_bytes = 0, dtod_bytes = 0, htoh_bytes = 0, memcpy_calls = 0;
    uint64_t memset_bytes = 0, memset_calls = 0;
};
Traffic& traffic();
void record_launch(const KernelInfo& info, const LaunchConfig& cfg, const LaunchCounts& counts);
void reset_counters();
std::string counters_json();

}  // namespace softgpu
