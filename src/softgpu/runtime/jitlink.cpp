// runtime/jitlink.cpp: exact register counts from ptxas' verbose log ("Used N registers", spill bytes), per
// entry function, compiled once per distinct module and architecture. Whole-program ptxas
// (runtime/ptxas.cpp, $CYBN_SOFTGPU_PTXAS) when configured: what the driver's PTX JIT and NVRTC's CUBIN give.
// Else the ptxas inside libnvJitLink (nvidia-nvjitlink wheel, $CYBN_SOFTGPU_NVJITLINK), which compiles
// relocatable code (as ptxas -c) and reports more registers for some kernels. Never a system CUDA.
// The counts are kept per process and, in $CYBN_SOFTGPU_JIT_CACHE, between processes (runtime/jit_cache.cpp).
#include "runtime/jitlink.hpp"

#include "runtime/jit_cache.hpp"
#include "runtime/ptxas.hpp"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string_view>
#include <vector>

namespace softgpu {
namespace {

using Handle = void*;
struct Api {
    int (*create)(Handle*, uint32_t, const char**) = nullptr;
    int (*add_data)(Handle, int, const void*, size_t, const char*) = nullptr;
    int (*complete)(Handle) = nullptr;
    int (*destroy)(Handle*) = nullptr;
    int (*info_size)(Handle, size_t*) = nullptr;
    int (*info_log)(Handle, char*) = nullptr;
    int (*error_size)(Handle, size_t*) = nullptr;
    int (*error_log)(Handle, char*) = nullptr;
    std::string status;  // path, or why it is unusable
    bool ok = false;
};
constexpr int kInputPtx = 2;  // NVJITLINK_INPUT_PTX

// The entry points are versioned (__nvJitLinkCreate_13_0 ...); the 13.0 ABI is in every 13.x library.
template <typename F>
bool bind(void* lib, const char* what, F* out) {
    std::string name = std::string("__nvJitLink") + what + "_13_0";
    void* p = dlsym(lib, name.c_str());
    if (!p) p = dlsym(lib, (std::string("nvJitLink") + what).c_str());
    *out = reinterpret_cast<F>(p);
    return p != nullptr;
}

Api load_api() {
    Api a;
    const char* path = getenv("CYBN_SOFTGPU_NVJITLINK");
    if (!path || !*path || strcmp(path, "0") == 0) return a;
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        a.status = std::string("cannot load ") + path + ": " + dlerror();
    } else if (!bind(lib, "Create", &a.create) || !bind(lib, "AddData", &a.add_data) ||
               !bind(lib, "Complete", &a.complete) || !bind(lib, "Destroy", &a.destroy) ||
               !bind(lib, "GetInfoLogSize", &a.info_size) || !bind(lib, "GetInfoLog", &a.info_log) ||
               !bind(lib, "GetErrorLogSize", &a.error_size) || !bind(lib, "GetErrorLog", &a.error_log)) {
        a.status = std::string(path) + " lacks the nvJitLink 13 entry points";
    } else {
        a.status = path;
        a.ok = true;
    }
    if (!a.ok) fprintf(stderr, "softgpu: CYBN_SOFTGPU_NVJITLINK: %s; registers are estimated\n", a.status.c_str());
    return a;
}

const Api& api() {
    static const Api a = load_api();
    return a;
}

std::string read_log(Handle h, int (*size_fn)(Handle, size_t*), int (*log_fn)(Handle, char*)) {
    size_t n = 0;
    if (size_fn(h, &n) != 0 || n == 0) return "";
    std::vector<char> buf(n + 1, '\0');
    if (log_fn(h, buf.data()) != 0) return "";
    return std::string(buf.data());
}

// ptxas info    : Compiling entry function 'k' for 'sm_80'
// ptxas         .     0 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
// ptxas info    : Used 8 registers, used 0 barriers, 364 bytes cmem[0]
void parse_log(const std::string& log, std::map<std::string, JitCounts>* out) {
    std::string entry;
    size_t pos = 0;
    while (pos < log.size()) {
        size_t end = log.find('\n', pos);
        if (end == std::string::npos) end = log.size();
        std::string line = log.substr(pos, end - pos);
        pos = end + 1;
        if (line.rfind("ptxas", 0) != 0) continue;  // the linker's own summary repeats it
        size_t k;
        if ((k = line.find("Compiling entry function '")) != std::string::npos) {
            size_t b = k + strlen("Compiling entry function '"), e = line.find('\'', b);
            entry = line.substr(b, e - b);
            (*out)[entry] = JitCounts{};
        } else if ((k = line.find("Compiling function '")) != std::string::npos) {
            entry.clear();  // a non-entry function's counts are not a kernel's
        } else if (!entry.empty() && (k = line.find("Used ")) != std::string::npos) {
            (*out)[entry].registers = atoi(line.c_str() + k + 5);
        } else if (!entry.empty() && (k = line.find("bytes spill stores")) != std::string::npos) {
            size_t comma = line.rfind(',', k);
            int stores = atoi(line.c_str() + (comma == std::string::npos ? 0 : comma + 1));
            size_t l = line.find(", ", k);
            int loads = l == std::string::npos ? 0 : atoi(line.c_str() + l + 2);
            (*out)[entry].spill_bytes = stores + loads;
        }
    }
}

}  // namespace

std::string register_source_status() {
    if (ptxas_configured()) return "ptxas:" + ptxas_status();
    if (api().ok) return "nvjitlink:" + api().status;
    std::string why = ptxas_status();
    return why.empty() ? api().status : why + (api().status.empty() ? "" : "; " + api().status);
}

namespace {

// One compile by nvJitLink: its verbose log, or false with *why.
bool nvjitlink_compile(const Api& a, const char* ptx, size_t len, int arch, std::string* log, std::string* why) {
    std::string arch_opt = "-arch=sm_" + std::to_string(arch);
    const char* opts[] = {arch_opt.c_str(), "-verbose"};
    Handle h = nullptr;
    if (a.create(&h, 2, opts) != 0) return *why = "nvJitLinkCreate failed for " + arch_opt, false;
    std::string text(ptx, len);  // NUL-terminated copy
    bool ok = a.add_data(h, kInputPtx, text.c_str(), text.size() + 1, "softgpu.ptx") == 0 && a.complete(h) == 0;
    if (ok)
        *log = read_log(h, a.info_size, a.info_log);
    else
        *why = "nvJitLink rejected the PTX for " + arch_opt + ": " + read_log(h, a.error_size, a.error_log);
    a.destroy(&h);
    return ok;
}

}  // namespace

bool exact_registers(const char* ptx, size_t len, int arch, std::map<std::string, JitCounts>* out,
                     std::string* why) {
    const bool whole = ptxas_configured();
    const Api& a = api();
    if (!whole && !a.ok) {
        *why = register_source_status();
        if (why->empty()) *why = "neither CYBN_SOFTGPU_PTXAS nor CYBN_SOFTGPU_NVJITLINK is set";
        return false;
    }
    const std::string tool = whole ? ptxas_status() : a.status;  // the cache keys name the compiler's file
    // One compile per distinct text and architecture for the life of the process (whose compiler is fixed).
    static std::map<std::pair<size_t, size_t>, std::map<std::string, JitCounts>> cache;
    std::pair<size_t, size_t> key(std::hash<std::string_view>()(std::string_view(ptx, len)) ^ size_t(arch), len);
    auto hit = cache.find(key);
    if (hit != cache.end()) return *out = hit->second, true;
    const std::string disk_key = jit_cache_key(ptx, len, arch, tool);
    if (jit_cache_load(disk_key, out)) {
        cache[key] = *out;
        return true;
    }
    jit_cache_count_compile();
    std::string log;
    bool ok = whole ? ptxas_compile(ptx, len, arch, &log, why) : nvjitlink_compile(a, ptx, len, arch, &log, why);
    if (!ok) return false;
    parse_log(log, out);
    cache[key] = *out;
    jit_cache_store(disk_key, *out);
    return true;
}

}  // namespace softgpu
