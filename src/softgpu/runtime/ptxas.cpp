// runtime/ptxas.cpp: the whole-program ptxas log of a PTX module, the register counts a real driver's
// cuModuleLoadData JIT gives. nvJitLink (runtime/jitlink.cpp) compiles PTX as relocatable code, as
// ptxas -c and cuLink do, which costs the engine's fused kernels 8-16 registers more than the loader's
// (or NVRTC's CUBIN's) whole-program compile: a 64-register kernel reported as 72 runs 3 CTAs per SM
// instead of 4, so every occupancy-sized plan would differ from the hardware's. ptxas is the
// executable of NVIDIA's nvidia-cuda-nvcc wheel ($CYBN_SOFTGPU_PTXAS), run as a child process.
#include "runtime/ptxas.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

extern char** environ;

namespace softgpu {
namespace {

struct Tool {
    std::string status;  // the path, or why it is unusable; "" when not configured
    bool ok = false;
};

Tool find_tool() {
    Tool t;
    const char* path = getenv("CYBN_SOFTGPU_PTXAS");
    if (!path || !*path || strcmp(path, "0") == 0) return t;
    struct stat st;
    if (path[0] != '/') {
        t.status = std::string("CYBN_SOFTGPU_PTXAS is not an absolute path: ") + path;
    } else if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || access(path, X_OK) != 0) {
        t.status = std::string("CYBN_SOFTGPU_PTXAS is not an executable file: ") + path;
    } else {
        t.status = path;
        t.ok = true;
    }
    if (!t.ok) fprintf(stderr, "softgpu: %s; registers from nvJitLink's relocatable compile\n", t.status.c_str());
    return t;
}

const Tool& tool() {
    static const Tool t = find_tool();
    return t;
}

bool write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= size_t(w);
    }
    return true;
}

// The module in a private temporary directory (ptxas reads a file and writes one), removed afterwards.
struct TempDir {
    std::string dir;
    explicit TempDir() {
        const char* base = getenv("TMPDIR");
        std::string tmpl = std::string(base && base[0] == '/' ? base : "/tmp") + "/softgpu-ptxas-XXXXXX";
        if (mkdtemp(&tmpl[0])) dir = tmpl;
    }
    ~TempDir() {
        if (dir.empty()) return;
        unlink((dir + "/in.ptx").c_str());
        unlink((dir + "/out.cubin").c_str());
        rmdir(dir.c_str());
    }
};

}  // namespace

std::string ptxas_status() { return tool().status; }
bool ptxas_configured() { return tool().ok; }

bool ptxas_compile(const char* ptx, size_t len, int arch, std::string* log, std::string* why) {
    const Tool& t = tool();
    if (!t.ok) return *why = t.status.empty() ? "CYBN_SOFTGPU_PTXAS is not set" : t.status, false;
    TempDir tmp;
    if (tmp.dir.empty()) return *why = std::string("cannot make a temporary directory: ") + strerror(errno), false;
    const std::string in = tmp.dir + "/in.ptx", out = tmp.dir + "/out.cubin";
    while (len > 0 && ptx[len - 1] == '\0') --len;  // ptxas wants text, not cuModuleLoadData's NUL
    int fd = open(in.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    bool wrote = fd >= 0 && write_all(fd, ptx, len) && write_all(fd, "\n", 1);
    if (fd >= 0) close(fd);
    if (!wrote) return *why = "cannot write " + in, false;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return *why = std::string("pipe: ") + strerror(errno), false;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
    std::string arch_opt = "-arch=sm_" + std::to_string(arch);
    std::string exe = t.status;
    const char* argv[] = {exe.c_str(), arch_opt.c_str(), "-v", in.c_str(), "-o", out.c_str(), nullptr};
    pid_t pid = 0;
    int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, const_cast<char* const*>(argv), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pipefd[1]);
    if (rc != 0) {
        close(pipefd[0]);
        return *why = "cannot run " + exe + ": " + strerror(rc), false;
    }
    log->clear();
    char buf[65536];
    for (;;) {
        ssize_t n = read(pipefd[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        log->append(buf, size_t(n));
    }
    close(pipefd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return *why = "ptxas rejected the PTX for " + arch_opt + ": " + *log, false;
    return true;
}

}  // namespace softgpu
