// runtime/jitlink.hpp: exact per-kernel register counts from ptxas' log (runtime/jitlink.cpp).
#pragma once

#include <map>
#include <string>

namespace softgpu {

struct JitCounts {
    int registers = 0;
    int spill_bytes = 0;  // spill stores + spill loads, bytes per thread
};

// Compiles the PTX for sm_<arch> with whole-program ptxas ($CYBN_SOFTGPU_PTXAS) if configured, else with
// libnvJitLink (dlopened from $CYBN_SOFTGPU_NVJITLINK), and reads each entry's registers and spills from
// ptxas' verbose log. Results are cached per (arch, text, compiler). False with *why when neither is
// configured, the configured one cannot be used, or it rejects the PTX.
bool exact_registers(const char* ptx, size_t len, int arch, std::map<std::string, JitCounts>* out,
                     std::string* why);
// "ptxas:<path>" or "nvjitlink:<path>" for the compiler in use; "" when none is configured; else why not.
std::string register_source_status();

}  // namespace softgpu
