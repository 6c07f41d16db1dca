// driver/softgpu_profile.cpp: the softgpu* C API for the device profile and kernels' register counts
// (cybn/softgpu.py: profile(), function_registers()).
#include "driver/driver.hpp"
#include <cstring>

#include "runtime/jit_cache.hpp"
#include "runtime/jitlink.hpp"
#include "runtime/sha256.hpp"

using namespace softgpu;

namespace {
std::string g_profile_json;
}

// The active profile's name, or null when CYBN_SOFTGPU_PROFILE names none (softgpuProfileError says why).
SG_EXPORT const char* softgpuProfileName(void) {
    SG_LOCK;
    return profile_error().empty() ? device_profile().name : nullptr;
}

SG_EXPORT const char* softgpuProfileError(void) {
    SG_LOCK;
    return profile_error().c_str();
}

// The profile's numbers as a JSON object (every value an integer except the names).
SG_EXPORT const char* softgpuProfileJSON(void) {
    SG_LOCK;
    const DeviceProfile& p = device_profile();
    std::string j = std::string("{\"name\": \"") + p.name + "\", \"device_name\": \"" + p.device_name + "\"";
    auto add = [&](const char* k, long long v) { j += std::string(", \"") + k + "\": " + std::to_string(v); };
    add("cc_major", p.cc_major);
    add("cc_minor", p.cc_minor);
    add("sm_count", p.sm_count);
    add("max_threads_per_block", p.max_threads_per_block);
    add("max_threads_per_sm", p.max_threads_per_sm);
    add("max_warps_per_sm", p.max_warps_per_sm());
    add("max_blocks_per_sm", p.max_blocks_per_sm);
    add("registers_per_sm", p.registers_per_sm);
    add("registers_per_block", p.registers_per_block);
    add("max_registers_per_thread", p.max_registers_per_thread);
    add("register_allocation_unit", p.reg_alloc_unit);
    add("register_sub_partitions", p.sub_partitions);
    add("shared_per_block", p.smem_per_block);
    add("shared_per_sm", p.smem_per_sm);
    add("shared_optin_per_block", p.smem_optin_per_block);
    add("shared_reserved_per_block", p.smem_reserved_per_block);
    add("shared_allocation_unit", p.smem_alloc_unit);
    add("l2_bytes", p.l2_bytes);
    add("clock_khz", p.clock_khz);
    add("memory_clock_khz", p.memory_clock_khz);
    add("bus_width_bits", p.bus_width_bits);
    g_profile_json = j + "}";
    return g_profile_json.c_str();
}

// Where exact register counts come from: the nvJitLink path, why it is unusable, or "" (estimates).
SG_EXPORT const char* softgpuRegisterSource(void) {
    SG_LOCK;
    static std::string s;
    s = register_source_status();
    return s.c_str();
}

// The disk cache of register counts (runtime/jit_cache.cpp), this process: out[0] nvJitLink compiles,
// [1] entries loaded, [2] entries refused.
SG_EXPORT void softgpuJitCacheStats(int* out) {
    SG_LOCK;
    if (out) jit_cache_stats(out);
}

// The hex SHA-256 of data[0..len) into out (65 bytes), so tests can check the cache's hash.
SG_EXPORT void softgpuSha256Hex(const void* data, size_t len, char* out) {
    Sha256 h;
    h.update(data, len);
    std::string s = h.hex();
    memcpy(out, s.c_str(), s.size() + 1);
}

// out[0] registers used for occupancy, [1] the liveness estimate, [2] 1 if [0] is ptxas' exact
// count, [3] spill bytes per thread, [4] registers the PTX declares. Returns a CUresult.
SG_EXPORT int softgpuFunctionRegisters(CUfunction f, int* out) {
    SG_LOCK;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_function(f)) return CUDA_ERROR_INVALID_HANDLE;
    const KernelInfo& info = kernel_info(f->kernel);
    out[0] = int(kernel_registers(info));
    out[1] = info.estimated_regs;
    out[2] = info.regs_exact ? 1 : 0;
    out[3] = info.spill_bytes;
    out[4] = info.num_regs;
    return CUDA_SUCCESS;
}

// Tests: make occupancy and launches see `regs` registers per thread for this kernel, as if ptxas
// had allocated that many (1..255), so occupancy cases can be worked out by hand.
SG_EXPORT int softgpuSetFunctionRegisters(CUfunction f, int regs) {
    SG_LOCK;
    if (!valid_function(f)) return CUDA_ERROR_INVALID_HANDLE;
    if (regs < 1 || regs > int(device_profile().max_registers_per_thread)) return CUDA_ERROR_INVALID_VALUE;
    kernel_info(f->kernel).alloc_regs = regs;
    return CUDA_SUCCESS;
}
