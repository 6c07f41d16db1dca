// driver/profiles.cpp: the devices the software GPU can pretend to be (CYBN_SOFTGPU_PROFILE).
//
// Per-SM limits are those of the compute capability (CUDA C++ Programming Guide, "Technical
// Specifications per Compute Capability"; the occupancy calculator's per-architecture data: 256
// registers per warp allocation unit, 4 register-file sub-partitions, shared memory allocated in
// 128-byte units on sm_8x/9x and 256 on sm_7x, 1 KiB per block reserved by the driver from sm_80).
// Board numbers (SMs, clocks, bus width, L2) are those NVIDIA publishes for each product and its
// driver reports (deviceQuery), so that the memory-bandwidth figure
// 2 * memory clock * bus width / 8 comes out as the data sheet's.
//
// The default "small" profile is an sm_80 part with A100 per-SM limits but 4 SMs: every test
// kernel whose grid is sized from the SM count stays small enough for an interpreter.
#include <cstdlib>
#include <cstring>

#include "driver/driver.hpp"

namespace softgpu {
namespace {

// Fields: name, device name, cc, SMs, threads/SM, blocks/SM, smem/SM, opt-in smem/block,
// reserved smem/block, smem allocation unit, L2 bytes, clock kHz, memory clock kHz, bus bits.
DeviceProfile make(const char* name, const char* device, int major, int minor, int sms, uint32_t threads_sm,
                   uint32_t blocks_sm, uint32_t smem_sm, uint32_t optin, uint32_t reserved, uint32_t smem_unit,
                   uint32_t l2, int clock, int mem_clock, int bus) {
    DeviceProfile p;
    p.name = name;
    p.device_name = device;
    p.cc_major = major;
    p.cc_minor = minor;
    p.sm_count = sms;
    p.max_threads_per_sm = threads_sm;
    p.max_blocks_per_sm = blocks_sm;
    p.smem_per_sm = smem_sm;
    p.smem_optin_per_block = optin;
    p.smem_reserved_per_block = reserved;
    p.smem_alloc_unit = smem_unit;
    p.l2_bytes = l2;
    // sm_80+ can set aside up to 75% of L2 for persisting accesses; sm_75 has no such control.
    p.persisting_l2_max = major >= 8 ? l2 / 4 * 3 : 0;
    p.access_policy_window_max = major >= 8 ? 134213632 : 0;
    p.clock_khz = clock;
    p.memory_clock_khz = mem_clock;
    p.bus_width_bits = bus;
    p.fp64_ratio = (major == 8 && minor == 0) || major == 9 ? 2 : (major == 7 ? 32 : 64);
    return p;
}

const std::vector<DeviceProfile>& all() {
    constexpr uint32_t KiB = 1024, MiB = 1024 * 1024;
    static const std::vector<DeviceProfile> profiles = {
        //    name       device name                         cc     SMs  thr/SM blk/SM smem/SM    opt-in     rsv   unit  L2        clock    memclock  bus
        make("small",   "cybn software GPU",                 8, 0,   4, 2048, 32, 164 * KiB, 163 * KiB, 1 * KiB, 128, 40 * MiB, 1410000, 1215000, 5120),
        make("a100",    "cybn software GPU (A100-SXM4-40GB)", 8, 0, 108, 2048, 32, 164 * KiB, 163 * KiB, 1 * KiB, 128, 40 * MiB, 1410000, 1215000, 5120),
        make("h100",    "cybn software GPU (H100 SXM5)",     9, 0, 132, 2048, 32, 228 * KiB, 227 * KiB, 1 * KiB, 128, 50 * MiB, 1980000, 2619000, 5120),
        make("h200",    "cybn software GPU (H200 SXM)",      9, 0, 132, 2048, 32, 228 * KiB, 227 * KiB, 1 * KiB, 128, 50 * MiB, 1980000, 3201000, 6144),
        make("l4",      "cybn software GPU (L4)",            8, 9,  58, 1536, 24, 100 * KiB,  99 * KiB, 1 * KiB, 128, 48 * MiB, 2040000, 6251000, 192),
        make("t4",      "cybn software GPU (Tesla T4)",      7, 5,  40, 1024, 16,  64 * KiB,  64 * KiB, 0,       256,  4 * MiB, 1590000, 5001000, 256),
        make("rtx4090", "cybn software GPU (GeForce RTX 4090)", 8, 9, 128, 1536, 24, 100 * KiB, 99 * KiB, 1 * KiB, 128, 72 * MiB, 2520000, 10501000, 384),
    };
    return profiles;
}

std::string g_profile_error;

const DeviceProfile& choose() {
    const char* env = getenv("CYBN_SOFTGPU_PROFILE");
    std::string want = env && *env ? env : "small";
    for (const DeviceProfile& p : all())
        if (want == p.name) return p;
    g_profile_error = "CYBN_SOFTGPU_PROFILE: unknown profile '" + want + "' (expected one of " +
                      profile_names() + ")";
    return all()[0];
}

}  // namespace

const DeviceProfile& device_profile() {
    static const DeviceProfile& p = choose();
    return p;
}

const std::string& profile_error() {
    device_profile();
    return g_profile_error;
}

std::string profile_names() {
    std::string out;
    for (const DeviceProfile& p : all()) out += (out.empty() ? "" : ", ") + std::string(p.name);
    return out;
}

}  // namespace softgpu
