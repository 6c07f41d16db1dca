// driver/softgpu_api.cpp: the software GPU's own C API (used by cybn/softgpu.py through ctypes):
// identification, counters, checks, seed, async and sticky modes, fault injection, reports, leak
// counts, and the sub-allocator extents of pool-aware memcheck.
#include "runtime/stream_queue.hpp"

using namespace softgpu;

namespace {
std::string g_json;  // keeps the last softgpuCountersJSON result alive for the caller
}

// "SGPU": lets Python tell the software GPU from a real libcuda.so.1.
SG_EXPORT int softgpuIdentify(void) { return 0x53475055; }

// Counters and reports cover all work enqueued so far: in async mode they wait for it first.
SG_EXPORT const char* softgpuCountersJSON(void) {
    SG_LOCK;
    drain_all();
    g_json = counters_json();
    return g_json.c_str();
}

SG_EXPORT void softgpuResetCounters(void) {
    SG_LOCK;
    reset_counters();
}

SG_EXPORT unsigned softgpuGetChecks(void) {
    SG_LOCK;
    const Config& c = config();
    return (c.memcheck ? 1u : 0u) | (c.racecheck ? 2u : 0u) | (c.initcheck ? 4u : 0u) | (c.streamcheck ? 8u : 0u);
}

SG_EXPORT void softgpuSetChecks(unsigned mask) {
    SG_LOCK;
    Config& c = config();
    c.memcheck = mask & 1u;
    c.racecheck = mask & 2u;
    c.initcheck = mask & 4u;
    c.streamcheck = mask & 8u;
}

// Async mode: stream work runs on the worker thread. Switching it off first waits for all work.
SG_EXPORT int softgpuSetAsync(int on) {
    SG_LOCK;
    return set_async(on != 0) ? 1 : 0;
}

SG_EXPORT int softgpuGetAsync(void) {
    SG_LOCK;
    return config().async ? 1 : 0;
}

SG_EXPORT void softgpuSetAsyncSeed(unsigned long long seed) {
    SG_LOCK;
    config().async_seed = seed;
}

SG_EXPORT int softgpuSetSticky(int on) {
    SG_LOCK;
    bool was = config().sticky;
    config().sticky = on != 0;
    return was ? 1 : 0;
}

SG_EXPORT void softgpuSetSeed(unsigned long long seed) {
    SG_LOCK;
    config().seed = seed;
}

SG_EXPORT unsigned long long softgpuGetSeed(void) {
    SG_LOCK;
    return config().seed;
}

SG_EXPORT void softgpuFailAllocAfter(long long n) {
    SG_LOCK;
    g_fail_alloc_after = n > 0 ? n : 0;
}

SG_EXPORT void softgpuSetAllocBudget(long long bytes) {
    SG_LOCK;
    g_alloc_budget = bytes >= 0 ? bytes : -1;
}

SG_EXPORT void softgpuFailModuleLoads(int n) {
    SG_LOCK;
    g_fail_module_loads = n > 0 ? n : 0;
}

SG_EXPORT const char* softgpuLastReport(void) {
    SG_LOCK;
    drain_all();
    return last_report().c_str();
}

SG_EXPORT void softgpuLiveAllocations(unsigned long long* count, unsigned long long* bytes) {
    SG_LOCK;
    LiveCounts c = live_allocations();
    if (count) *count = c.device_count;
    if (bytes) *bytes = c.device_bytes;
}

// Pinned (host) allocations separately: cuMemAllocHost / cuMemHostAlloc / cuMemHostRegister.
SG_EXPORT void softgpuLivePinnedAllocations(unsigned long long* count, unsigned long long* bytes) {
    SG_LOCK;
    LiveCounts c = live_allocations();
    if (count) *count = c.pinned_count;
    if (bytes) *bytes = c.pinned_bytes;
}

// Pool-aware memcheck (cybn's MemoryPool calls it through cybn.softgpu): the logical extent of the
// block at ptr, a whole device allocation, as its sub-allocator hands it out on `stream` (bytes) or
// takes it back there (0). The change is a stream operation, so work queued before it still sees the
// old extent. Returns 0, or CUDA_ERROR_INVALID_VALUE when ptr does not start a device allocation of at
// least `bytes`.
SG_EXPORT int softgpuPoolBlock(unsigned long long ptr, unsigned long long bytes, CUstream stream) {
    SG_LOCK;
    if (!initialized()) return int(CUDA_ERROR_NOT_INITIALIZED);
    if (!valid_stream(stream)) return int(CUDA_ERROR_INVALID_HANDLE);
    // The block's own context (a free-list reuse may happen on a thread with none current).
    CUctx_st* ctx = pool_block_context(ptr, bytes);
    if (!ctx) return int(CUDA_ERROR_INVALID_VALUE);
    auto op = std::make_unique<Op>();
    op->what = "a pool extent change";
    op->marker = true;
    op->run = [ptr, bytes](Op&) { return pool_extent(ptr, bytes); };
    Queue* q = queue_of(stream, stream == nullptr || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD
                                    ? ctx : stream->ctx, false);
    return int(submit(q, std::move(op)));
}
