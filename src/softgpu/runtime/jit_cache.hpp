// runtime/jit_cache.hpp: nvJitLink's register counts kept on disk between processes, as the CUDA driver
// keeps its JIT output (~/.nv/ComputeCache): one small file per (PTX text, architecture, libnvJitLink).
#pragma once

#include <map>
#include <string>

#include "runtime/jitlink.hpp"

namespace softgpu {

// The entry's name: hex SHA-256 of the format version, the library's identity (path, size, mtime),
// the architecture and the PTX text.
std::string jit_cache_key(const char* ptx, size_t len, int arch, const std::string& library);
// The counts stored under `key` in $CYBN_SOFTGPU_JIT_CACHE, if that directory is usable (a directory of
// this user's, not writable by group or others) and the entry is a well-formed regular file of this
// user's; anything else is a miss. Opens without following links or blocking (a FIFO is a miss).
bool jit_cache_load(const std::string& key, std::map<std::string, JitCounts>* out);
// Stores the counts (a temporary file renamed into place); failures are silent (the cache is optional).
void jit_cache_store(const std::string& key, const std::map<std::string, JitCounts>& counts);
// Per process: [0] nvJitLink compiles, [1] disk hits, [2] entries refused (malformed, foreign, not a file).
void jit_cache_stats(int* out);
void jit_cache_count_compile();

}  // namespace softgpu
