// runtime/jit_cache.cpp: the on-disk half of runtime/jitlink.cpp's cache. Without it every process that
// loads the engine's modules runs ptxas on each (about a minute for all of them on two cores); the CUDA
// driver keeps its JIT output between processes the same way. An entry is untrusted input: it is read
// only if it is a regular file of this user's in a directory of this user's that nobody else can write,
// opened without following a link or waiting on a FIFO, at most kMaxEntry bytes, naming its own key,
// with every count in range; anything else is a miss and nvJitLink runs again.
#include "runtime/jit_cache.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

#include "runtime/sha256.hpp"

namespace softgpu {
namespace {

constexpr const char* kMagic = "cybn-softgpu-jit 1";
constexpr off_t kMaxEntry = 1 << 20;
std::atomic<int> g_compiles{0}, g_hits{0}, g_refused{0};

// $CYBN_SOFTGPU_JIT_CACHE, or "" when unset, "0", or not a usable directory (created 0700 if missing).
std::string usable_dir(bool create) {
    const char* env = getenv("CYBN_SOFTGPU_JIT_CACHE");
    if (!env || !*env || strcmp(env, "0") == 0 || env[0] != '/') return "";
    std::string dir(env);
    struct stat st;
    if (lstat(dir.c_str(), &st) != 0) {
        if (!create || errno != ENOENT) return "";
        for (size_t i = 1; i <= dir.size(); ++i)  // mkdir -p, each new level private
            if (i == dir.size() || dir[i] == '/') mkdir(dir.substr(0, i).c_str(), 0700);
        if (lstat(dir.c_str(), &st) != 0) return "";
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) return "";
    return dir;
}

bool valid_key(const std::string& key) {
    if (key.size() != 64) return false;
    for (char c : key)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

bool valid_name(const std::string& s) {
    if (s.empty() || s.size() > 4096) return false;
    for (char c : s)
        if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || c == '.')) return false;
    return true;
}

bool parse(const std::string& text, const std::string& key, std::map<std::string, JitCounts>* out) {
    std::istringstream in(text);
    std::string line;
    if (!std::getline(in, line) || line != kMagic) return false;
    if (!std::getline(in, line) || line != key) return false;
    long n = -1;
    if (!std::getline(in, line) || sscanf(line.c_str(), "%ld", &n) != 1 || n < 0 || n > 100000) return false;
    std::map<std::string, JitCounts> got;
    for (long i = 0; i < n; ++i) {
        if (!std::getline(in, line)) return false;
        std::istringstream f(line);
        long regs = -1, spill = -1;
        std::string name, extra;
        if (!(f >> regs >> spill >> name) || (f >> extra)) return false;
        if (regs < 1 || regs > 255 || spill < 0 || spill > (1 << 20) || !valid_name(name)) return false;
        got[name] = JitCounts{int(regs), int(spill)};
    }
    if (!std::getline(in, line) || line != "end" || std::getline(in, line)) return false;
    if (long(got.size()) != n) return false;  // a repeated name
    *out = std::move(got);
    return true;
}

}  // namespace

std::string jit_cache_key(const char* ptx, size_t len, int arch, const std::string& library) {
    Sha256 h;
    std::string head = std::string(kMagic) + "\n" + library + "\n";
    struct stat st;
    if (stat(library.c_str(), &st) == 0)
        head += std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
                std::to_string(st.st_mtim.tv_nsec) + "\n";
    head += "sm_" + std::to_string(arch) + "\n" + std::to_string(len) + "\n";
    h.update(head.data(), head.size());
    h.update(ptx, len);
    return h.hex();
}

bool jit_cache_load(const std::string& key, std::map<std::string, JitCounts>* out) {
    std::string dir = usable_dir(false);
    if (dir.empty() || !valid_key(key)) return false;
    std::string path = dir + "/" + key + ".regs";
    int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT) ++g_refused;  // a link, a FIFO without a writer, unreadable
        return false;
    }
    struct stat st;
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && st.st_size <= kMaxEntry;
    std::string text;
    if (ok) {
        text.resize(size_t(st.st_size));
        size_t got = 0;
        while (got < text.size()) {
            ssize_t r = read(fd, &text[got], text.size() - got);
            if (r <= 0) break;
            got += size_t(r);
        }
        char more;
        ok = got == text.size() && read(fd, &more, 1) == 0;  // the file did not grow while read
    }
    close(fd);
    if (ok) ok = parse(text, key, out);
    (ok ? g_hits : g_refused)++;
    return ok;
}

void jit_cache_store(const std::string& key, const std::map<std::string, JitCounts>& counts) {
    std::string dir = usable_dir(true);
    if (dir.empty() || !valid_key(key)) return;
    std::string text = std::string(kMagic) + "\n" + key + "\n" + std::to_string(counts.size()) + "\n";
    for (const auto& [name, c] : counts) {
        if (!valid_name(name) || c.registers < 1 || c.registers > 255) return;  // would not load back
        text += std::to_string(c.registers) + " " + std::to_string(c.spill_bytes) + " " + name + "\n";
    }
    text += "end\n";
    std::random_device rd;
    std::string tmp = dir + "/." + key + "." + std::to_string(getpid()) + "." + std::to_string(rd()) + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return;
    bool ok = write(fd, text.data(), text.size()) == ssize_t(text.size());
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp.c_str(), (dir + "/" + key + ".regs").c_str()) != 0) unlink(tmp.c_str());
}

void jit_cache_stats(int* out) {
    out[0] = g_compiles.load();
    out[1] = g_hits.load();
    out[2] = g_refused.load();
}

void jit_cache_count_compile() { ++g_compiles; }

}  // namespace softgpu
