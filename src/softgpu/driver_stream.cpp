// driver_stream.cpp: streams, events and host functions. All work runs at enqueue time, so a
// stream is bookkeeping only and an event's timestamp is taken when it is recorded.
#include "driver.hpp"

using namespace softgpu;

namespace {

unsigned long long g_next_stream_id = 1;

// The pending failed launch of the stream's context: a synchronize reports it once, then clears it.
CUresult take_pending(CUctx_st* ctx) {
    flush_device_printf();  // device printf output appears at synchronisation points
    if (!ctx) return CUDA_SUCCESS;
    CUresult r = ctx->pending;
    ctx->pending = CUDA_SUCCESS;
    return r;
}

CUctx_st* stream_ctx(CUstream s, CUctx_st* current) {
    return s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD ? current : s->ctx;
}

CUresult create_stream(CUstream* ph, unsigned flags, int priority) {
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!ph || (flags & ~unsigned(CU_STREAM_NON_BLOCKING))) return CUDA_ERROR_INVALID_VALUE;
    CUstream s = new CUstream_st;
    s->ctx = ctx;
    s->flags = flags;
    // Priorities outside [greatest, least] = [-5, 0] are clamped, as the driver documents.
    s->priority = priority > 0 ? 0 : priority < -5 ? -5 : priority;
    s->id = g_next_stream_id++;
    register_handle(s);
    *ph = s;
    return CUDA_SUCCESS;
}

bool is_default(CUstream s) { return s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

CUresult stream_sync(CUstream s) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    return take_pending(stream_ctx(s, ctx));
}

CUresult stream_query(CUstream s) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    return valid_stream(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult stream_wait_event(CUstream s, CUevent e, unsigned flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s) || !valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    if (flags & ~unsigned(CU_EVENT_WAIT_EXTERNAL)) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;  // the recorded work is already done
}

CUresult stream_get_priority(CUstream s, int* priority) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!priority) return CUDA_ERROR_INVALID_VALUE;
    *priority = is_default(s) ? 0 : s->priority;
    return CUDA_SUCCESS;
}

CUresult stream_get_flags(CUstream s, unsigned* flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!flags) return CUDA_ERROR_INVALID_VALUE;
    *flags = is_default(s) ? 0 : s->flags;
    return CUDA_SUCCESS;
}

CUresult stream_get_ctx(CUstream s, CUcontext* pctx) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = stream_ctx(s, ctx);
    return CUDA_SUCCESS;
}

CUresult stream_get_id(CUstream s, unsigned long long* id) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!id) return CUDA_ERROR_INVALID_VALUE;
    *id = is_default(s) ? 0 : s->id;
    return CUDA_SUCCESS;
}

CUresult event_record(CUevent e, CUstream s, unsigned flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_event(e) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (flags & ~unsigned(CU_EVENT_RECORD_EXTERNAL)) return CUDA_ERROR_INVALID_VALUE;
    e->recorded = true;
    e->when = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}

CUresult launch_host_func(CUstream s, CUhostFn fn, void* userData) {
    {
        SG_LOCK;
        CUctx_st* ctx;
        if (CUresult r = require_ctx(&ctx)) return r;
        if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
        if (!fn) return CUDA_ERROR_INVALID_VALUE;
    }
    fn(userData);  // outside the lock: the preceding work is complete, nothing else to wait for
    return CUDA_SUCCESS;
}

}  // namespace

CUresult cuStreamCreate(CUstream* ph, unsigned int Flags) {
    SG_LOCK;
    return create_stream(ph, Flags, 0);
}

CUresult cuStreamCreateWithPriority(CUstream* ph, unsigned int flags, int priority) {
    SG_LOCK;
    return create_stream(ph, flags, priority);
}

CUresult cuStreamDestroy_v2(CUstream s) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (is_default(s) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    unregister_handle(s);
    delete s;
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy(CUstream s) { return cuStreamDestroy_v2(s); }

CUresult cuStreamSynchronize(CUstream s) { return stream_sync(s); }
CUresult cuStreamSynchronize_ptsz(CUstream s) { return stream_sync(s); }
CUresult cuStreamQuery(CUstream s) { return stream_query(s); }
CUresult cuStreamQuery_ptsz(CUstream s) { return stream_query(s); }
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) { return stream_wait_event(s, e, f); }
CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned int f) { return stream_wait_event(s, e, f); }
CUresult cuStreamGetPriority(CUstream s, int* p) { return stream_get_priority(s, p); }
CUresult cuStreamGetPriority_ptsz(CUstream s, int* p) { return stream_get_priority(s, p); }
CUresult cuStreamGetFlags(CUstream s, unsigned int* f) { return stream_get_flags(s, f); }
CUresult cuStreamGetFlags_ptsz(CUstream s, unsigned int* f) { return stream_get_flags(s, f); }
CUresult cuStreamGetCtx(CUstream s, CUcontext* c) { return stream_get_ctx(s, c); }
CUresult cuStreamGetCtx_ptsz(CUstream s, CUcontext* c) { return stream_get_ctx(s, c); }
CUresult cuStreamGetId(CUstream s, unsigned long long* id) { return stream_get_id(s, id); }
CUresult cuStreamGetId_ptsz(CUstream s, unsigned long long* id) { return stream_get_id(s, id); }
CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* u) { return launch_host_func(s, fn, u); }
CUresult cuLaunchHostFunc_ptsz(CUstream s, CUhostFn fn, void* u) { return launch_host_func(s, fn, u); }
// _v2 adds a sync mode for the host-task thread; host functions run inline here, so it is only validated.
CUresult cuLaunchHostFunc_v2(CUstream s, CUhostFn fn, void* u, unsigned int syncMode) {
    if (syncMode != CU_HOST_TASK_BLOCKING && syncMode != CU_HOST_TASK_SPINWAIT) return CUDA_ERROR_INVALID_VALUE;
    return launch_host_func(s, fn, u);
}

// ---------------------------------------------------------------- events
CUresult cuEventCreate(CUevent* phEvent, unsigned int Flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if (!phEvent || (Flags & ~known)) return CUDA_ERROR_INVALID_VALUE;
    // Interprocess events must also disable timing (driver API rule).
    if ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING)) return CUDA_ERROR_INVALID_VALUE;
    CUevent e = new CUevent_st;
    e->ctx = ctx;
    e->flags = Flags;
    register_handle(e);
    *phEvent = e;
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent e) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    unregister_handle(e);
    delete e;
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent e) { return cuEventDestroy_v2(e); }

CUresult cuEventRecord(CUevent e, CUstream s) { return event_record(e, s, 0); }
CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return event_record(e, s, 0); }
CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int f) { return event_record(e, s, f); }
CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream s, unsigned int f) { return event_record(e, s, f); }

CUresult cuEventQuery(CUevent e) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    return valid_event(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventSynchronize(CUevent e) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    return take_pending(e->ctx);
}

CUresult cuEventElapsedTime_v2(float* pMilliseconds, CUevent hStart, CUevent hEnd) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!pMilliseconds) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_event(hStart) || !valid_event(hEnd)) return CUDA_ERROR_INVALID_HANDLE;
    if ((hStart->flags | hEnd->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
    if (!hStart->recorded || !hEnd->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *pMilliseconds = std::chrono::duration<float, std::milli>(hEnd->when - hStart->when).count();
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime_v2(ms, a, b); }
