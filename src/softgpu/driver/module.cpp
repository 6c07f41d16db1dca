// driver/module.cpp: modules (PTX text only), functions and their attributes.
#include <cstring>

#include "runtime/stream_queue.hpp"

using namespace softgpu;

namespace softgpu {
int g_fail_module_loads = 0;

void unload_module(CUmodule m) {
    for (CUfunction f : m->functions) {
        unregister_handle(f);
        delete f;
    }
    destroy_module(m->module);
    unregister_handle(m);
    delete m;
}
}  // namespace softgpu

namespace {

// Copies text into a JIT log buffer of the given size, always NUL-terminated.
size_t copy_log(char* buf, size_t size, const std::string& text) {
    if (!buf || size == 0) return 0;
    size_t n = std::min(size - 1, text.size());
    memcpy(buf, text.data(), n);
    buf[n] = '\0';
    return n + 1;
}

CUresult load(CUmodule* out, const void* image, std::string* log) {
    CUctx_st* ctx;
    if (CUresult r = require_ctx(&ctx)) return r;
    if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
    const unsigned char* p = static_cast<const unsigned char*>(image);
    uint32_t magic = 0;
    // Binary magics have no NUL byte, so a shorter text cannot be one (and is not read past).
    if (strnlen(static_cast<const char*>(image), 4) == 4) memcpy(&magic, p, 4);
    if (magic == 0x464C457Fu /* \x7fELF */ || magic == 0xBA55ED50u || magic == 0x466243B1u) {
        *log = "softgpu: the image is a cubin/fatbin; the software GPU loads PTX text only";
        set_last_report(*log, false);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    if (g_fail_module_loads > 0) {
        --g_fail_module_loads;
        *log = "softgpu: injected module load failure (softgpuFailModuleLoads)";
        set_last_report(*log, false);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const char* text = static_cast<const char*>(image);
    std::string error;
    std::unique_ptr<Module> m = load_module(text, strlen(text), &error);
    if (!m) {
        *log = error.empty() ? "not PTX the software GPU can load" : error;
        set_last_report(*log, true);
        return CUDA_ERROR_INVALID_PTX;
    }
    assign_registers(m.get(), text, strlen(text));
    CUmodule h = new CUmod_st;
    h->ctx = ctx;
    h->module = m.release();
    register_handle(h);
    *out = h;
    return CUDA_SUCCESS;
}

CUresult require_function(CUfunction f) {
    if (CUresult r = check_init()) return r;
    return valid_function(f) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

}  // namespace

CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    SG_LOCK;
    std::string log;
    return load(module, image, &log);
}

CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int numOptions, CUjit_option* options,
                            void** optionValues) {
    SG_LOCK;
    if (numOptions && (!options || !optionValues)) return CUDA_ERROR_INVALID_VALUE;
    std::string log;
    CUresult r = load(module, image, &log);
    // Log buffer sizes come in by value and go out as the number of bytes written.
    char* error_buf = nullptr;
    char* info_buf = nullptr;
    size_t error_size = 0, info_size = 0;
    for (unsigned i = 0; i < numOptions; ++i) {
        uintptr_t v = reinterpret_cast<uintptr_t>(optionValues[i]);
        if (options[i] == CU_JIT_ERROR_LOG_BUFFER) error_buf = static_cast<char*>(optionValues[i]);
        if (options[i] == CU_JIT_INFO_LOG_BUFFER) info_buf = static_cast<char*>(optionValues[i]);
        if (options[i] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) error_size = v;
        if (options[i] == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES) info_size = v;
    }
    size_t error_used = copy_log(error_buf, error_size, r == CUDA_SUCCESS ? std::string() : log);
    size_t info_used = copy_log(info_buf, info_size, r == CUDA_SUCCESS ? "softgpu: PTX loaded" : "");
    for (unsigned i = 0; i < numOptions; ++i) {
        if (options[i] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) optionValues[i] = reinterpret_cast<void*>(error_used);
        if (options[i] == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES) optionValues[i] = reinterpret_cast<void*>(info_used);
    }
    return r;
}

CUresult cuModuleUnload(CUmodule hmod) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!valid_module(hmod)) return CUDA_ERROR_INVALID_HANDLE;
    drain_all();  // async mode: queued launches of its kernels run first
    unload_module(hmod);
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_module(hmod)) return CUDA_ERROR_INVALID_HANDLE;
    Kernel* k = find_kernel(hmod->module, name);
    if (!k) return CUDA_ERROR_NOT_FOUND;
    for (CUfunction f : hmod->functions)
        if (f->kernel == k) return *hfunc = f, CUDA_SUCCESS;
    KernelInfo& info = kernel_info(k);
    // Default dynamic shared memory limit: whatever the 48 KiB static window leaves.
    uint32_t window = device_profile().smem_per_block;
    info.max_dynamic_smem = info.static_smem < window ? window - info.static_smem : 0;
    CUfunction f = new CUfunc_st;
    f->mod = hmod;
    f->kernel = k;
    hmod->functions.push_back(f);
    register_handle(f);
    *hfunc = f;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, CUmodule hmod, const char* name) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_module(hmod)) return CUDA_ERROR_INVALID_HANDLE;
    uint64_t addr, size;
    if (!find_global(hmod->module, name, &addr, &size)) return CUDA_ERROR_NOT_FOUND;
    if (dptr) *dptr = addr;
    if (bytes) *bytes = size;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunctionCount(unsigned int* count, CUmodule mod) {
    SG_LOCK;
    if (CUresult r = check_init()) return r;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_module(mod)) return CUDA_ERROR_INVALID_HANDLE;
    *count = unsigned(mod->functions.size());  // functions looked up so far
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- function attributes
CUresult cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction hfunc) {
    SG_LOCK;
    if (CUresult r = require_function(hfunc)) return r;
    if (!pi) return CUDA_ERROR_INVALID_VALUE;
    const KernelInfo& info = kernel_info(hfunc->kernel);
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = int(function_max_threads(info)); break;
        case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *pi = int(info.static_smem); break;
        case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *pi = 0; break;
        case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *pi = int(info.local_bytes); break;
        case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = int(kernel_registers(info)); break;
        case CU_FUNC_ATTRIBUTE_PTX_VERSION: *pi = 80; break;
        case CU_FUNC_ATTRIBUTE_BINARY_VERSION:  // JIT-compiled for this device
            *pi = device_profile().cc_major * 10 + device_profile().cc_minor;
            break;
        case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *pi = 0; break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *pi = int(info.max_dynamic_smem); break;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *pi = -1; break;
        case CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET:
        case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH:
        case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT:
        case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH:
        case CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
        case CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE: *pi = 0; break;
        default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
    SG_LOCK;
    if (CUresult r = require_function(hfunc)) return r;
    KernelInfo& info = kernel_info(hfunc->kernel);
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
            if (value < 0 || uint64_t(value) + info.static_smem > device_profile().smem_optin_per_block) return CUDA_ERROR_INVALID_VALUE;
            info.max_dynamic_smem = uint32_t(value);
            return CUDA_SUCCESS;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
            return value >= -1 && value <= 100 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;  // a hint only
        default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
    SG_LOCK;
    if (CUresult r = require_function(hfunc)) return r;
    if (config < CU_FUNC_CACHE_PREFER_NONE || config > CU_FUNC_CACHE_PREFER_EQUAL) return CUDA_ERROR_INVALID_VALUE;
    hfunc->cache_config = config;
    return CUDA_SUCCESS;
}

CUresult cuFuncGetName(const char** name, CUfunction hfunc) {
    SG_LOCK;
    if (CUresult r = require_function(hfunc)) return r;
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    *name = kernel_info(hfunc->kernel).name.c_str();
    return CUDA_SUCCESS;
}

CUresult cuFuncGetModule(CUmodule* hmod, CUfunction hfunc) {
    SG_LOCK;
    if (CUresult r = require_function(hfunc)) return r;
    if (!hmod) return CUDA_ERROR_INVALID_VALUE;
    *hmod = hfunc->mod;
    return CUDA_SUCCESS;
}

CUresult cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t* paramOffset, size_t* paramSize) {
    SG_LOCK;
    if (CUresult r = require_function(func)) return r;
    const KernelInfo& info = kernel_info(func->kernel);
    if (paramIndex >= info.params.size()) return CUDA_ERROR_INVALID_VALUE;
    if (paramOffset) *paramOffset = info.params[paramIndex].offset;
    if (paramSize) *paramSize = info.params[paramIndex].size;
    return CUDA_SUCCESS;
}

CUresult cuFuncGetParamCount(CUfunction func, size_t* paramCount) {
    SG_LOCK;
    if (CUresult r = require_function(func)) return r;
    if (!paramCount) return CUDA_ERROR_INVALID_VALUE;
    *paramCount = kernel_info(func->kernel).params.size();
    return CUDA_SUCCESS;
}
