// runtime/jitlink.cpp: exact register counts. ptxas itself (inside libnvJitLink, from NVIDIA's
// nvidia-nvjitlink wheel, never a system CUDA) compiles each distinct module once per architecture
// with -verbose; its log names every entry function with "Used N registers" and its spill bytes.
// The counts are kept per process and, in $CYBN_SOFTGPU_JIT_CACHE, between processes (runtime/jit_cache.cpp).
#include "runtime/jitlink.hpp"

#include "runtime/jit_cache.hpp"

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

std::string jitlink_status() { return api().status; }

bool jitlink_registers(const char* ptx, size_t len, int arch, std::map<std::string, JitCounts>* out,
                       std::string* why) {
    const Api& a = api();
    if (!a.ok) {
        *why = a.status.empty() ? "CYBN_SOFTGPU_NVJITLINK is not set" : a.status;
        return false;
    }
    // One compile per distinct text and architecture for the life of the process.
    static std::map<std::pair<size_t, size_t>, std::map<std::string, JitCounts>> cache;
    std::pair<size_t, size_t> key(std::hash<std::string_view>()(std::string_view(ptx, len)) ^ size_t(arch), len);
    auto hit = cache.find(key);
    if (hit != cache.end()) return *out = hit->second, true;
    const std::string disk_key = jit_cache_key(ptx, len, arch, a.status);
    if (jit_cache_load(disk_key, out)) {
        cache[key] = *out;
        return true;
    }
    jit_cache_count_compile();
    std::string arch_opt = "-arch=sm_" + std::to_string(arch);
    const char* opts[] = {arch_opt.c_str(), "-verbose"};
    Handle h = nullptr;
    if (a.create(&h, 2, opts) != 0) return *why = "nvJitLinkCreate failed for " + arch_opt, false;
    std::string text(ptx, len);  // NUL-terminated copy
    bool ok = a.add_data(h, kInputPtx, text.c_str(), text.size() + 1, "softgpu.ptx") == 0 && a.complete(h) == 0;
    if (ok) {
        parse_log(read_log(h, a.info_size, a.info_log), out);
    } else {
        *why = "nvJitLink rejected the PTX for " + arch_opt + ": " + read_log(h, a.error_size, a.error_log);
    }
    a.destroy(&h);
    if (ok) {
        cache[key] = *out;
        jit_cache_store(disk_key, *out);
    }
    return ok;
}

}  // namespace softgpu
