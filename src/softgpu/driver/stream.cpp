// driver/stream.cpp: streams, events and host functions over the operation queues of
// runtime/stream_queue.cpp (work runs at enqueue time, or on the async worker in stream order).
#include "runtime/stream_queue.hpp"

using namespace softgpu;

namespace {

unsigned long long g_next_stream_id = 1;

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
    s->queue = new_queue(ctx, false, !(flags & CU_STREAM_NON_BLOCKING), "stream " + std::to_string(s->id));
    register_handle(s);
    *ph = s;
    return CUDA_SUCCESS;
}

bool is_default(CUstream s) { return s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

// The stream's queue after the usual checks (ptds: the _ptsz entry point, where null is per-thread).
CUresult stream_queue(CUstream s, bool ptds, Queue** q) {
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    *q = queue_of(s, stream_ctx(s, ctx), ptds);
    return CUDA_SUCCESS;
}

CUresult stream_sync(CUstream s, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = stream_queue(s, ptds, &q)) return r;
    return sync_queue(q);
}

CUresult stream_query(CUstream s, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = stream_queue(s, ptds, &q)) return r;
    if (queue_busy(q)) return CUDA_ERROR_NOT_READY;
    note_host_sync(q->clock);
    return CUDA_SUCCESS;
}

// Later work on s waits for the event's recorded work (an operation that does nothing itself).
CUresult stream_wait_event(CUstream s, CUevent e, unsigned flags, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = stream_queue(s, ptds, &q)) return r;
    if (!valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    if (flags & ~unsigned(CU_EVENT_WAIT_EXTERNAL)) return CUDA_ERROR_INVALID_VALUE;
    if (!e->queue) return CUDA_SUCCESS;  // never recorded: nothing to wait for, as on hardware
    auto op = std::make_unique<Op>();
    op->what = "a wait for an event";
    op->marker = true;
    op->deps.push_back({e->queue, e->seq});
    op->clock = e->clock;
    op->run = [](Op&) { return CUDA_SUCCESS; };
    return submit(q, std::move(op));
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

CUresult event_record(CUevent e, CUstream s, unsigned flags, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = stream_queue(s, ptds, &q)) return r;
    if (!valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    if (flags & ~unsigned(CU_EVENT_RECORD_EXTERNAL)) return CUDA_ERROR_INVALID_VALUE;
    auto op = std::make_unique<Op>();
    op->what = "an event record";
    op->marker = true;
    // The timestamp is taken when the stream reaches the record; a later record supersedes it.
    op->run = [e](Op& self) {
        if (e->seq == self.seq) e->when = std::chrono::steady_clock::now(), e->timed = true;
        return CUDA_SUCCESS;
    };
    e->recorded = true;
    e->timed = false;
    e->queue = q->shared_from_this();
    e->seq = q->enqueued + 1;  // the position submit gives the record
    CUresult r = submit(q, std::move(op));
    e->clock = q->clock;
    return r;
}

CUresult launch_host_func(CUstream s, CUhostFn fn, void* userData, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = stream_queue(s, ptds, &q)) return r;
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    auto op = std::make_unique<Op>();
    op->what = "a host function";
    op->host_fn = true;  // runs without the driver lock (on the worker in async mode)
    op->run = [fn, userData](Op&) {
        fn(userData);
        return CUDA_SUCCESS;
    };
    return submit(q, std::move(op));
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

// Waits for the stream's work (as the driver's deferred destroy would let it finish) first.
CUresult cuStreamDestroy_v2(CUstream s) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (is_default(s) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    unregister_handle(s);
    wait_seq(s->queue.get(), s->queue->enqueued);
    delete s;
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy(CUstream s) { return cuStreamDestroy_v2(s); }

CUresult cuStreamSynchronize(CUstream s) { return stream_sync(s, false); }
CUresult cuStreamSynchronize_ptsz(CUstream s) { return stream_sync(s, true); }
CUresult cuStreamQuery(CUstream s) { return stream_query(s, false); }
CUresult cuStreamQuery_ptsz(CUstream s) { return stream_query(s, true); }
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) { return stream_wait_event(s, e, f, false); }
CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned int f) { return stream_wait_event(s, e, f, true); }
CUresult cuStreamGetPriority(CUstream s, int* p) { return stream_get_priority(s, p); }
CUresult cuStreamGetPriority_ptsz(CUstream s, int* p) { return stream_get_priority(s, p); }
CUresult cuStreamGetFlags(CUstream s, unsigned int* f) { return stream_get_flags(s, f); }
CUresult cuStreamGetFlags_ptsz(CUstream s, unsigned int* f) { return stream_get_flags(s, f); }
CUresult cuStreamGetCtx(CUstream s, CUcontext* c) { return stream_get_ctx(s, c); }
CUresult cuStreamGetCtx_ptsz(CUstream s, CUcontext* c) { return stream_get_ctx(s, c); }
CUresult cuStreamGetId(CUstream s, unsigned long long* id) { return stream_get_id(s, id); }
CUresult cuStreamGetId_ptsz(CUstream s, unsigned long long* id) { return stream_get_id(s, id); }
CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* u) { return launch_host_func(s, fn, u, false); }
CUresult cuLaunchHostFunc_ptsz(CUstream s, CUhostFn fn, void* u) { return launch_host_func(s, fn, u, true); }
// _v2 adds a sync mode for the host-task thread; host functions run on one thread here, so it is only validated.
CUresult cuLaunchHostFunc_v2(CUstream s, CUhostFn fn, void* u, unsigned int syncMode) {
    if (syncMode != CU_HOST_TASK_BLOCKING && syncMode != CU_HOST_TASK_SPINWAIT) return CUDA_ERROR_INVALID_VALUE;
    return launch_host_func(s, fn, u, false);
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
    if (e->queue) wait_seq(e->queue.get(), e->seq);  // its pending record writes into it
    delete e;
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent e) { return cuEventDestroy_v2(e); }

CUresult cuEventRecord(CUevent e, CUstream s) { return event_record(e, s, 0, false); }
CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return event_record(e, s, 0, true); }
CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int f) { return event_record(e, s, f, false); }
CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream s, unsigned int f) { return event_record(e, s, f, true); }

CUresult cuEventQuery(CUevent e) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    if (e->queue && e->queue->completed < e->seq) return CUDA_ERROR_NOT_READY;
    note_host_sync(e->clock);  // the host saw the recorded work complete: it happens before what follows
    return CUDA_SUCCESS;
}

// Waits for the recorded work; returns (and clears) a failure of the stream it was recorded on.
CUresult cuEventSynchronize(CUevent e) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_event(e)) return CUDA_ERROR_INVALID_HANDLE;
    if (!e->queue) return CUDA_SUCCESS;
    std::shared_ptr<Queue> q = e->queue;
    if (!wait_seq(q.get(), e->seq)) return CUDA_ERROR_NOT_PERMITTED;
    note_host_sync(e->clock);
    return take_pending(q.get());
}

CUresult cuEventElapsedTime_v2(float* pMilliseconds, CUevent hStart, CUevent hEnd) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!pMilliseconds) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_event(hStart) || !valid_event(hEnd)) return CUDA_ERROR_INVALID_HANDLE;
    if ((hStart->flags | hEnd->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
    if (!hStart->recorded || !hEnd->recorded) return CUDA_ERROR_INVALID_HANDLE;
    if (!hStart->timed || !hEnd->timed) return CUDA_ERROR_NOT_READY;  // recorded, not reached yet
    *pMilliseconds = std::chrono::duration<float, std::milli>(hEnd->when - hStart->when).count();
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime_v2(ms, a, b); }
