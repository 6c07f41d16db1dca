// exec/occupancy.cpp: resident blocks per SM as NVIDIA's occupancy calculator (cuda_occupancy.h, the
// CUDA Occupancy Calculator) computes them for the active profile, and the per-block register
// limits a launch must meet. cuOccupancy*, the cooperative co-residency limit, MAX_THREADS_PER_BLOCK
// and the launch checks all use these, so they cannot disagree.
//
// Rules (per SM):
//   warps        ceil(threads / 32) per block; blocks <= max warps per SM / warps
//   registers    a warp gets regs * 32 rounded up to the 256-register allocation unit; warps are
//                placed in the 4 sub-partitions of the register file, so an SM holds
//                4 * floor((registers per SM / 4) / per-warp registers) warps; blocks <= that / warps
//   shared       (static + dynamic + the driver's per-block reserve) rounded up to the allocation
//                unit; blocks <= shared memory per SM / that
//   slots        blocks <= max blocks per SM
// A block fits the register file only if per-warp registers * warps <= registers per block, and
// also with warps rounded up to a multiple of the sub-partitions (the hardware's own check);
// otherwise the launch fails with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES.
#include <algorithm>
#include <climits>

#include "driver/driver.hpp"

namespace softgpu {
namespace {

uint64_t round_up(uint64_t v, uint64_t a) { return a ? (v + a - 1) / a * a : v; }

uint32_t regs_per_warp(uint32_t regs) {
    const DeviceProfile& p = device_profile();
    return uint32_t(round_up(uint64_t(regs) * 32, p.reg_alloc_unit));
}

// Can one block of `warps` warps hold its registers at all?
bool block_fits_registers(uint32_t regs, uint32_t warps) {
    const DeviceProfile& p = device_profile();
    uint64_t per_warp = regs_per_warp(regs);
    return per_warp * warps <= p.registers_per_block &&
           per_warp * round_up(warps, p.sub_partitions) <= p.registers_per_block;
}

uint32_t blocks_by_registers(uint32_t regs, uint32_t warps) {
    const DeviceProfile& p = device_profile();
    uint32_t per_warp = regs_per_warp(regs);
    if (per_warp == 0) return UINT32_MAX;
    if (!block_fits_registers(regs, warps)) return 0;
    uint32_t warps_per_sm = (p.registers_per_sm / p.sub_partitions / per_warp) * p.sub_partitions;
    return warps_per_sm / warps;
}

}  // namespace

uint32_t register_limited_threads(const KernelInfo& info) {
    uint32_t regs = kernel_registers(info);
    uint32_t warps = device_profile().max_threads_per_block / 32;
    while (warps > 0 && blocks_by_registers(regs, warps) == 0) --warps;
    return warps * 32;
}

uint32_t declared_max_threads(const KernelInfo& info) {
    uint32_t m = std::min(info.max_threads, device_profile().max_threads_per_block);
    if (info.reqntid[0]) m = std::min(m, info.reqntid[0] * std::max(info.reqntid[1], 1u) * std::max(info.reqntid[2], 1u));
    return m;
}

uint32_t function_max_threads(const KernelInfo& info) {
    return std::min(declared_max_threads(info), register_limited_threads(info));
}

OccupancyLimits occupancy_limits(const KernelInfo& info, uint32_t threads, uint64_t dynamic_smem) {
    const DeviceProfile& p = device_profile();
    OccupancyLimits o;
    uint32_t warps = (threads + 31) / 32;
    uint64_t smem = uint64_t(info.static_smem) + dynamic_smem;
    if (threads == 0 || threads > function_max_threads(info) || smem > p.smem_optin_per_block) return o;
    o.by_slots = p.max_blocks_per_sm;
    o.by_warps = p.max_warps_per_sm() / warps;
    o.by_registers = blocks_by_registers(kernel_registers(info), warps);
    uint64_t smem_alloc = round_up(smem + p.smem_reserved_per_block, p.smem_alloc_unit);
    o.by_shared = smem_alloc ? uint32_t(std::min<uint64_t>(p.smem_per_sm / smem_alloc, UINT32_MAX)) : UINT32_MAX;
    o.blocks = std::min(std::min(o.by_slots, o.by_warps), std::min(o.by_registers, o.by_shared));
    return o;
}

uint32_t occupancy(const KernelInfo& info, uint32_t threads, uint64_t dynamic_smem) {
    return occupancy_limits(info, threads, dynamic_smem).blocks;
}

}  // namespace softgpu
