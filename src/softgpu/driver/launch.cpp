// driver/launch.cpp: kernel launches (limits, parameter packing, failure reporting) and the
// cuOccupancy* entry points over exec/occupancy.cpp's calculator.
#include <cstring>

#include "runtime/stream_queue.hpp"

using namespace softgpu;

namespace {

// Why a launch is refused, or empty when it is within the limits.
std::string check_limits(const KernelInfo& info, const uint32_t* grid, const uint32_t* block, uint32_t smem,
                         bool cooperative, CUresult* code) {
    *code = CUDA_ERROR_INVALID_VALUE;
    const uint32_t max_grid[3] = {2147483647u, 65535u, 65535u};
    const uint32_t max_block[3] = {1024u, 1024u, 64u};
    const char* axis = "xyz";
    for (int i = 0; i < 3; ++i) {
        if (grid[i] == 0 || grid[i] > max_grid[i])
            return std::string("gridDim.") + axis[i] + " = " + std::to_string(grid[i]) + " is outside 1.." +
                   std::to_string(max_grid[i]);
        if (block[i] == 0 || block[i] > max_block[i])
            return std::string("blockDim.") + axis[i] + " = " + std::to_string(block[i]) + " is outside 1.." +
                   std::to_string(max_block[i]);
    }
    const DeviceProfile& p = device_profile();
    uint64_t threads = uint64_t(block[0]) * block[1] * block[2];
    if (threads > declared_max_threads(info))
        return std::to_string(threads) + " threads per block exceed the kernel's limit of " +
               std::to_string(declared_max_threads(info));
    if (threads > register_limited_threads(info)) {
        *code = CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
        return std::to_string(threads) + " threads of " + std::to_string(kernel_registers(info)) +
               " registers each need more than the " + std::to_string(p.registers_per_block) +
               " registers a block may have on " + p.name + " (at most " +
               std::to_string(register_limited_threads(info)) + " threads)";
    }
    if (info.reqntid[0] && (block[0] != info.reqntid[0] || block[1] != std::max(info.reqntid[1], 1u) ||
                            block[2] != std::max(info.reqntid[2], 1u)))
        return "the block shape differs from the kernel's .reqntid";
    if (smem > info.max_dynamic_smem)
        return std::to_string(smem) + " bytes of dynamic shared memory exceed the kernel's limit of " +
               std::to_string(info.max_dynamic_smem) + " (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)";
    if (uint64_t(smem) + info.static_smem > p.smem_optin_per_block)
        return std::to_string(uint64_t(smem) + info.static_smem) + " bytes of shared memory exceed the " +
               std::to_string(p.smem_optin_per_block) + "-byte per-block maximum";
    if (cooperative) {
        uint64_t blocks = uint64_t(grid[0]) * grid[1] * grid[2];
        uint64_t resident = uint64_t(occupancy(info, uint32_t(threads), smem)) * uint64_t(p.sm_count);
        if (blocks > resident) {
            *code = CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE;
            return "cooperative grid of " + std::to_string(blocks) + " blocks exceeds the " +
                   std::to_string(resident) + " that can be co-resident";
        }
    }
    return "";
}

// Fills the packed parameter buffer from kernelParams or from extra; false if they are unusable.
bool pack_params(const KernelInfo& info, void** kernelParams, void** extra, std::vector<uint8_t>* buf) {
    buf->assign(info.param_bytes, 0);
    if (kernelParams && extra) return false;
    if (kernelParams) {
        for (size_t i = 0; i < info.params.size(); ++i) {
            if (!kernelParams[i]) return false;
            memcpy(buf->data() + info.params[i].offset, kernelParams[i], info.params[i].size);
        }
        return true;
    }
    if (extra) {
        const void* src = nullptr;
        size_t size = 0;
        bool have_size = false;
        for (size_t i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) src = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE && extra[i + 1])
                size = *static_cast<size_t*>(extra[i + 1]), have_size = true;
            else return false;
        }
        if (!src || !have_size || size < info.param_bytes) return false;
        memcpy(buf->data(), src, info.param_bytes);
        return true;
    }
    return info.param_bytes == 0;
}

CUresult launch_kernel(CUfunction f, const uint32_t* grid, const uint32_t* block, uint32_t smem, CUstream s,
                       void** kernelParams, void** extra, bool cooperative, bool ptds) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_function(f) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (f->mod->ctx != ctx) return CUDA_ERROR_INVALID_CONTEXT;
    KernelInfo& info = kernel_info(f->kernel);
    CUresult code;
    std::string why = check_limits(info, grid, block, smem, cooperative, &code);
    if (!why.empty()) {
        set_last_report("launch of " + info.name + " refused: " + why, false);
        return code;
    }
    std::vector<uint8_t> params;
    if (!pack_params(info, kernelParams, extra, &params)) {
        set_last_report("launch of " + info.name + " refused: kernelParams/extra do not supply its " +
                            std::to_string(info.param_bytes) + " bytes of parameters",
                        false);
        return CUDA_ERROR_INVALID_VALUE;
    }
    LaunchConfig cfg;
    for (int i = 0; i < 3; ++i) cfg.grid[i] = grid[i], cfg.block[i] = block[i];
    cfg.dynamic_smem = smem;
    cfg.cooperative = cooperative;
    cfg.params = params.data();
    // Runs now (returning a failure, also kept for the stream's next synchronize) or on the async worker.
    return submit_launch(queue_of(s, ctx, ptds), f->kernel, cfg, std::move(params));
}

CUresult launch_plain(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                      unsigned smem, CUstream s, void** params, void** extra, bool cooperative, bool ptds) {
    const uint32_t grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    return launch_kernel(f, grid, block, smem, s, params, extra, cooperative, ptds);
}

CUresult launch_ex(const CUlaunchConfig* config, CUfunction f, void** params, void** extra, bool ptds) {
    if (!config || (config->numAttrs && !config->attrs)) return CUDA_ERROR_INVALID_VALUE;
    bool cooperative = false;
    for (unsigned i = 0; i < config->numAttrs; ++i) {
        const CUlaunchAttribute& a = config->attrs[i];
        if (a.id == CU_LAUNCH_ATTRIBUTE_COOPERATIVE) cooperative = a.value.cooperative != 0;
        else if (a.id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION &&
                 a.value.clusterDim.x * a.value.clusterDim.y * a.value.clusterDim.z > 1)
            return CUDA_ERROR_NOT_SUPPORTED;  // thread block clusters (sm_90) are not modelled
    }
    const uint32_t grid[3] = {config->gridDimX, config->gridDimY, config->gridDimZ};
    const uint32_t block[3] = {config->blockDimX, config->blockDimY, config->blockDimZ};
    return launch_kernel(f, grid, block, config->sharedMemBytes, config->hStream, params, extra, cooperative, ptds);
}

}  // namespace

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int smem, CUstream s, void** params, void** extra) {
    return launch_plain(f, gx, gy, gz, bx, by, bz, smem, s, params, extra, false, false);
}
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                             unsigned int by, unsigned int bz, unsigned int smem, CUstream s, void** params,
                             void** extra) {
    return launch_plain(f, gx, gy, gz, bx, by, bz, smem, s, params, extra, false, true);
}
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                   unsigned int by, unsigned int bz, unsigned int smem, CUstream s, void** params) {
    return launch_plain(f, gx, gy, gz, bx, by, bz, smem, s, params, nullptr, true, false);
}
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem,
                                        CUstream s, void** params) {
    return launch_plain(f, gx, gy, gz, bx, by, bz, smem, s, params, nullptr, true, true);
}
CUresult cuLaunchKernelEx(const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
    return launch_ex(c, f, params, extra, false);
}
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
    return launch_ex(c, f, params, extra, true);
}

// ---------------------------------------------------------------- occupancy
namespace {
CUresult occupancy_blocks(int* numBlocks, CUfunction func, int blockSize, size_t smem) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!numBlocks || blockSize <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_function(func)) return CUDA_ERROR_INVALID_HANDLE;
    *numBlocks = int(occupancy(kernel_info(func->kernel), uint32_t(blockSize), smem));
    return CUDA_SUCCESS;
}

CUresult potential_block_size(int* minGridSize, int* blockSize, CUfunction func, CUoccupancyB2DSize b2d,
                              size_t smem, int limit) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!minGridSize || !blockSize || limit < 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_function(func)) return CUDA_ERROR_INVALID_HANDLE;
    const KernelInfo& info = kernel_info(func->kernel);
    uint32_t max = function_max_threads(info);
    if (limit > 0) max = std::min(max, uint32_t(limit));
    uint32_t best_threads = 0, best_blocks = 0, best_active = 0;
    // Largest resident thread count wins; ties go to the larger block, as the CUDA calculator does.
    for (uint32_t t = (max + 31) / 32 * 32; t >= 32; t -= 32) {
        uint32_t threads = std::min(t, max);
        size_t dyn = b2d ? b2d(int(threads)) : smem;
        uint32_t blocks = occupancy(info, threads, dyn);
        if (blocks * threads > best_active) best_active = blocks * threads, best_threads = threads, best_blocks = blocks;
    }
    *blockSize = int(best_threads);
    *minGridSize = int(best_blocks * uint32_t(device_profile().sm_count));
    return CUDA_SUCCESS;
}
}  // namespace

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, CUfunction f, int blockSize, size_t smem) {
    return occupancy_blocks(n, f, blockSize, smem);
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, CUfunction f, int blockSize, size_t smem,
                                                              unsigned int flags) {
    if (flags & ~unsigned(CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE)) return CUDA_ERROR_INVALID_VALUE;
    return occupancy_blocks(n, f, blockSize, smem);
}
CUresult cuOccupancyMaxPotentialBlockSize(int* minGridSize, int* blockSize, CUfunction f, CUoccupancyB2DSize b2d,
                                          size_t smem, int limit) {
    return potential_block_size(minGridSize, blockSize, f, b2d, smem, limit);
}
CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int* minGridSize, int* blockSize, CUfunction f,
                                                   CUoccupancyB2DSize b2d, size_t smem, int limit, unsigned int flags) {
    if (flags & ~unsigned(CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE)) return CUDA_ERROR_INVALID_VALUE;
    return potential_block_size(minGridSize, blockSize, f, b2d, smem, limit);
}
CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t* dynamicSmemSize, CUfunction f, int numBlocks, int blockSize) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!dynamicSmemSize || numBlocks <= 0 || blockSize <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_function(f)) return CUDA_ERROR_INVALID_HANDLE;
    const KernelInfo& info = kernel_info(f->kernel);
    const DeviceProfile& p = device_profile();
    // Each of numBlocks blocks gets an allocation-unit multiple that includes the driver's reserve.
    uint64_t unit = p.smem_alloc_unit;
    uint64_t per_block = p.smem_per_sm / uint64_t(numBlocks) / unit * unit;
    uint64_t used = uint64_t(p.smem_reserved_per_block) + info.static_smem;
    uint64_t avail = per_block > used ? per_block - used : 0;
    if (occupancy(info, uint32_t(blockSize), 0) < uint32_t(numBlocks)) avail = 0;  // not even without dynamic smem
    *dynamicSmemSize = std::min<uint64_t>(avail, std::min<uint64_t>(info.max_dynamic_smem, p.smem_optin_per_block - info.static_smem));
    return CUDA_SUCCESS;
}

// The executor's resident-block count (softgpu.hpp) comes from the same occupancy calculation.
Residency softgpu::residency(const KernelInfo& info, uint32_t threads, uint64_t dynamic_smem) {
    return Residency{std::max(occupancy(info, threads, dynamic_smem), 1u), uint32_t(device_profile().sm_count)};
}
