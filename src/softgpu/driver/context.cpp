// driver/context.cpp: contexts, the primary context and the per-thread current-context stack.
#include <set>

#include "runtime/stream_queue.hpp"

using namespace softgpu;

namespace {

// Context objects are never deleted: a stale handle on some thread's stack must stay
// recognisably dead rather than alias a new context.
std::set<CUctx_st*> g_live;
// g_live has its own lock so that the current-context calls (made constantly, often with Python's
// GIL held) never wait for the driver lock an async kernel holds.
std::mutex g_live_mutex;
void live_insert(CUctx_st* c) {
    std::lock_guard<std::mutex> g(g_live_mutex);
    g_live.insert(c);
}
void live_erase(CUctx_st* c) {
    std::lock_guard<std::mutex> g(g_live_mutex);
    g_live.erase(c);
}
CUctx_st g_primary;
unsigned g_primary_refs = 0;
unsigned long long g_next_ctx_id = 1;
thread_local std::vector<CUctx_st*> t_stack;

constexpr unsigned kCtxFlagsMask = CU_CTX_SCHED_MASK | CU_CTX_MAP_HOST | CU_CTX_LMEM_RESIZE_TO_MAX |
                                   CU_CTX_COREDUMP_ENABLE | CU_CTX_USER_COREDUMP_ENABLE | CU_CTX_SYNC_MEMOPS;

CUresult create(CUcontext* pctx, unsigned flags, CUdevice dev) {
    if (CUresult r = check_init()) return r;
    if (!pctx || (flags & ~kCtxFlagsMask)) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    CUctx_st* c = new CUctx_st;
    c->flags = flags;
    c->id = g_next_ctx_id++;
    live_insert(c);
    t_stack.push_back(c);
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult resolve(CUcontext* ctx) {
    if (CUresult r = check_init()) return r;
    if (!*ctx) *ctx = current_ctx();
    return *ctx && valid_ctx(*ctx) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

}  // namespace

namespace softgpu {
bool valid_ctx(CUctx_st* ctx) {
    std::lock_guard<std::mutex> g(g_live_mutex);
    return ctx && g_live.count(ctx);
}
CUctx_st* current_ctx() {
    if (t_stack.empty() || !valid_ctx(t_stack.back())) return nullptr;
    return t_stack.back();
}
}  // namespace softgpu

CUresult cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice dev) {
    SG_LOCK;
    return create(pctx, flags, dev);
}

CUresult cuCtxCreate_v3(CUcontext* pctx, CUexecAffinityParam* paramsArray, int numParams, unsigned int flags,
                        CUdevice dev) {
    SG_LOCK;
    if (numParams < 0 || (numParams > 0 && !paramsArray)) return CUDA_ERROR_INVALID_VALUE;
    if (numParams > 0) return CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY;
    return create(pctx, flags, dev);
}

SG_EXPORT CUresult cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* params, unsigned int flags, CUdevice dev) {
    SG_LOCK;
    if (params && (params->numExecAffinityParams > 0 || params->cigParams)) return CUDA_ERROR_NOT_SUPPORTED;
    return create(pctx, flags, dev);
}

CUresult cuCtxDestroy_v2(CUcontext ctx) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!valid_ctx(ctx) || ctx == &g_primary) return CUDA_ERROR_INVALID_CONTEXT;
    release_context_resources(ctx);
    live_erase(ctx);
    if (!t_stack.empty() && t_stack.back() == ctx) t_stack.pop_back();
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    // No driver lock: the thread's own stack and g_live (own lock) only.
    if (CUresult r = check_init()) return r;
    if (!valid_ctx(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    t_stack.push_back(ctx);
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext* pctx) {
    // No driver lock: the thread's own stack and g_live (own lock) only.
    if (CUresult r = check_init()) return r;
    if (t_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
    if (pctx) *pctx = t_stack.back();
    t_stack.pop_back();
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    // No driver lock: the thread's own stack and g_live (own lock) only.
    if (CUresult r = check_init()) return r;
    if (!ctx) {
        if (!t_stack.empty()) t_stack.pop_back();
        return CUDA_SUCCESS;
    }
    if (!valid_ctx(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_stack.empty()) t_stack.push_back(ctx);
    else t_stack.back() = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* pctx) {
    // No driver lock: the thread's own stack and g_live (own lock) only.
    if (CUresult r = check_init()) return r;
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = current_ctx();
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* device) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    *device = ctx->device;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice_v2(CUdevice* device, CUcontext ctx) {
    SG_LOCK;
    if (CUresult r = resolve(&ctx)) return r;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    *device = ctx->device;
    return CUDA_SUCCESS;
}

// Waits for every stream of the context; returns (and clears) the first failure among them.
CUresult cuCtxSynchronize_v2(CUcontext ctx) {
    SG_LOCK;
    if (CUresult r = resolve(&ctx)) return r;
    return sync_context(ctx);
}

CUresult cuCtxSynchronize(void) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    return cuCtxSynchronize_v2(ctx);
}

CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int* version) {
    SG_LOCK;
    if (CUresult r = resolve(&ctx)) return r;
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = 3020;  // every context of the v2 API reports 3020
    return CUDA_SUCCESS;
}

CUresult cuCtxGetFlags(unsigned int* flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!flags) return CUDA_ERROR_INVALID_VALUE;
    *flags = ctx->flags;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetFlags(unsigned int flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (flags & ~kCtxFlagsMask) return CUDA_ERROR_INVALID_VALUE;
    ctx->flags = flags;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetId(CUcontext ctx, unsigned long long* ctxId) {
    SG_LOCK;
    if (CUresult r = resolve(&ctx)) return r;
    if (!ctxId) return CUDA_ERROR_INVALID_VALUE;
    *ctxId = ctx->id;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetStreamPriorityRange(int* leastPriority, int* greatestPriority) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (leastPriority) *leastPriority = 0;
    if (greatestPriority) *greatestPriority = -5;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetLimit(size_t* pvalue, CUlimit limit) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!pvalue) return CUDA_ERROR_INVALID_VALUE;
    switch (limit) {
        case CU_LIMIT_STACK_SIZE: *pvalue = ctx->stack_size; return CUDA_SUCCESS;
        case CU_LIMIT_PRINTF_FIFO_SIZE: *pvalue = ctx->printf_fifo; return CUDA_SUCCESS;
        case CU_LIMIT_MALLOC_HEAP_SIZE: *pvalue = ctx->malloc_heap; return CUDA_SUCCESS;
        case CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH: *pvalue = 2; return CUDA_SUCCESS;
        case CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT: *pvalue = 2048; return CUDA_SUCCESS;
        case CU_LIMIT_MAX_L2_FETCH_GRANULARITY: *pvalue = 64; return CUDA_SUCCESS;
        case CU_LIMIT_PERSISTING_L2_CACHE_SIZE: *pvalue = 0; return CUDA_SUCCESS;
        default: return CUDA_ERROR_UNSUPPORTED_LIMIT;
    }
}

CUresult cuCtxSetLimit(CUlimit limit, size_t value) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    switch (limit) {
        case CU_LIMIT_STACK_SIZE: ctx->stack_size = value; return CUDA_SUCCESS;
        case CU_LIMIT_PRINTF_FIFO_SIZE: ctx->printf_fifo = value; return CUDA_SUCCESS;
        case CU_LIMIT_MALLOC_HEAP_SIZE: ctx->malloc_heap = value; return CUDA_SUCCESS;
        case CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH:
        case CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT:
        case CU_LIMIT_MAX_L2_FETCH_GRANULARITY:
        case CU_LIMIT_PERSISTING_L2_CACHE_SIZE: return CUDA_SUCCESS;  // accepted, no effect here
        default: return CUDA_ERROR_UNSUPPORTED_LIMIT;
    }
}

CUresult cuCtxGetCacheConfig(CUfunc_cache* pconfig) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!pconfig) return CUDA_ERROR_INVALID_VALUE;
    *pconfig = ctx->cache_config;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCacheConfig(CUfunc_cache config) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (config < CU_FUNC_CACHE_PREFER_NONE || config > CU_FUNC_CACHE_PREFER_EQUAL) return CUDA_ERROR_INVALID_VALUE;
    ctx->cache_config = config;
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- primary context
CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (g_primary_refs++ == 0) {
        g_primary.primary = true;
        g_primary.id = g_next_ctx_id++;
        live_insert(&g_primary);
    }
    *pctx = &g_primary;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (g_primary_refs == 0) return CUDA_ERROR_INVALID_CONTEXT;
    if (--g_primary_refs == 0) {
        release_context_resources(&g_primary);
        live_erase(&g_primary);
    }
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    release_context_resources(&g_primary);
    g_primary.flags = 0;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    *flags = g_primary.flags;
    *active = g_primary_refs > 0;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (dev != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (flags & ~kCtxFlagsMask) return CUDA_ERROR_INVALID_VALUE;
    g_primary.flags = flags;
    return CUDA_SUCCESS;
}

// The pre-11.0 entry points differ only in name.
CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { return cuDevicePrimaryCtxRelease_v2(dev); }
CUresult cuDevicePrimaryCtxReset(CUdevice dev) { return cuDevicePrimaryCtxReset_v2(dev); }
CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags) { return cuDevicePrimaryCtxSetFlags_v2(dev, flags); }
CUresult cuCtxDestroy(CUcontext ctx) { return cuCtxDestroy_v2(ctx); }
CUresult cuCtxPushCurrent(CUcontext ctx) { return cuCtxPushCurrent_v2(ctx); }
CUresult cuCtxPopCurrent(CUcontext* pctx) { return cuCtxPopCurrent_v2(pctx); }
