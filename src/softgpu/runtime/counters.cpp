// runtime/counters.cpp: exact traffic counters of kernel launches and copies, and their JSON form.
#include <cstdio>

#include "driver/driver.hpp"

namespace softgpu {

namespace {
constexpr size_t kRecentLaunches = 4096;
Traffic g_traffic;

void add(KernelCounters& into, const KernelCounters& c) {
    into.launches += c.launches;
    into.thread_instructions += c.thread_instructions;
    into.global_load_bytes += c.global_load_bytes;
    into.global_store_bytes += c.global_store_bytes;
    into.atomics += c.atomics;
    into.shared_bytes += c.shared_bytes;
}

// A tiny JSON writer: objects of numbers and strings are all the counters need.
struct Json {
    std::string out;
    bool first = true;
    void open(char c) { out += c; first = true; }
    void close(char c) { out += c; first = false; }
    void key(const char* k) {
        if (!first) out += ',';
        first = false;
        str(k);
        out += ':';
    }
    void str(const std::string& s) {
        out += '"';
        for (unsigned char ch : s) {
            if (ch == '"' || ch == '\\') out += '\\', out += char(ch);
            else if (ch < 0x20) {
                char buf[8];
                snprintf(buf, sizeof buf, "\\u%04x", ch);
                out += buf;
            } else out += char(ch);
        }
        out += '"';
    }
    void num(const char* k, uint64_t v) { key(k); out += std::to_string(v); }
    void item() { if (!first) out += ','; first = false; }
    void dims(const char* k, const uint32_t* d) {
        key(k);
        out += "[" + std::to_string(d[0]) + "," + std::to_string(d[1]) + "," + std::to_string(d[2]) + "]";
    }
    void kernel_counters(const KernelCounters& c, bool with_kernel_facts) {
        open('{');
        num("launches", c.launches);
        num("thread_instructions", c.thread_instructions);
        num("global_load_bytes", c.global_load_bytes);
        num("global_store_bytes", c.global_store_bytes);
        num("atomics", c.atomics);
        num("shared_bytes", c.shared_bytes);
        if (with_kernel_facts) {
            num("registers", uint64_t(c.registers));
            num("static_smem", c.static_smem);
            num("dynamic_smem", c.dynamic_smem);
        }
        close('}');
    }
};
}  // namespace

Counters& counters() {
    static Counters c;
    return c;
}

Traffic& traffic() { return g_traffic; }

void record_launch(const KernelInfo& info, const LaunchConfig& cfg, const LaunchCounts& counts) {
    Counters& c = counters();
    KernelCounters one = counts;
    one.launches = 1;
    one.registers = int(kernel_registers(info));  // as ptxas allocates (CU_FUNC_ATTRIBUTE_NUM_REGS)
    one.static_smem = info.static_smem;
    one.dynamic_smem = cfg.dynamic_smem;
    add(c.total, one);
    KernelCounters& k = c.per_kernel[info.name];
    add(k, one);
    k.registers = one.registers;
    k.static_smem = one.static_smem;
    k.dynamic_smem = one.dynamic_smem;
    LaunchRecord r;
    r.kernel = info.name;
    for (int i = 0; i < 3; ++i) r.grid[i] = cfg.grid[i], r.block[i] = cfg.block[i];
    r.dynamic_smem = cfg.dynamic_smem;
    r.counts = one;
    // Bounded: drop the oldest half at once so the amortised cost stays O(1).
    if (c.launches.size() >= 2 * kRecentLaunches)
        c.launches.erase(c.launches.begin(), c.launches.end() - (kRecentLaunches - 1));
    c.launches.push_back(std::move(r));
}

void reset_counters() {
    counters() = Counters();
    g_traffic = Traffic();
}

std::string counters_json() {
    Counters& c = counters();
    Json j;
    j.open('{');
    j.key("total");
    j.kernel_counters(c.total, false);
    j.key("per_kernel");
    j.open('{');
    for (auto& kv : c.per_kernel) {
        j.key(kv.first.c_str());
        j.kernel_counters(kv.second, true);
    }
    j.close('}');
    j.key("launches");
    j.open('[');
    size_t n = c.launches.size(), start = n > kRecentLaunches ? n - kRecentLaunches : 0;
    for (size_t i = start; i < n; ++i) {
        const LaunchRecord& r = c.launches[i];
        j.item();
        j.open('{');
        j.key("kernel");
        j.str(r.kernel);
        j.dims("grid", r.grid);
        j.dims("block", r.block);
        j.num("dynamic_smem", r.dynamic_smem);
        j.key("counts");
        j.kernel_counters(r.counts, false);
        j.close('}');
    }
    j.close(']');
    j.key("memcpy");
    j.open('{');
    j.num("htod_bytes", g_traffic.htod_bytes);
    j.num("dtoh_bytes", g_traffic.dtoh_bytes);
    j.num("dtod_bytes", g_traffic.dtod_bytes);
    j.num("htoh_bytes", g_traffic.htoh_bytes);
    j.num("calls", g_traffic.memcpy_calls);
    j.close('}');
    j.key("memset");
    j.open('{');
    j.num("bytes", g_traffic.memset_bytes);
    j.num("calls", g_traffic.memset_calls);
    j.close('}');
    LiveCounts live = live_allocations();
    j.key("live_allocations");
    j.open('{');
    j.num("device_count", live.device_count);
    j.num("device_bytes", live.device_bytes);
    j.num("pinned_count", live.pinned_count);
    j.num("pinned_bytes", live.pinned_bytes);
    j.close('}');
    j.close('}');
    return j.out;
}

}  // namespace softgpu
