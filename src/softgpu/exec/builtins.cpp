// exec/builtins.cpp: the device-side runtime that PTX reaches through calls to undefined
// functions: vprintf (formatted on the host into a FIFO of the context's CU_LIMIT_PRINTF_FIFO_SIZE,
// written to stdout at the next synchronize, as the driver does), __assertfail (the launch fails
// with CUDA_ERROR_ASSERT, the message and its location), malloc/free (a device heap of
// CU_LIMIT_MALLOC_HEAP_SIZE bytes; each block is its own allocation, so memcheck bounds it exactly
// and a use after free is caught).
#include <cstdio>
#include <cstring>
#include <map>

#include "exec/exec.hpp"

namespace softgpu {

namespace {

std::string g_fifo;              // formatted device printf output not yet flushed
uint64_t g_heap_used = 0;        // bytes of live device-heap blocks
std::map<uint64_t, uint64_t> g_heap;  // live device-heap block -> size

struct FlushAtExit {
    ~FlushAtExit() { flush_device_printf(); }
} g_flush_at_exit;

// Argument j of the call as the caller stored it in its .param frame.
uint64_t arg(const Thread& t, const CallSite& cs, size_t j) {
    uint64_t v = 0;
    memcpy(&v, &t.local[t.lp + cs.args[j].caller_off], std::min<uint32_t>(cs.args[j].size, 8));
    return v;
}

void set_ret(Thread& t, const CallSite& cs, uint64_t v) {
    if (!cs.rets.empty()) memcpy(&t.local[t.lp + cs.rets[0].caller_off], &v, std::min<uint32_t>(cs.rets[0].size, 8));
}

// Reads device memory through a generic address with the usual checks; false after a finding.
bool read(Exec& x, Thread& t, const Instr& in, uint64_t a, void* out, uint32_t size) {
    int real;
    uint8_t* p = resolve(x, t, in, SP_GENERIC, a, size, AC_LOAD, &real);
    if (!p) return false;
    memcpy(out, p, size);
    return true;
}

bool read_string(Exec& x, Thread& t, const Instr& in, uint64_t a, std::string* s) {
    s->clear();
    for (;; ++a) {
        char c;
        if (!read(x, t, in, a, &c, 1)) return false;
        if (!c) return true;
        *s += c;
    }
}

std::string triple(const uint32_t* v) {
    return "[" + std::to_string(v[0]) + "," + std::to_string(v[1]) + "," + std::to_string(v[2]) + "]";
}

}  // namespace

void flush_device_printf() {
    if (g_fifo.empty()) return;
    fwrite(g_fifo.data(), 1, g_fifo.size(), stdout);
    fflush(stdout);
    g_fifo.clear();
}

// printf's conversions over CUDA's argument buffer: each argument promoted (integers to at least
// 4 bytes, float to double) and aligned to its size. Returns the argument count, -1 on a bad format.
static int format(Exec& x, Thread& t, const Instr& in, const std::string& fmt, uint64_t args, std::string* out) {
    uint64_t off = 0;
    int count = 0;
    auto take = [&](uint32_t size, void* v) {
        off = (off + size - 1) / size * size;
        bool ok = read(x, t, in, args + off, v, size);
        off += size;
        return ok;
    };
    for (size_t i = 0; i < fmt.size(); ++i) {
        if (fmt[i] != '%') { *out += fmt[i]; continue; }
        size_t j = i + 1;
        if (j < fmt.size() && fmt[j] == '%') { *out += '%'; i = j; continue; }
        std::string spec = "%";
        while (j < fmt.size() && strchr("-+ #0", fmt[j])) spec += fmt[j++];
        for (int part = 0; part < 2; ++part) {  // width, then .precision
            if (part == 1) {
                if (j >= fmt.size() || fmt[j] != '.') break;
                spec += fmt[j++];
            }
            if (j < fmt.size() && fmt[j] == '*') {
                int32_t w;
                if (!take(4, &w)) return -2;
                spec += std::to_string(w);
                ++j, ++count;
            } else {
                while (j < fmt.size() && isdigit((unsigned char)fmt[j])) spec += fmt[j++];
            }
        }
        int longs = 0;
        while (j < fmt.size() && strchr("hlLqjzt", fmt[j])) {
            if (strchr("lLqjzt", fmt[j])) ++longs;
            ++j;
        }
        if (j >= fmt.size()) return -1;
        char conv = fmt[j];
        char buf[512];
        if (strchr("diouxXc", conv)) {
            bool wide = longs > 0;
            uint64_t v = 0;
            if (!take(wide ? 8 : 4, &v)) return -2;
            if (conv == 'c') snprintf(buf, sizeof buf, (spec + "c").c_str(), int(v & 0xff));
            else if (strchr("di", conv)) snprintf(buf, sizeof buf, (spec + "lld").c_str(), wide ? (long long)v : (long long)int32_t(v));
            else snprintf(buf, sizeof buf, (spec + "ll" + conv).c_str(), wide ? (unsigned long long)v : (unsigned long long)uint32_t(v));
        } else if (strchr("fFeEgGaA", conv)) {
            double v;
            if (!take(8, &v)) return -2;
            snprintf(buf, sizeof buf, (spec + conv).c_str(), v);
        } else if (conv == 's') {
            uint64_t p;
            std::string s;
            if (!take(8, &p)) return -2;
            if (p && !read_string(x, t, in, p, &s)) return -2;
            snprintf(buf, sizeof buf, (spec + "s").c_str(), p ? s.c_str() : "(null)");
        } else if (conv == 'p') {
            uint64_t p;
            if (!take(8, &p)) return -2;
            snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)p);
        } else {
            return -1;
        }
        *out += buf;
        ++count;
        i = j;
    }
    return count;
}

bool Exec::call_builtin(Thread& t, const Instr& in, const CallSite& cs) {
    switch (cs.builtin) {
        case BI_VPRINTF: {
            std::string fmt, text;
            uint64_t f = arg(t, cs, 0);
            if (!f) { set_ret(t, cs, uint64_t(-1)); return true; }
            if (!read_string(*this, t, in, f, &fmt)) return false;
            int n = format(*this, t, in, fmt, arg(t, cs, 1), &text);
            if (n == -2) return false;  // a finding on an argument's memory
            if (n == -1) text = "printf: unsupported conversion in \"" + fmt + "\"\n";
            if (g_fifo.size() + text.size() <= device_limits().printf_fifo) g_fifo += text;  // a full FIFO drops it
            set_ret(t, cs, uint64_t(int64_t(n < 0 ? -1 : n)));
            return true;
        }
        case BI_ASSERTFAIL: {
            std::string msg, file, func;
            if (!read_string(*this, t, in, arg(t, cs, 0), &msg) || !read_string(*this, t, in, arg(t, cs, 1), &file) ||
                !read_string(*this, t, in, arg(t, cs, 3), &func))
                return false;
            std::string where = file + ":" + std::to_string(uint32_t(arg(t, cs, 2)));
            // The driver prints this line too (through the printf FIFO), then the launch fails.
            g_fifo += where + ": " + func + ": block: " + triple(t.cta->idx) + ", thread: " + triple(t.tidx) +
                      " Assertion `" + msg + "` failed.\n";
            finding(710, CK_OTHER, t, in, "device assertion `" + msg + "` failed at " + where + " in " + func);
            abort = true;
            return false;
        }
        case BI_MALLOC: {
            uint64_t size = arg(t, cs, 0), p = 0, rounded = (size + 15) & ~15ull;
            if (size && g_heap_used + rounded <= device_limits().malloc_heap) {
                p = alloc_module_global(rounded, 16);
                g_heap[p] = rounded;
                g_heap_used += rounded;
            }
            set_ret(t, cs, p);  // null when the heap is exhausted, as on the device
            return true;
        }
        case BI_FREE: {
            uint64_t p = arg(t, cs, 0);
            if (!p) return true;
            auto it = g_heap.find(p);
            if (it == g_heap.end()) {
                finding(700, CK_MEMCHECK, t, in, "free of an address the device malloc did not return: " + describe_address(p));
                abort = true;
                return false;
            }
            g_heap_used -= it->second;
            free_module_global(p);
            g_heap.erase(it);
            return true;
        }
    }
    return true;
}

}  // namespace softgpu
