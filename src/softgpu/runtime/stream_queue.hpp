// runtime/stream_queue.hpp: stream work as queued operations. By default an operation runs when it is
// enqueued (inline); with CYBN_SOFTGPU_ASYNC=1 one worker thread runs them in stream order,
// asynchronously to the host. Either way errors stay with the stream that ran the failing work,
// and streamcheck orders operations by vector clocks built from the API calls.
#pragma once

#include <deque>

#include "driver/driver.hpp"

namespace softgpu {

// clock[slot]: how many operations of the queue with that slot are ordered before (happen-before).
using VClock = std::vector<uint64_t>;

// A byte range [lo, hi) of global or pinned memory an operation reads or writes (streamcheck).
struct Touch {
    uint64_t lo, hi;
    bool write;
};

struct Queue;
struct Op {
    std::string what;                  // "kernel k", "memcpy HtoD of 64 bytes", ... for reports
    std::function<CUresult(Op&)> run;  // under the lock, except host functions
    bool host_fn = false;
    bool kernel = false;               // its failure is a kernel fault (sticky mode)
    bool marker = false;               // no work of its own (event record, wait): runs at once on an idle queue
    std::vector<std::pair<std::shared_ptr<Queue>, uint64_t>> deps;  // (queue, seq) that must complete first
    std::vector<Touch> touches;        // copies and memsets: at enqueue; kernels: filled in by run
    VClock clock;                      // callers may pre-fill it with extra happens-before (event waits)
    uint64_t seq = 0;
    std::shared_ptr<CUresult> outcome; // when set, receives the result (callers that wait for this op)
};

struct Queue : std::enable_shared_from_this<Queue> {
    CUctx_st* ctx = nullptr;
    bool legacy = false;
    bool blocking = true;  // ordered with the legacy default stream (not CU_STREAM_NON_BLOCKING)
    std::string label;     // "stream 3", "the legacy default stream", ...
    uint32_t slot = 0;     // index in vector clocks
    std::deque<std::unique_ptr<Op>> ops;
    bool running = false;
    uint64_t enqueued = 0, completed = 0;
    CUresult pending = CUDA_SUCCESS;  // the first failure not yet delivered to a synchronize
    VClock clock;                     // of the last operation enqueued
    ~Queue();
};

std::shared_ptr<Queue> new_queue(CUctx_st* ctx, bool legacy, bool blocking, const std::string& label);
// The queue a stream handle names in ctx: null is the legacy stream (the per-thread one when ptds),
// CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, or a created stream.
Queue* queue_of(CUstream s, CUctx_st* ctx, bool ptds);
// Inline mode runs op now and returns its result; async mode queues it and returns CUDA_SUCCESS.
CUresult submit(Queue* q, std::unique_ptr<Op> op);
// A kernel launch as an operation (the limits are checked, the parameters packed).
CUresult submit_launch(Queue* q, Kernel* k, const LaunchConfig& cfg, std::vector<uint8_t> params);
// Waits for everything enqueued on q so far (for the legacy stream also the blocking streams it
// waits for) and returns, then clears, the errors of that work. Sticky errors are returned, kept.
CUresult sync_queue(Queue* q);
CUresult sync_context(CUctx_st* ctx);
bool queue_busy(Queue* q);  // cuStreamQuery: work pending (legacy: also the blocking streams)
bool wait_seq(Queue* q, uint64_t seq);  // false: refused inside a host function
CUresult take_pending(Queue* q);
// Waits for all work (of ctx, or everywhere) without taking its errors: frees, unloads, destroys.
void drain_context(CUctx_st* ctx);
void drain_all();
void note_host_sync(const VClock& c);  // the host has waited for work up to c (streamcheck)
void join_clock(VClock& into, const VClock& c);
bool set_async(bool on);  // returns the previous mode; switching off drains first

// runtime/streamcheck.cpp: compares op (about to run on q, or just run for a kernel) with earlier
// operations of other queues; on a conflict without happens-before it reports both and returns
// CUDA_ERROR_LAUNCH_FAILED. record() remembers op; forget() drops what the host clock orders.
CUresult streamcheck(const Queue& q, const Op& op);
void streamcheck_record(const Queue& q, const Op& op);
void streamcheck_forget(const VClock& host);

}  // namespace softgpu
