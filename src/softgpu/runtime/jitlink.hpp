// runtime/jitlink.hpp: exact per-kernel register counts from NVIDIA's JIT linker (runtime/jitlink.cpp).
#pragma once

#include <map>
#include <string>

namespace softgpu {

struct JitCounts {
    int registers = 0;
    int spill_bytes = 0;  // spill stores + spill loads, bytes per thread
};

// Compiles the PTX for sm_<arch> with libnvJitLink (dlopened from $CYBN_SOFTGPU_NVJITLINK) and reads
// each entry's registers and spills from ptxas' verbose log. Results are cached per (arch, text).
// False with *why when the library is not configured, cannot be loaded, or rejects the PTX.
bool jitlink_registers(const char* ptx, size_t len, int arch, std::map<std::string, JitCounts>* out,
                       std::string* why);
// "" when no library is configured; else the path, or the reason it could not be loaded.
std::string jitlink_status();

}  // namespace softgpu
