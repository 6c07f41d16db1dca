// runtime/ptxas.hpp: whole-program ptxas, run as a child process (runtime/ptxas.cpp).
#pragma once

#include <cstddef>
#include <string>

namespace softgpu {

// True when $CYBN_SOFTGPU_PTXAS names an executable file by an absolute path.
bool ptxas_configured();
// "" when $CYBN_SOFTGPU_PTXAS is unset or 0; else the path, or why it is unusable.
std::string ptxas_status();
// ptxas -arch=sm_<arch> -v on the module: its verbose log in *log, or false with *why.
bool ptxas_compile(const char* ptx, size_t len, int arch, std::string* log, std::string* why);

}  // namespace softgpu
