// runtime/stream_queue.cpp: queues of stream work, the inline and async runners, pending errors, and the
// happens-before clocks (the legacy stream's implicit ordering, event waits, host synchronisation).
//
// Async design: one worker thread runs one operation at a time, holding the driver lock (the
// interpreter, allocations and counters stay single-threaded), choosing among the queues whose
// head operation has its dependencies complete. The host thread enqueues and returns; it waits
// on a condition variable (lock released) only where the API synchronises.
#include <condition_variable>
#include <random>

#include "runtime/stream_queue.hpp"

namespace softgpu {

namespace {

std::vector<Queue*> g_queues;  // live queues in creation order
uint32_t g_next_slot = 0;
VClock g_host;                 // what the host has waited for
bool g_worker_started = false;
std::thread::id g_worker_id;

std::condition_variable_any& cv() {
    static auto* c = new std::condition_variable_any;  // never destroyed: the worker outlives exit
    return *c;
}

void set_clock(VClock& c, uint32_t slot, uint64_t v) {
    if (c.size() <= slot) c.resize(slot + 1, 0);
    if (c[slot] < v) c[slot] = v;
}

bool deps_met(const Op& op) {
    for (auto& d : op.deps)
        if (d.first->completed < d.second) return false;
    return true;
}

thread_local int t_depth = 0;  // levels of the driver lock this thread holds (BigLock)
thread_local bool t_in_host_fn = false;  // this thread is running a stream's host function

// Waits (releasing every level of the lock this thread holds) until pred holds. Returns false, without
// waiting, inside a host function: its own stream cannot complete before it returns (a deadlock), and
// CUDA forbids driver calls there (cuLaunchHostFunc: "may result in CUDA_ERROR_NOT_PERMITTED").
template <class Pred>
bool wait_locked(Pred pred) {
    if (pred()) return true;
    if (t_in_host_fn) return false;
    if (g_worker_started && std::this_thread::get_id() == g_worker_id) return false;  // never block the worker
    int depth = t_depth;
    for (int i = 1; i < depth; ++i) big_lock().unlock();
    cv().wait(big_lock(), pred);
    for (int i = 1; i < depth; ++i) big_lock().lock();
    return true;
}

CUresult execute(Queue* q, Op& op) {
    CUctx_st* ctx = q->ctx;
    CUresult r = ctx->sticky;
    const Config& c = config();
    if (!r && c.streamcheck && !op.kernel) r = streamcheck(*q, op);  // a copy is checked before it runs
    if (!r) {
        if (op.host_fn) without_lock([&] {
            t_in_host_fn = true;
            r = op.run(op);
            t_in_host_fn = false;
        });
        else r = op.run(op);
        if (op.kernel && r && c.sticky) ctx->sticky = r;
        if (!r && c.streamcheck && op.kernel) r = streamcheck(*q, op);  // a kernel's bytes are known after
        if (c.streamcheck) streamcheck_record(*q, op);
    }
    if (r && !q->pending) q->pending = r;
    if (op.outcome) *op.outcome = r;
    return r;
}

// Runs the queue's head operation and retires it (q->running is set by the caller).
void finish(Queue* q, Op& op) {
    execute(q, op);
    q->completed = op.seq;
    q->ops.pop_front();
    q->running = false;
    cv().notify_all();
}

Queue* pick_ready(std::mt19937_64& rng) {
    std::vector<Queue*> ready;
    for (Queue* q : g_queues) {
        if (q->ops.empty() || q->running || !deps_met(*q->ops.front())) continue;
        if (!config().async_seed) return q;
        ready.push_back(q);
    }
    if (ready.empty()) return nullptr;
    return ready[rng() % ready.size()];
}

void worker_main() {
    BigLock hold;
    std::mt19937_64 rng(config().async_seed);
    for (;;) {
        Queue* q = nullptr;
        cv().wait(big_lock(), [&] { return (q = pick_ready(rng)) != nullptr; });
        q->running = true;
        if (config().async_seed) {  // let the host and the other streams run ahead
            auto delay = std::chrono::microseconds(rng() % 300);
            without_lock([&] { std::this_thread::sleep_for(delay); });
        }
        Op& op = *q->ops.front();
        if (op.host_fn) {  // on its own thread: a blocking host function holds back its stream only
            std::thread([ref = q->shared_from_this(), &op] {
                BigLock hold;
                finish(ref.get(), op);
            }).detach();
            continue;
        }
        finish(q, op);
    }
}

void start_worker() {
    if (g_worker_started) return;
    g_worker_started = true;
    std::thread t(worker_main);
    g_worker_id = t.get_id();
    t.detach();
}

std::shared_ptr<Queue> ref(Queue* q) { return q->shared_from_this(); }

// The queues a synchronize of q waits for: q, and for the legacy stream every blocking stream.
std::vector<Queue*> sync_set(Queue* q) {
    std::vector<Queue*> set{q};
    if (q->legacy)
        for (Queue* o : g_queues)
            if (o != q && o->ctx == q->ctx && o->blocking) set.push_back(o);
    return set;
}

bool wait_for(const std::vector<Queue*>& set) {
    std::vector<std::pair<std::shared_ptr<Queue>, uint64_t>> targets;
    for (Queue* o : set) targets.push_back({ref(o), o->enqueued});
    if (!wait_locked([&] {
            for (auto& t : targets)
                if (t.first->completed < t.second) return false;
            return true;
        }))
        return false;
    for (auto& t : targets) note_host_sync(t.first->clock);
    return true;
}

}  // namespace

// ---------------------------------------------------------------- the lock
BigLock::BigLock() {
    big_lock().lock();
    ++t_depth;
}
BigLock::~BigLock() {
    --t_depth;
    big_lock().unlock();
}
void without_lock(const std::function<void()>& fn) {
    int depth = t_depth;
    for (int i = 0; i < depth; ++i) big_lock().unlock();
    t_depth = 0;
    fn();
    for (int i = 0; i < depth; ++i) big_lock().lock();
    t_depth = depth;
}

// ---------------------------------------------------------------- queues
Queue::~Queue() {
    for (size_t i = 0; i < g_queues.size(); ++i)
        if (g_queues[i] == this) {
            g_queues.erase(g_queues.begin() + long(i));
            break;
        }
}

std::shared_ptr<Queue> new_queue(CUctx_st* ctx, bool legacy, bool blocking, const std::string& label) {
    auto q = std::make_shared<Queue>();
    q->ctx = ctx;
    q->legacy = legacy;
    q->blocking = blocking;
    q->label = label;
    q->slot = g_next_slot++;
    g_queues.push_back(q.get());
    return q;
}

Queue* queue_of(CUstream s, CUctx_st* ctx, bool ptds) {
    if (s == CU_STREAM_PER_THREAD || (s == nullptr && ptds)) {
        auto& q = ctx->per_thread[std::this_thread::get_id()];
        if (!q) q = new_queue(ctx, false, true, "the per-thread default stream of thread " + std::to_string(ctx->per_thread.size()));
        return q.get();
    }
    if (s == nullptr || s == CU_STREAM_LEGACY) {
        if (!ctx->legacy) ctx->legacy = new_queue(ctx, true, true, "the legacy default stream");
        return ctx->legacy.get();
    }
    return s->queue.get();
}

void join_clock(VClock& into, const VClock& c) {
    if (into.size() < c.size()) into.resize(c.size(), 0);
    for (size_t i = 0; i < c.size(); ++i)
        if (into[i] < c[i]) into[i] = c[i];
}

void note_host_sync(const VClock& c) {
    join_clock(g_host, c);
    if (config().streamcheck) streamcheck_forget(g_host);
}

CUresult submit(Queue* q, std::unique_ptr<Op> op) {
    CUctx_st* ctx = q->ctx;
    join_clock(op->clock, q->clock);
    join_clock(op->clock, g_host);
    auto depend = [&](Queue* o) {
        if (o->enqueued > o->completed) op->deps.push_back({ref(o), o->enqueued});
        join_clock(op->clock, o->clock);
    };
    // The legacy stream waits for every blocking stream, and they wait for it.
    if (q->legacy) {
        for (Queue* o : g_queues)
            if (o != q && o->ctx == ctx && o->blocking) depend(o);
    } else if (q->blocking && ctx->legacy) {
        depend(ctx->legacy.get());
    }
    op->seq = ++q->enqueued;
    set_clock(op->clock, q->slot, op->seq);
    q->clock = op->clock;
    // Inline mode, or an event record / wait on a queue with nothing left to wait for.
    if (!config().async || (op->marker && q->ops.empty() && deps_met(*op))) {
        CUresult r = execute(q, *op);
        q->completed = op->seq;
        return r;
    }
    q->ops.push_back(std::move(op));
    start_worker();
    cv().notify_all();
    return CUDA_SUCCESS;
}

CUresult take_pending(Queue* q) {
    flush_device_printf();  // device printf output appears at synchronisation points
    CUresult r = q->pending;
    q->pending = CUDA_SUCCESS;
    return r;
}

CUresult sync_queue(Queue* q) {
    std::vector<Queue*> set = sync_set(q);
    if (!wait_for(set)) return CUDA_ERROR_NOT_PERMITTED;
    CUresult r = CUDA_SUCCESS;
    for (Queue* o : set)
        if (CUresult e = take_pending(o))
            if (!r) r = e;
    return q->ctx->sticky ? q->ctx->sticky : r;
}

CUresult sync_context(CUctx_st* ctx) {
    std::vector<Queue*> set;
    for (Queue* o : g_queues)
        if (o->ctx == ctx) set.push_back(o);
    if (!wait_for(set)) return CUDA_ERROR_NOT_PERMITTED;
    flush_device_printf();
    CUresult r = CUDA_SUCCESS;
    for (Queue* o : set)
        if (CUresult e = take_pending(o))
            if (!r) r = e;
    return ctx->sticky ? ctx->sticky : r;
}

bool queue_busy(Queue* q) {
    for (Queue* o : sync_set(q))
        if (o->completed < o->enqueued) return true;
    return false;
}

bool wait_seq(Queue* q, uint64_t seq) {
    return wait_locked([&] { return q->completed >= seq; });
}

void drain_context(CUctx_st* ctx) {
    std::vector<Queue*> set;
    for (Queue* o : g_queues)
        if (o->ctx == ctx) set.push_back(o);
    wait_for(set);
}

void drain_all() { wait_for(g_queues); }

bool set_async(bool on) {
    bool was = config().async;
    if (was && !on) drain_all();
    config().async = on;
    return was;
}

// ---------------------------------------------------------------- kernels as operations
CUresult submit_launch(Queue* q, Kernel* k, const LaunchConfig& cfg, std::vector<uint8_t> params) {
    auto op = std::make_unique<Op>();
    op->kernel = true;
    op->what = "kernel " + kernel_info(k).name;
    op->run = [k, cfg, params = std::move(params)](Op& self) mutable {
        AccessLog log;
        LaunchConfig c = cfg;
        c.params = params.data();
        if (config().streamcheck) c.access = &log;
        LaunchCounts counts;
        std::string report;
        int rc = launch(k, c, &counts, &report);
        const KernelInfo& info = kernel_info(k);
        record_launch(info, c, counts);
        if (rc) set_last_report(report.empty() ? "launch of " + info.name + " failed" : report, true);
        for (const AccessSpan& s : log.spans) {
            if (s.rhi) self.touches.push_back(Touch{s.rlo, s.rhi, false});
            if (s.whi) self.touches.push_back(Touch{s.wlo, s.whi, true});
        }
        return CUresult(rc);
    };
    return submit(q, std::move(op));
}

}  // namespace softgpu
