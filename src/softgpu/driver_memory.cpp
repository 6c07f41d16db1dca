// driver_memory.cpp: cuMem* and cuPointer* entry points. Copies and memsets run at once in the
// calling thread (the Async forms too: stream order is trivially kept).
#include <cstring>

#include "driver.hpp"

using namespace softgpu;

namespace {

bool is_device(const Allocation* a) { return a && a->kind != AllocKind::Pinned; }

// A device-side range must lie wholly inside one live allocation (device, pinned or module global).
const Allocation* device_range(CUdeviceptr p, size_t n) { return find_range(uint64_t(p), n); }

CUresult begin(CUstream s) {
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    return valid_stream(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult htod(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    SG_LOCK;
    if (CUresult r = begin(s)) return r;
    if (n == 0) return CUDA_SUCCESS;
    const Allocation* d = device_range(dst, n);
    if (!d || !src) return CUDA_ERROR_INVALID_VALUE;
    memmove(reinterpret_cast<void*>(dst), src, n);
    mark_initialized(*d, dst, n);
    traffic().htod_bytes += n;
    traffic().memcpy_calls++;
    return CUDA_SUCCESS;
}

CUresult dtoh(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    SG_LOCK;
    if (CUresult r = begin(s)) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!dst || !device_range(src, n)) return CUDA_ERROR_INVALID_VALUE;
    // Copying unwritten bytes out is not a finding: only a kernel that reads them is.
    memmove(dst, reinterpret_cast<const void*>(src), n);
    traffic().dtoh_bytes += n;
    traffic().memcpy_calls++;
    return CUDA_SUCCESS;
}

CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    SG_LOCK;
    if (CUresult r = begin(s)) return r;
    if (n == 0) return CUDA_SUCCESS;
    const Allocation* d = device_range(dst, n);
    const Allocation* sa = device_range(src, n);
    if (!d || !sa) return CUDA_ERROR_INVALID_VALUE;
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    copy_initialized(*d, dst, *sa, src, n);
    traffic().dtod_bytes += n;
    traffic().memcpy_calls++;
    return CUDA_SUCCESS;
}

// cuMemcpy with unified addressing: the direction follows from where each pointer lives.
CUresult unified(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    SG_LOCK;
    if (CUresult r = begin(s)) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!dst || !src) return CUDA_ERROR_INVALID_VALUE;
    const Allocation* d = find_allocation(dst);
    const Allocation* sa = find_allocation(src);
    // A pointer inside an allocation must not run past its end.
    if ((d && !device_range(dst, n)) || (sa && !device_range(src, n))) return CUDA_ERROR_INVALID_VALUE;
    bool dd = is_device(d), sd = is_device(sa);
    if (dd && sd) return dtod(dst, src, n, s);
    if (dd) return htod(dst, reinterpret_cast<const void*>(src), n, s);
    if (sd) return dtoh(reinterpret_cast<void*>(dst), src, n, s);
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    traffic().htoh_bytes += n;
    traffic().memcpy_calls++;
    return CUDA_SUCCESS;
}

CUresult memset_n(CUdeviceptr dst, unsigned value, size_t width, size_t count, CUstream s) {
    SG_LOCK;
    if (CUresult r = begin(s)) return r;
    if (count == 0) return CUDA_SUCCESS;
    if (dst % width) return CUDA_ERROR_INVALID_VALUE;  // D16/D32 need an aligned destination
    size_t n = count * width;
    if (count > SIZE_MAX / width) return CUDA_ERROR_INVALID_VALUE;
    const Allocation* d = device_range(dst, n);
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    uint8_t* p = reinterpret_cast<uint8_t*>(dst);
    if (width == 1) memset(p, int(value & 0xff), n);
    else if (width == 2) for (size_t i = 0; i < count; ++i) reinterpret_cast<uint16_t*>(p)[i] = uint16_t(value);
    else for (size_t i = 0; i < count; ++i) reinterpret_cast<uint32_t*>(p)[i] = uint32_t(value);
    mark_initialized(*d, dst, n);
    traffic().memset_bytes += n;
    traffic().memset_calls++;
    return CUDA_SUCCESS;
}

CUresult alloc_device(CUdeviceptr* dptr, size_t bytesize, CUstream s) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!dptr || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    uint64_t p;
    if (CUresult r = mem_alloc(bytesize, AllocKind::Device, ctx, &p)) return r;
    *dptr = p;
    return CUDA_SUCCESS;
}

CUresult free_device(CUdeviceptr dptr, CUstream s) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (dptr == 0) return CUDA_SUCCESS;  // freeing null is a no-op, as on hardware
    return mem_free(dptr, AllocKind::Device);
}

CUresult alloc_host(void** pp, size_t bytesize, unsigned flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!pp || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    if (flags & ~unsigned(CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED))
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t p;
    if (CUresult r = mem_alloc(bytesize, AllocKind::Pinned, ctx, &p)) return r;
    *pp = reinterpret_cast<void*>(p);
    return CUDA_SUCCESS;
}

}  // namespace

CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) { return alloc_device(dptr, bytesize, nullptr); }
CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream s) { return alloc_device(dptr, bytesize, s); }
CUresult cuMemFree_v2(CUdeviceptr dptr) { return free_device(dptr, nullptr); }
CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream s) { return free_device(dptr, s); }

CUresult cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pPitch, size_t width, size_t height, unsigned int elementSize) {
    if (!pPitch || width == 0 || height == 0 || (elementSize != 4 && elementSize != 8 && elementSize != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t pitch = (width + 511) / 512 * 512;
    CUresult r = alloc_device(dptr, pitch * height, nullptr);
    if (r == CUDA_SUCCESS) *pPitch = pitch;
    return r;
}

CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!free || !total) return CUDA_ERROR_INVALID_VALUE;
    *total = config().memory_bytes;
    *free = config().memory_bytes - device_bytes_in_use();
    return CUDA_SUCCESS;
}

CUresult cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize, CUdeviceptr dptr) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    const Allocation* a = find_allocation(dptr);
    if (!a) return CUDA_ERROR_NOT_FOUND;
    if (pbase) *pbase = a->base;
    if (psize) *psize = a->size;
    return CUDA_SUCCESS;
}

CUresult cuMemAllocHost_v2(void** pp, size_t bytesize) { return alloc_host(pp, bytesize, 0); }
CUresult cuMemHostAlloc(void** pp, size_t bytesize, unsigned int Flags) { return alloc_host(pp, bytesize, Flags); }

CUresult cuMemFreeHost(void* p) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    return mem_free(reinterpret_cast<uint64_t>(p), AllocKind::Pinned);
}

CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* pdptr, void* p, unsigned int Flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!pdptr || !p || Flags != 0) return CUDA_ERROR_INVALID_VALUE;
    const Allocation* a = find_allocation(reinterpret_cast<uint64_t>(p));
    if (!a || a->kind != AllocKind::Pinned) return CUDA_ERROR_INVALID_VALUE;
    *pdptr = reinterpret_cast<CUdeviceptr>(p);  // unified addressing: same address on both sides
    return CUDA_SUCCESS;
}

CUresult cuMemHostGetFlags(unsigned int* pFlags, void* p) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    const Allocation* a = p ? find_allocation(reinterpret_cast<uint64_t>(p)) : nullptr;
    if (!pFlags || !a || a->kind != AllocKind::Pinned) return CUDA_ERROR_INVALID_VALUE;
    *pFlags = CU_MEMHOSTALLOC_DEVICEMAP;
    return CUDA_SUCCESS;
}

CUresult cuMemHostRegister_v2(void* p, size_t bytesize, unsigned int Flags) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    unsigned known = CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_IOMEMORY |
                     CU_MEMHOSTREGISTER_READ_ONLY;
    if (!p || bytesize == 0 || (Flags & ~known)) return CUDA_ERROR_INVALID_VALUE;
    return mem_register(p, bytesize, ctx);
}

CUresult cuMemHostRegister(void* p, size_t bytesize, unsigned int Flags) { return cuMemHostRegister_v2(p, bytesize, Flags); }

CUresult cuMemHostUnregister(void* p) {
    SG_LOCK;
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    return mem_unregister(p);
}

// ---------------------------------------------------------------- copies and memsets
CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) { return unified(dst, src, n, nullptr); }
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return unified(dst, src, n, s); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return htod(dst, src, n, nullptr); }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return dtoh(dst, src, n, nullptr); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return dtod(dst, src, n, nullptr); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) { return htod(dst, src, n, s); }
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) { return dtoh(dst, src, n, s); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return dtod(dst, src, n, s); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_n(d, v, 1, n, nullptr); }
CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset_n(d, v, 2, n, nullptr); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { return memset_n(d, v, 4, n, nullptr); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset_n(d, v, 1, n, s); }
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { return memset_n(d, v, 2, n, s); }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return memset_n(d, v, 4, n, s); }

// Per-thread-default-stream variants: the per-thread stream behaves as the legacy stream here.
CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) { return unified(dst, src, n, nullptr); }
CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return unified(dst, src, n, s); }
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void* src, size_t n) { return htod(dst, src, n, nullptr); }
CUresult cuMemcpyDtoH_v2_ptds(void* dst, CUdeviceptr src, size_t n) { return dtoh(dst, src, n, nullptr); }
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) { return dtod(dst, src, n, nullptr); }
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void* src, size_t n, CUstream s) { return htod(dst, src, n, s); }
CUresult cuMemcpyDtoHAsync_v2_ptsz(void* dst, CUdeviceptr src, size_t n, CUstream s) { return dtoh(dst, src, n, s); }
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return dtod(dst, src, n, s); }
CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { return memset_n(d, v, 1, n, nullptr); }
CUresult cuMemsetD16_v2_ptds(CUdeviceptr d, unsigned short v, size_t n) { return memset_n(d, v, 2, n, nullptr); }
CUresult cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int v, size_t n) { return memset_n(d, v, 4, n, nullptr); }
CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset_n(d, v, 1, n, s); }
CUresult cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { return memset_n(d, v, 2, n, s); }
CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return memset_n(d, v, 4, n, s); }

// ---------------------------------------------------------------- pointer attributes
namespace {

// Writes one attribute, in the C type the driver API documents (bool attributes are one byte); CUDA_ERROR_INVALID_VALUE when the pointer is unknown to the driver.
CUresult pointer_attribute(void* data, CUpointer_attribute attr, CUdeviceptr ptr, bool zero_if_unknown) {
    const Allocation* a = find_allocation(ptr);
    if (!a) {
        if (!zero_if_unknown) return CUDA_ERROR_INVALID_VALUE;
    }
    bool device = is_device(a);
    switch (attr) {
        case CU_POINTER_ATTRIBUTE_CONTEXT: *static_cast<CUcontext*>(data) = a ? allocation_context(*a) : nullptr; break;
        case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
            *static_cast<unsigned*>(data) = !a ? 0u : device ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
            break;
        case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *static_cast<CUdeviceptr*>(data) = a ? ptr : 0; break;
        case CU_POINTER_ATTRIBUTE_HOST_POINTER:
            if (a && device && !zero_if_unknown) return CUDA_ERROR_INVALID_VALUE;
            *static_cast<void**>(data) = a && !device ? reinterpret_cast<void*>(ptr) : nullptr;
            break;
        case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: *static_cast<bool*>(data) = a != nullptr; break;
        case CU_POINTER_ATTRIBUTE_BUFFER_ID: *static_cast<unsigned long long*>(data) = a ? a->serial : 0; break;
        case CU_POINTER_ATTRIBUTE_IS_MANAGED: *static_cast<bool*>(data) = false; break;
        case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *static_cast<int*>(data) = a ? 0 : -1; break;
        case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: *static_cast<bool*>(data) = false; break;
        case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *static_cast<CUdeviceptr*>(data) = a ? a->base : 0; break;
        case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *static_cast<size_t*>(data) = a ? a->size : 0; break;
        case CU_POINTER_ATTRIBUTE_MAPPED: *static_cast<bool*>(data) = a != nullptr; break;
        case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: *static_cast<unsigned long long*>(data) = 0; break;
        case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE: *static_cast<unsigned*>(data) = 0; break;
        case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS: *static_cast<unsigned*>(data) = 0; break;  // read-write
        case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: *static_cast<void**>(data) = nullptr; break;
        case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: *static_cast<size_t*>(data) = a ? a->size : 0; break;
        case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: *static_cast<void**>(data) = a ? reinterpret_cast<void*>(a->base) : nullptr; break;
        case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID: *static_cast<unsigned long long*>(data) = a ? a->serial : 0; break;
        default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

}  // namespace

CUresult cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!data) return CUDA_ERROR_INVALID_VALUE;
    return pointer_attribute(data, attribute, ptr, false);
}

// Unlike cuPointerGetAttribute, an unknown pointer is not an error: the values read as zero.
CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute* attributes, void** data, CUdeviceptr ptr) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (numAttributes == 0 || !attributes || !data) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < numAttributes; ++i)
        if (!data[i]) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < numAttributes; ++i)
        if (CUresult r = pointer_attribute(data[i], attributes[i], ptr, true)) return r;
    return CUDA_SUCCESS;
}
