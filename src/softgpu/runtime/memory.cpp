// runtime/memory.cpp: the software GPU's address space, allocations and their initcheck shadow.
//
// Device addresses are host addresses inside one huge PROT_NONE reservation. Allocations are
// carved by a bump pointer with an unmapped guard gap after each, and an address range is never
// handed out twice, so overruns and uses after free always land somewhere detectable.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "driver/driver.hpp"

namespace softgpu {

// ---------------------------------------------------------------- the address space
namespace {

constexpr uint64_t kRegionBytes = 1ull << 40;  // reserved, never committed up front
constexpr uint64_t kGuardBytes = 64 * 1024;    // unmapped gap after every allocation

struct Entry {
    Allocation a;  // a.size: the bytes accesses may touch (a pooled block's logical extent, softgpuPoolBlock)
    uint64_t capacity = 0;  // the bytes really allocated
    CUctx_st* ctx = nullptr;
    bool registered = false;  // cuMemHostRegister: user memory we must not unmap
};
struct Freed {
    uint64_t size;
    uint64_t serial;
    AllocKind kind;
};

uint8_t* g_region = nullptr;
uint64_t g_next = 0;  // offset of the next free byte in the region
uint64_t g_serial = 0;
uint64_t g_device_bytes = 0;
std::map<uint64_t, Entry> g_live;   // by base address
std::map<uint64_t, Freed> g_freed;  // by base address, kept for describe_address

uint64_t page_size() {
    static uint64_t p = uint64_t(sysconf(_SC_PAGESIZE));
    return p;
}
uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Commits fresh pages from the region, or returns 0 when the region is exhausted.
uint64_t carve(uint64_t size) {
    if (!g_region) {
        void* p = mmap(nullptr, kRegionBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return 0;
        g_region = static_cast<uint8_t*>(p);
        g_next = kGuardBytes;  // keep small offsets from the region start invalid too
    }
    uint64_t bytes = round_up(size, page_size());
    if (g_next + bytes + kGuardBytes > kRegionBytes) return 0;
    uint8_t* base = g_region + g_next;
    if (mprotect(base, bytes, PROT_READ | PROT_WRITE) != 0) return 0;
    g_next += bytes + kGuardBytes;
    return reinterpret_cast<uint64_t>(base);
}

void uncarve(uint64_t base, uint64_t size) {
    uint64_t bytes = round_up(size, page_size());
    void* p = reinterpret_cast<void*>(base);
    madvise(p, bytes, MADV_DONTNEED);
    mprotect(p, bytes, PROT_NONE);
}

Entry* insert(uint64_t base, uint64_t size, AllocKind kind, CUctx_st* ctx, bool track_init) {
    Entry e;
    e.a.base = base;
    e.a.size = size;
    e.capacity = size;
    e.a.kind = kind;
    e.a.serial = ++g_serial;
    e.ctx = ctx;
    if (track_init) e.a.init = static_cast<uint8_t*>(calloc((size + 7) / 8, 1));
    return &(g_live[base] = e);
}

void erase(std::map<uint64_t, Entry>::iterator it) {
    Entry& e = it->second;
    if (!e.registered) uncarve(e.a.base, e.capacity);
    if (e.a.kind == AllocKind::Device) g_device_bytes -= e.capacity;
    free(e.a.init);
    g_freed[e.a.base] = Freed{e.capacity, e.a.serial, e.a.kind};
    g_live.erase(it);
}

const char* kind_name(AllocKind k) {
    switch (k) {
        case AllocKind::Device: return "device allocation";
        case AllocKind::Pinned: return "pinned host allocation";
        default: return "module global";
    }
}

std::string hex(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)v);
    return buf;
}

}  // namespace

long long g_fail_alloc_after = 0;
long long g_alloc_budget = -1;

const Allocation* find_allocation(uint64_t addr) {
    auto it = g_live.upper_bound(addr);
    if (it == g_live.begin()) return nullptr;
    --it;
    const Allocation& a = it->second.a;
    return addr - a.base < a.size ? &a : nullptr;
}

const Allocation* find_range(uint64_t addr, uint64_t size) {
    const Allocation* a = find_allocation(addr);
    if (!a || size > a->size - (addr - a->base)) return nullptr;
    return a;
}

const Allocation* find_owner(uint64_t addr, uint64_t size) {
    auto it = g_live.upper_bound(addr);
    if (it == g_live.begin()) return nullptr;
    --it;
    uint64_t off = addr - it->first;
    return off < it->second.capacity && size <= it->second.capacity - off ? &it->second.a : nullptr;
}

std::string describe_address(uint64_t addr) {
    std::string at = hex(addr);
    if (addr < 65536) return at + " is a null or near-null pointer (no allocation)";
    auto label = [](uint64_t serial, AllocKind k, uint64_t size, uint64_t base) {
        return std::string(kind_name(k)) + " #" + std::to_string(serial) + " (" + std::to_string(size) +
               " bytes at " + hex(base) + ")";
    };
    if (const Allocation* a = find_allocation(addr))
        return at + " is " + std::to_string(addr - a->base) + " bytes into " + label(a->serial, a->kind, a->size, a->base);
    // Inside a sub-allocator's block but past what it handed out (softgpuPoolBlock).
    auto in = g_live.upper_bound(addr);
    if (in != g_live.begin() && addr - std::prev(in)->first < std::prev(in)->second.capacity) {
        const Entry& e = std::prev(in)->second;
        std::string block = std::to_string(e.capacity) + "-byte pool block of device allocation #" + std::to_string(e.a.serial);
        if (e.a.size == 0) return at + " lies in a " + block + " that its pool holds free (no array uses it)";
        return at + " is " + std::to_string(addr - e.a.base - e.a.size) + " bytes past the end of the pooled array (" +
               std::to_string(e.a.size) + " bytes at " + hex(e.a.base) + ", in a " + block + ")";
    }
    // A freed range holds its whole page span: addresses are never reused.
    auto f = g_freed.upper_bound(addr);
    if (f != g_freed.begin()) {
        --f;
        if (addr - f->first < round_up(f->second.size, page_size()))
            return at + " lies in " + label(f->second.serial, f->second.kind, f->second.size, f->first) + ", freed";
    }
    // Otherwise name the nearest live neighbour on either side (within 1 MiB).
    constexpr uint64_t kNear = 1ull << 20;
    std::string best;
    uint64_t best_dist = kNear;
    auto it = g_live.upper_bound(addr);
    if (it != g_live.end() && it->first - addr <= best_dist) {
        best_dist = it->first - addr;
        best = at + " is " + std::to_string(best_dist) + " bytes before the start of " +
               label(it->second.a.serial, it->second.a.kind, it->second.a.size, it->first);
    }
    if (it != g_live.begin()) {
        --it;
        uint64_t end = it->first + it->second.a.size;
        if (addr - end < best_dist) {
            std::string where = addr == end ? " is just past the end of " : " is " + std::to_string(addr - end) +
                                                                               " bytes past the end of ";
            best = at + where + label(it->second.a.serial, it->second.a.kind, it->second.a.size, it->first);
        }
    }
    return best.empty() ? at + " is not in any allocation" : best;
}

// ---------------------------------------------------------------- initcheck shadow
void mark_initialized(const Allocation& a, uint64_t addr, uint64_t size) {
    if (!a.init || size == 0) return;
    uint64_t i = addr - a.base, end = i + size;
    for (; i < end && (i & 7); ++i) a.init[i >> 3] |= uint8_t(1u << (i & 7));
    if (end - i >= 8) {
        memset(a.init + (i >> 3), 0xff, (end - i) >> 3);
        i += (end - i) & ~uint64_t(7);
    }
    for (; i < end; ++i) a.init[i >> 3] |= uint8_t(1u << (i & 7));
}

bool is_initialized(const Allocation& a, uint64_t addr, uint64_t size, uint64_t* first_bad) {
    if (!a.init) return true;
    uint64_t i = addr - a.base, end = i + size;
    while (i < end) {
        if ((i & 7) == 0 && end - i >= 8 && a.init[i >> 3] == 0xff) {
            i += 8;
            continue;
        }
        if (!(a.init[i >> 3] & (1u << (i & 7)))) {
            if (first_bad) *first_bad = a.base + i;
            return false;
        }
        ++i;
    }
    return true;
}

void copy_initialized(const Allocation& dst, uint64_t d, const Allocation& src, uint64_t s, uint64_t n) {
    if (!dst.init) return;
    if (!src.init) return mark_initialized(dst, d, n);
    uint64_t di = d - dst.base, si = s - src.base;
    uint64_t k = 0;
    auto bit = [&](uint64_t j) {
        bool set = src.init[(si + j) >> 3] & (1u << ((si + j) & 7));
        uint8_t& b = dst.init[(di + j) >> 3];
        uint8_t m = uint8_t(1u << ((di + j) & 7));
        b = set ? (b | m) : (b & ~m);
    };
    if ((di & 7) == (si & 7)) {  // same bit phase: copy whole shadow bytes in the middle
        for (; k < n && ((di + k) & 7); ++k) bit(k);
        uint64_t bytes = (n - k) >> 3;
        memcpy(dst.init + ((di + k) >> 3), src.init + ((si + k) >> 3), bytes);
        k += bytes * 8;
    }
    for (; k < n; ++k) bit(k);
}

// ---------------------------------------------------------------- allocation API (driver side)
CUresult mem_alloc(uint64_t size, AllocKind kind, CUctx_st* ctx, uint64_t* out) {
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (kind == AllocKind::Device) {
        if (g_fail_alloc_after > 0 && --g_fail_alloc_after == 0) return CUDA_ERROR_OUT_OF_MEMORY;
        if (size > config().memory_bytes - g_device_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
        if (g_alloc_budget >= 0 && g_device_bytes + size > uint64_t(g_alloc_budget)) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    uint64_t base = carve(size);
    if (!base) return CUDA_ERROR_OUT_OF_MEMORY;  // the reserved region is exhausted
    insert(base, size, kind, ctx, kind == AllocKind::Device);
    if (kind == AllocKind::Device) g_device_bytes += size;
    *out = base;
    return CUDA_SUCCESS;
}

CUresult mem_free(uint64_t base, AllocKind kind) {
    auto it = g_live.find(base);
    if (it == g_live.end() || it->second.a.kind != kind || it->second.registered) return CUDA_ERROR_INVALID_VALUE;
    erase(it);
    return CUDA_SUCCESS;
}

CUresult mem_register(void* p, uint64_t size, CUctx_st* ctx) {
    uint64_t base = reinterpret_cast<uint64_t>(p);
    // Any overlap with memory the driver already knows is an error, as on hardware.
    auto it = g_live.lower_bound(base);
    if (it != g_live.end() && it->first < base + size) return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    if (it != g_live.begin() && std::prev(it)->first + std::prev(it)->second.capacity > base)
        return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    insert(base, size, AllocKind::Pinned, ctx, false)->registered = true;
    return CUDA_SUCCESS;
}

CUresult mem_unregister(void* p) {
    auto it = g_live.find(reinterpret_cast<uint64_t>(p));
    if (it == g_live.end() || !it->second.registered) return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
    erase(it);
    return CUDA_SUCCESS;
}

void free_context_allocations(CUctx_st* ctx) {
    for (auto it = g_live.begin(); it != g_live.end();) {
        auto next = std::next(it);
        if (it->second.ctx == ctx && it->second.a.kind != AllocKind::ModuleGlobal) erase(it);
        it = next;
    }
}

CUctx_st* pool_block_context(uint64_t base, uint64_t bytes) {
    auto it = g_live.find(base);
    bool ok = it != g_live.end() && it->second.a.kind == AllocKind::Device && bytes <= it->second.capacity;
    return ok ? it->second.ctx : nullptr;
}

CUresult pool_extent(uint64_t base, uint64_t bytes) {
    if (!pool_block_context(base, bytes)) return CUDA_ERROR_INVALID_VALUE;
    g_live.find(base)->second.a.size = bytes;
    return CUDA_SUCCESS;
}

CUctx_st* allocation_context(const Allocation& a) {
    auto it = g_live.find(a.base);
    return it == g_live.end() ? nullptr : it->second.ctx;
}

uint64_t device_bytes_in_use() { return g_device_bytes; }

LiveCounts live_allocations() {
    LiveCounts c{0, 0, 0, 0};
    for (auto& kv : g_live) {
        if (kv.second.a.kind == AllocKind::Device) c.device_count++, c.device_bytes += kv.second.capacity;
        if (kv.second.a.kind == AllocKind::Pinned) c.pinned_count++, c.pinned_bytes += kv.second.capacity;
    }
    return c;
}

uint64_t alloc_module_global(uint64_t size, uint64_t align) {
    (void)align;  // every allocation starts on a page boundary, which satisfies any PTX alignment
    uint64_t base = carve(size ? size : 1);
    if (!base) return 0;
    insert(base, size ? size : 1, AllocKind::ModuleGlobal, current_ctx(), false);
    return base;
}

void free_module_global(uint64_t addr) {
    auto it = g_live.find(addr);
    if (it != g_live.end() && it->second.a.kind == AllocKind::ModuleGlobal) erase(it);
}

}  // namespace softgpu
