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
#include <sstream>

#include "runtime/sha256.hpp"

namespace softgpu {
namespace {

// The entry format and what the counts mean (jitlink.cpp's parse_log): bump it when either changes, so older
// entries stop matching their keys.
constexpr const char* kMagic = "cybn-softgpu-jit 1";
constexpr off_t kMaxEntry = 1 << 20;
std::atomic<int> g_compiles{0}, g_hits{0}, g_refused{0};

// $CYBN_SOFTGPU_JIT_CACHE opened (created 0700 if missing and `create`), or -1 when unset, "0", relative, or not
// a usable directory. The checks are made on the opened directory, and entries are opened relative to it, so the
// path cannot be swapped for another directory between the check and the use.
int open_dir(bool create) {
    const char* env = getenv("CYBN_SOFTGPU_JIT_CACHE");
    if (!env || !*env || strcmp(env, "0") == 0 || env[0] != '/') return -1;
    std::string dir(env);
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();  // "d/" would follow a link named d
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && create && errno == ENOENT) {
        for (size_t i = 1; i <= dir.size(); ++i)  // mkdir -p, each new level private
            if (i == dir.size() || dir[i] == '/') mkdir(dir.substr(0, i).c_str(), 0700);
        fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        close(fd);
        return -1;
    }
    return fd;
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

bool valid_counts(const std::string& name, const JitCounts& c) {
    return valid_name(name) && c.registers >= 0 && c.registers <= 255 && c.spill_bytes >= 0 &&
           c.spill_bytes <= (1 << 20);
}

// The one spelling of an entry: load() accepts a file only if it is exactly this text for what it parsed.
std::string render(const std::string& key, const std::map<std::string, JitCounts>& counts) {
    std::string text = std::string(kMagic) + "\n" + key + "\n" + std::to_string(counts.size()) + "\n";
    for (const auto& [name, c] : counts)
        text += std::to_string(c.registers) + " " + std::to_string(c.spill_bytes) + " " + name + "\n";
    return text + "end\n";
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
        if (regs < 0 || regs > 255 || spill < 0 || spill > (1 << 20)) return false;
        JitCounts c{int(regs), int(spill)};
        if (!valid_counts(name, c)) return false;
        got[name] = c;
    }
    if (!std::getline(in, line) || line != "end" || std::getline(in, line)) return false;
    if (long(got.size()) != n || render(key, got) != text) return false;  // a repeated name, another spelling
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
    if (!valid_key(key)) return false;
    int dir = open_dir(false);
    if (dir < 0) return false;
    int fd = openat(dir, (key + ".regs").c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    close(dir);
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
    if (!valid_key(key)) return;
    for (const auto& [name, c] : counts)
        if (!valid_counts(name, c)) return;  // would not load back
    const std::string text = render(key, counts);
    int dir = open_dir(true);
    if (dir < 0) return;
    static std::atomic<unsigned> serial{0};
    std::string tmp;
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 8; ++attempt) {  // O_EXCL: a name no other writer holds
        tmp = "." + key + "." + std::to_string(getpid()) + "." + std::to_string(serial++) + ".tmp";
        fd = openat(dir, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd >= 0) {
        bool ok = write(fd, text.data(), text.size()) == ssize_t(text.size());
        ok = close(fd) == 0 && ok;
        if (!ok || renameat(dir, tmp.c_str(), dir, (key + ".regs").c_str()) != 0) unlinkat(dir, tmp.c_str(), 0);
    }
    close(dir);
}

void jit_cache_stats(int* out) {
    out[0] = g_compiles.load();
    out[1] = g_hits.load();
    out[2] = g_refused.load();
}

void jit_cache_count_compile() { ++g_compiles; }

}  // namespace softgpu
