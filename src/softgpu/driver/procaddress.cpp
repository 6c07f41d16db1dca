// driver/procaddress.cpp: cuGetProcAddress, through which cuda.bindings resolves every entry
// point by base name and CUDA version ("cuMemAlloc"@3020 -> cuMemAlloc_v2).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "driver/driver.hpp"

using namespace softgpu;

// Declared here: cuda.h has no prototype for these two variants.
SG_EXPORT CUresult cuCtxCreate_v4(CUcontext*, CUctxCreateParams*, unsigned int, CUdevice);
SG_EXPORT CUresult cuEventElapsedTime_v2(float*, CUevent, CUevent);

namespace {

// One variant of a named entry point, valid from version `since`. fn == null marks a variant
// we do not implement, so a request for it is refused instead of getting an older signature.
struct Variant {
    const char* name;
    int since;
    void* fn;
};

#define FN(f) reinterpret_cast<void*>(&f)

const Variant kTable[] = {
    {"cuInit", 0, FN(cuInit)},
    {"cuDriverGetVersion", 0, FN(cuDriverGetVersion)},
    {"cuGetProcAddress", 0, FN(cuGetProcAddress)},
    {"cuGetProcAddress", 12000, FN(cuGetProcAddress_v2)},
    {"cuGetErrorName", 0, FN(cuGetErrorName)},
    {"cuGetErrorString", 0, FN(cuGetErrorString)},
    {"cuGetExportTable", 0, FN(cuGetExportTable)},
    // devices
    {"cuDeviceGet", 0, FN(cuDeviceGet)},
    {"cuDeviceGetCount", 0, FN(cuDeviceGetCount)},
    {"cuDeviceGetName", 0, FN(cuDeviceGetName)},
    {"cuDeviceGetAttribute", 0, FN(cuDeviceGetAttribute)},
    {"cuDeviceTotalMem", 3020, FN(cuDeviceTotalMem_v2)},
    {"cuDeviceGetUuid", 0, FN(cuDeviceGetUuid)},
    {"cuDeviceGetUuid", 11040, FN(cuDeviceGetUuid_v2)},
    {"cuDeviceComputeCapability", 0, FN(cuDeviceComputeCapability)},
    {"cuDeviceGetProperties", 0, FN(cuDeviceGetProperties)},
    {"cuDeviceGetPCIBusId", 0, FN(cuDeviceGetPCIBusId)},
    {"cuDeviceGetByPCIBusId", 0, FN(cuDeviceGetByPCIBusId)},
    {"cuDeviceCanAccessPeer", 0, FN(cuDeviceCanAccessPeer)},
    {"cuDevicePrimaryCtxRetain", 0, FN(cuDevicePrimaryCtxRetain)},
    {"cuDevicePrimaryCtxRelease", 0, FN(cuDevicePrimaryCtxRelease)},
    {"cuDevicePrimaryCtxRelease", 11000, FN(cuDevicePrimaryCtxRelease_v2)},
    {"cuDevicePrimaryCtxReset", 0, FN(cuDevicePrimaryCtxReset)},
    {"cuDevicePrimaryCtxReset", 11000, FN(cuDevicePrimaryCtxReset_v2)},
    {"cuDevicePrimaryCtxSetFlags", 0, FN(cuDevicePrimaryCtxSetFlags)},
    {"cuDevicePrimaryCtxSetFlags", 11000, FN(cuDevicePrimaryCtxSetFlags_v2)},
    {"cuDevicePrimaryCtxGetState", 0, FN(cuDevicePrimaryCtxGetState)},
    // contexts
    {"cuCtxCreate", 3020, FN(cuCtxCreate_v2)},
    {"cuCtxCreate", 11040, FN(cuCtxCreate_v3)},
    {"cuCtxCreate", 12050, FN(cuCtxCreate_v4)},
    {"cuCtxDestroy", 0, FN(cuCtxDestroy)},
    {"cuCtxDestroy", 4000, FN(cuCtxDestroy_v2)},
    {"cuCtxPushCurrent", 0, FN(cuCtxPushCurrent)},
    {"cuCtxPushCurrent", 4000, FN(cuCtxPushCurrent_v2)},
    {"cuCtxPopCurrent", 0, FN(cuCtxPopCurrent)},
    {"cuCtxPopCurrent", 4000, FN(cuCtxPopCurrent_v2)},
    {"cuCtxSetCurrent", 0, FN(cuCtxSetCurrent)},
    {"cuCtxGetCurrent", 0, FN(cuCtxGetCurrent)},
    {"cuCtxGetDevice", 0, FN(cuCtxGetDevice)},
    {"cuCtxGetDevice", 13000, FN(cuCtxGetDevice_v2)},
    {"cuCtxSynchronize", 0, FN(cuCtxSynchronize)},
    {"cuCtxSynchronize", 13000, FN(cuCtxSynchronize_v2)},
    {"cuCtxGetApiVersion", 0, FN(cuCtxGetApiVersion)},
    {"cuCtxGetFlags", 0, FN(cuCtxGetFlags)},
    {"cuCtxSetFlags", 0, FN(cuCtxSetFlags)},
    {"cuCtxGetId", 0, FN(cuCtxGetId)},
    {"cuCtxGetStreamPriorityRange", 0, FN(cuCtxGetStreamPriorityRange)},
    {"cuCtxGetLimit", 0, FN(cuCtxGetLimit)},
    {"cuCtxSetLimit", 0, FN(cuCtxSetLimit)},
    {"cuCtxGetCacheConfig", 0, FN(cuCtxGetCacheConfig)},
    {"cuCtxSetCacheConfig", 0, FN(cuCtxSetCacheConfig)},
    // memory
    {"cuMemAlloc", 3020, FN(cuMemAlloc_v2)},
    {"cuMemAllocPitch", 3020, FN(cuMemAllocPitch_v2)},
    {"cuMemAllocAsync", 0, FN(cuMemAllocAsync)},
    {"cuMemFree", 3020, FN(cuMemFree_v2)},
    {"cuMemFreeAsync", 0, FN(cuMemFreeAsync)},
    {"cuMemGetInfo", 3020, FN(cuMemGetInfo_v2)},
    {"cuMemGetAddressRange", 3020, FN(cuMemGetAddressRange_v2)},
    {"cuMemAllocHost", 3020, FN(cuMemAllocHost_v2)},
    {"cuMemFreeHost", 0, FN(cuMemFreeHost)},
    {"cuMemHostAlloc", 0, FN(cuMemHostAlloc)},
    {"cuMemHostGetDevicePointer", 3020, FN(cuMemHostGetDevicePointer_v2)},
    {"cuMemHostGetFlags", 0, FN(cuMemHostGetFlags)},
    {"cuMemHostRegister", 0, FN(cuMemHostRegister)},
    {"cuMemHostRegister", 6050, FN(cuMemHostRegister_v2)},
    {"cuMemHostUnregister", 0, FN(cuMemHostUnregister)},
    {"cuMemcpy", 0, FN(cuMemcpy)},
    {"cuMemcpyAsync", 0, FN(cuMemcpyAsync)},
    {"cuMemcpyHtoD", 3020, FN(cuMemcpyHtoD_v2)},
    {"cuMemcpyDtoH", 3020, FN(cuMemcpyDtoH_v2)},
    {"cuMemcpyDtoD", 3020, FN(cuMemcpyDtoD_v2)},
    {"cuMemcpyHtoDAsync", 3020, FN(cuMemcpyHtoDAsync_v2)},
    {"cuMemcpyDtoHAsync", 3020, FN(cuMemcpyDtoHAsync_v2)},
    {"cuMemcpyDtoDAsync", 3020, FN(cuMemcpyDtoDAsync_v2)},
    {"cuMemsetD8", 3020, FN(cuMemsetD8_v2)},
    {"cuMemsetD16", 3020, FN(cuMemsetD16_v2)},
    {"cuMemsetD32", 3020, FN(cuMemsetD32_v2)},
    {"cuMemsetD8Async", 0, FN(cuMemsetD8Async)},
    {"cuMemsetD16Async", 0, FN(cuMemsetD16Async)},
    {"cuMemsetD32Async", 0, FN(cuMemsetD32Async)},
    {"cuPointerGetAttribute", 0, FN(cuPointerGetAttribute)},
    {"cuPointerGetAttributes", 0, FN(cuPointerGetAttributes)},
    // modules and functions
    {"cuModuleLoadData", 0, FN(cuModuleLoadData)},
    {"cuModuleLoadDataEx", 0, FN(cuModuleLoadDataEx)},
    {"cuModuleUnload", 0, FN(cuModuleUnload)},
    {"cuModuleGetFunction", 0, FN(cuModuleGetFunction)},
    {"cuModuleGetGlobal", 3020, FN(cuModuleGetGlobal_v2)},
    {"cuModuleGetFunctionCount", 0, FN(cuModuleGetFunctionCount)},
    {"cuFuncGetAttribute", 0, FN(cuFuncGetAttribute)},
    {"cuFuncSetAttribute", 0, FN(cuFuncSetAttribute)},
    {"cuFuncSetCacheConfig", 0, FN(cuFuncSetCacheConfig)},
    {"cuFuncGetName", 0, FN(cuFuncGetName)},
    {"cuFuncGetModule", 0, FN(cuFuncGetModule)},
    {"cuFuncGetParamInfo", 0, FN(cuFuncGetParamInfo)},
    {"cuFuncGetParamCount", 0, FN(cuFuncGetParamCount)},
    {"cuLaunchKernel", 0, FN(cuLaunchKernel)},
    {"cuLaunchKernelEx", 0, FN(cuLaunchKernelEx)},
    {"cuLaunchCooperativeKernel", 0, FN(cuLaunchCooperativeKernel)},
    {"cuLaunchHostFunc", 0, FN(cuLaunchHostFunc)},
    {"cuLaunchHostFunc", 13020, FN(cuLaunchHostFunc_v2)},
    {"cuOccupancyMaxActiveBlocksPerMultiprocessor", 0, FN(cuOccupancyMaxActiveBlocksPerMultiprocessor)},
    {"cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", 0, FN(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags)},
    {"cuOccupancyMaxPotentialBlockSize", 0, FN(cuOccupancyMaxPotentialBlockSize)},
    {"cuOccupancyMaxPotentialBlockSizeWithFlags", 0, FN(cuOccupancyMaxPotentialBlockSizeWithFlags)},
    {"cuOccupancyAvailableDynamicSMemPerBlock", 0, FN(cuOccupancyAvailableDynamicSMemPerBlock)},
    // streams and events
    {"cuStreamCreate", 0, FN(cuStreamCreate)},
    {"cuStreamCreateWithPriority", 0, FN(cuStreamCreateWithPriority)},
    {"cuStreamDestroy", 0, FN(cuStreamDestroy)},
    {"cuStreamDestroy", 4000, FN(cuStreamDestroy_v2)},
    {"cuStreamSynchronize", 0, FN(cuStreamSynchronize)},
    {"cuStreamQuery", 0, FN(cuStreamQuery)},
    {"cuStreamWaitEvent", 0, FN(cuStreamWaitEvent)},
    {"cuStreamGetPriority", 0, FN(cuStreamGetPriority)},
    {"cuStreamGetFlags", 0, FN(cuStreamGetFlags)},
    {"cuStreamGetCtx", 0, FN(cuStreamGetCtx)},
    {"cuStreamGetCtx", 12050, nullptr},  // _v2 adds green contexts: not implemented
    {"cuStreamGetId", 0, FN(cuStreamGetId)},
    {"cuEventCreate", 0, FN(cuEventCreate)},
    {"cuEventDestroy", 0, FN(cuEventDestroy)},
    {"cuEventDestroy", 4000, FN(cuEventDestroy_v2)},
    {"cuEventRecord", 0, FN(cuEventRecord)},
    {"cuEventRecordWithFlags", 0, FN(cuEventRecordWithFlags)},
    {"cuEventQuery", 0, FN(cuEventQuery)},
    {"cuEventSynchronize", 0, FN(cuEventSynchronize)},
    {"cuEventElapsedTime", 0, FN(cuEventElapsedTime)},
    {"cuEventElapsedTime", 12080, FN(cuEventElapsedTime_v2)},
};

bool trace() {
    static bool on = getenv("CYBN_SOFTGPU_TRACE") && *getenv("CYBN_SOFTGPU_TRACE") == '1';
    return on;
}

}  // namespace

// Per-thread-default-stream requests (flag or _ptsz/_ptds names) get the same functions: the
// per-thread stream behaves as the legacy stream on the software GPU.
CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult* symbolStatus) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    (void)flags;
    *pfn = nullptr;
    const Variant* best = nullptr;
    bool known = false;
    for (const Variant& v : kTable) {
        if (strcmp(v.name, symbol) != 0) continue;
        known = true;
        if (v.since <= cudaVersion && (!best || v.since > best->since)) best = &v;
    }
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    if (!known || (best && !best->fn)) status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    else if (!best) status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    if (trace())
        fprintf(stderr, "softgpu: cuGetProcAddress(%s, %d, %llu) -> %s\n", symbol, cudaVersion,
                (unsigned long long)flags, status == CU_GET_PROC_ADDRESS_SUCCESS ? "found" : "NOT FOUND");
    if (symbolStatus) *symbolStatus = status;
    if (status != CU_GET_PROC_ADDRESS_SUCCESS) return CUDA_ERROR_NOT_FOUND;
    *pfn = best->fn;
    return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags) {
    return cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, nullptr);
}
