// runtime/streamcheck.cpp: two operations on different streams that touch overlapping bytes of global or
// pinned memory, at least one writing, with no happens-before between them. An operation A on
// queue slot i happens before B when B's vector clock has clock[i] >= A's position in its queue.
#include <cstdio>

#include "runtime/stream_queue.hpp"

namespace softgpu {

namespace {

struct Past {
    std::string what, label;
    uint32_t slot;
    uint64_t seq;
    std::vector<Touch> touches;
};
std::deque<Past> g_past;
constexpr size_t kMaxPast = 4096;  // oldest forgotten first (a missed report, never a false one)

std::string hex(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)v);
    return buf;
}

std::string range(const Touch& t) {
    return (t.write ? "writes " : "reads ") + std::to_string(t.hi - t.lo) + " bytes [" + hex(t.lo) + ", " + hex(t.hi) +
           ") (" + describe_address(t.lo) + ")";
}

bool ordered(const Past& p, const Op& op) { return op.clock.size() > p.slot && op.clock[p.slot] >= p.seq; }

}  // namespace

CUresult streamcheck(const Queue& q, const Op& op) {
    for (auto it = g_past.rbegin(); it != g_past.rend(); ++it) {
        const Past& p = *it;
        if (p.slot == q.slot || ordered(p, op)) continue;
        for (const Touch& a : p.touches)
            for (const Touch& b : op.touches) {
                if (!(a.write || b.write) || a.lo >= b.hi || b.lo >= a.hi) continue;
                set_last_report("streamcheck: " + op.what + " on " + q.label + " " + range(b) + ", but " + p.what +
                                    " on " + p.label + " " + range(a) +
                                    " with no ordering between them (no event, stream wait or synchronize); " +
                                    op.what + " fails with CUDA_ERROR_LAUNCH_FAILED",
                                true);
                return CUDA_ERROR_LAUNCH_FAILED;
            }
    }
    return CUDA_SUCCESS;
}

void streamcheck_record(const Queue& q, const Op& op) {
    if (op.touches.empty()) return;
    if (g_past.size() >= kMaxPast) g_past.pop_front();
    g_past.push_back(Past{op.what, q.label, q.slot, op.seq, op.touches});
}

void streamcheck_forget(const VClock& host) {
    // Everything enqueued later joins the host clock, so what it covers can never race again.
    for (auto it = g_past.begin(); it != g_past.end();)
        it = host.size() > it->slot && host[it->slot] >= it->seq ? g_past.erase(it) : std::next(it);
}

}  // namespace softgpu
