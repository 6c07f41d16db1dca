// driver/memory.cpp: cuMem* and cuPointer* entry points. Copies and memsets are stream
// operations (runtime/stream_queue.cpp): run at once, or on the async worker in stream order.
#include <cstring>

#include "runtime/stream_queue.hpp"

using namespace softgpu;

namespace {

bool is_device(const Allocation* a) { return a && a->kind != AllocKind::Pinned; }

// A device-side range must lie wholly inside one live allocation (device, pinned or module global).
const Allocation* device_range(CUdeviceptr p, size_t n) { return find_owner(uint64_t(p), n); }

// How the call waits: Sync (cuMemcpyHtoD...): returns after the copy, with the errors of the work it
// waited for, as a synchronize would; Async: returns at once, except into pageable host memory.
enum class Call { Sync, Async };

CUresult begin(CUstream s, bool ptds, Queue** q) {
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    *q = queue_of(s, s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD ? ctx : s->ctx, ptds);
    return CUDA_SUCCESS;
}

// Enqueues one operation on q and waits as `call` and `host_wait` say.
CUresult enqueue(Queue* q, std::unique_ptr<Op> op, Call call, bool host_wait) {
    uint64_t seq = q->enqueued + 1;
    auto outcome = op->outcome = std::make_shared<CUresult>(CUDA_SUCCESS);
    CUresult r = submit(q, std::move(op));
    if (call == Call::Sync && host_wait) {
        CUresult w = sync_queue(q);
        return r ? r : w;
    }
    if (host_wait) {
        wait_seq(q, seq);
        return r ? r : *outcome;
    }
    return r;
}

// A copy of n bytes; the caller has validated both sides. Bytes read from pageable host memory are
// staged at the call (the caller may reuse its buffer at once, as with the real driver); a copy into
// pageable host memory returns after the copy.
CUresult copy(Queue* q, const char* dir, uint64_t dst, uint64_t src, size_t n, uint64_t Traffic::*counter, Call call,
              bool host_wait) {
    auto op = std::make_unique<Op>();
    op->what = std::string("memcpy ") + dir + " of " + std::to_string(n) + " bytes";
    bool src_known = find_owner(src, n) != nullptr, dst_known = find_owner(dst, n) != nullptr;
    if (dst_known) op->touches.push_back(Touch{dst, dst + n, true});
    if (src_known) op->touches.push_back(Touch{src, src + n, false});
    std::shared_ptr<std::vector<uint8_t>> staged;
    if (!src_known && config().async) {
        const uint8_t* p = reinterpret_cast<const uint8_t*>(src);
        staged = std::make_shared<std::vector<uint8_t>>(p, p + n);
    }
    op->run = [=](Op&) {
        memmove(reinterpret_cast<void*>(dst), staged ? staged->data() : reinterpret_cast<const void*>(src), n);
        const Allocation* d = find_owner(dst, n);
        const Allocation* sa = find_owner(src, n);
        // initcheck shadow: device bytes copied from unwritten device bytes stay unwritten.
        if (d && sa) copy_initialized(*d, dst, *sa, src, n);
        else if (d) mark_initialized(*d, dst, n);
        traffic().*counter += n;
        traffic().memcpy_calls++;
        return CUDA_SUCCESS;
    };
    return enqueue(q, std::move(op), call, host_wait || !dst_known);
}

CUresult htod(CUdeviceptr dst, const void* src, size_t n, CUstream s, Call call, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = begin(s, ptds, &q)) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!device_range(dst, n) || !src) return CUDA_ERROR_INVALID_VALUE;
    return copy(q, "HtoD", dst, reinterpret_cast<uint64_t>(src), n, &Traffic::htod_bytes, call, call == Call::Sync);
}

// Copying unwritten bytes out is not a finding: only a kernel that reads them is.
CUresult dtoh(void* dst, CUdeviceptr src, size_t n, CUstream s, Call call, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = begin(s, ptds, &q)) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!dst || !device_range(src, n)) return CUDA_ERROR_INVALID_VALUE;
    return copy(q, "DtoH", reinterpret_cast<uint64_t>(dst), src, n, &Traffic::dtoh_bytes, call, call == Call::Sync);
}

// Device to device: asynchronous to the host even in its synchronous form, as on hardware.
CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s, Call call, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = begin(s, ptds, &q)) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!device_range(dst, n) || !device_range(src, n)) return CUDA_ERROR_INVALID_VALUE;
    return copy(q, "DtoD", dst, src, n, &Traffic::dtod_bytes, call, false);
}

// cuMemcpy with unified addressing: the direction follows from where each pointer lives.
CUresult unified(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s, Call call, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = begin(s, ptds, &q)) return r;
    if (n == 0) return CUDA_SUCCESS;
    if (!dst || !src) return CUDA_ERROR_INVALID_VALUE;
    const Allocation* d = find_owner(dst, 1);
    const Allocation* sa = find_owner(src, 1);
    // A pointer inside an allocation must not run past its end.
    if ((d && !device_range(dst, n)) || (sa && !device_range(src, n))) return CUDA_ERROR_INVALID_VALUE;
    bool dd = is_device(d), sd = is_device(sa);
    if (dd && sd) return dtod(dst, src, n, s, call, ptds);
    if (dd) return htod(dst, reinterpret_cast<const void*>(src), n, s, call, ptds);
    if (sd) return dtoh(reinterpret_cast<void*>(dst), src, n, s, call, ptds);
    return copy(q, "HtoH", dst, src, n, &Traffic::htoh_bytes, call, call == Call::Sync);
}

CUresult memset_n(CUdeviceptr dst, unsigned value, size_t width, size_t count, CUstream s, bool ptds) {
    SG_LOCK;
    Queue* q;
    if (CUresult r = begin(s, ptds, &q)) return r;
    if (count == 0) return CUDA_SUCCESS;
    if (dst % width) return CUDA_ERROR_INVALID_VALUE;  // D16/D32 need an aligned destination
    size_t n = count * width;
    if (count > SIZE_MAX / width) return CUDA_ERROR_INVALID_VALUE;
    if (!device_range(dst, n)) return CUDA_ERROR_INVALID_VALUE;
    auto op = std::make_unique<Op>();
    op->what = "memset of " + std::to_string(n) + " bytes";
    op->touches.push_back(Touch{dst, dst + n, true});
    op->run = [=](Op&) {
        uint8_t* p = reinterpret_cast<uint8_t*>(dst);
        if (width == 1) memset(p, int(value & 0xff), n);
        else if (width == 2) for (size_t i = 0; i < count; ++i) reinterpret_cast<uint16_t*>(p)[i] = uint16_t(value);
        else for (size_t i = 0; i < count; ++i) reinterpret_cast<uint32_t*>(p)[i] = uint32_t(value);
        if (const Allocation* d = find_owner(dst, n)) mark_initialized(*d, dst, n);
        traffic().memset_bytes += n;
        traffic().memset_calls++;
        return CUDA_SUCCESS;
    };
    // Asynchronous to the host (device memory), as on hardware; into pinned memory it waits.
    const Allocation* d = device_range(dst, n);
    return enqueue(q, std::move(op), Call::Async, d->kind == AllocKind::Pinned);
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
    drain_all();  // freeing synchronises: queued work may still use the memory
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
    const Allocation* a = find_owner(dptr, 1);
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
    drain_all();
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
    drain_all();
    return mem_unregister(p);
}

// ---------------------------------------------------------------- copies and memsets
constexpr Call S = Call::Sync, A = Call::Async;
CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) { return unified(dst, src, n, nullptr, S, false); }
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return unified(dst, src, n, s, A, false); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return htod(dst, src, n, nullptr, S, false); }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return dtoh(dst, src, n, nullptr, S, false); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return dtod(dst, src, n, nullptr, S, false); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) { return htod(dst, src, n, s, A, false); }
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) { return dtoh(dst, src, n, s, A, false); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return dtod(dst, src, n, s, A, false); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_n(d, v, 1, n, nullptr, false); }
CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset_n(d, v, 2, n, nullptr, false); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { return memset_n(d, v, 4, n, nullptr, false); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset_n(d, v, 1, n, s, false); }
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { return memset_n(d, v, 2, n, s, false); }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return memset_n(d, v, 4, n, s, false); }

// Per-thread-default-stream variants: a null stream is the calling thread's default stream.
CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) { return unified(dst, src, n, nullptr, S, true); }
CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return unified(dst, src, n, s, A, true); }
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void* src, size_t n) { return htod(dst, src, n, nullptr, S, true); }
CUresult cuMemcpyDtoH_v2_ptds(void* dst, CUdeviceptr src, size_t n) { return dtoh(dst, src, n, nullptr, S, true); }
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) { return dtod(dst, src, n, nullptr, S, true); }
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void* src, size_t n, CUstream s) { return htod(dst, src, n, s, A, true); }
CUresult cuMemcpyDtoHAsync_v2_ptsz(void* dst, CUdeviceptr src, size_t n, CUstream s) { return dtoh(dst, src, n, s, A, true); }
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { return dtod(dst, src, n, s, A, true); }
CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { return memset_n(d, v, 1, n, nullptr, true); }
CUresult cuMemsetD16_v2_ptds(CUdeviceptr d, unsigned short v, size_t n) { return memset_n(d, v, 2, n, nullptr, true); }
CUresult cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int v, size_t n) { return memset_n(d, v, 4, n, nullptr, true); }
CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset_n(d, v, 1, n, s, true); }
CUresult cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { return memset_n(d, v, 2, n, s, true); }
CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return memset_n(d, v, 4, n, s, true); }

// ---------------------------------------------------------------- pointer attributes
namespace {

// Writes one attribute, in the C type the driver API documents (bool attributes are one byte); CUDA_ERROR_INVALID_VALUE when the pointer is unknown to the driver.
CUresult pointer_attribute(void* data, CUpointer_attribute attr, CUdeviceptr ptr, bool zero_if_unknown) {
    const Allocation* a = find_owner(ptr, 1);
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
