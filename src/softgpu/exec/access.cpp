// exec/access.cpp: one memory access of a thread: the generic address resolved to its space and a
// host pointer, with memcheck (bounds, alignment, freed memory), racecheck (shared memory, per
// barrier epoch) and initcheck findings.
#include <cstring>

#include "exec/exec.hpp"

namespace softgpu {

namespace {

const char* space_name(int sp) {
    switch (sp) {
        case SP_GLOBAL: return "global";
        case SP_SHARED: return "shared";
        case SP_LOCAL: return "local";
        case SP_KPARAM: return "param";
        default: return "generic";
    }
}
const char* access_name(int kind) { return kind == AC_LOAD ? "load" : kind == AC_STORE ? "store" : "atomic"; }

std::string hex(uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
    return b;
}

}  // namespace

// Memory access resolution (returns a host pointer, or null after recording a finding).
#define SG_FAULT(code, check, msg)                  \
    do {                                            \
        finding(code, check, t, in, msg);           \
        return nullptr;                             \
    } while (0)

static inline bool misaligned(uint64_t a, uint32_t size) { return a & (size - 1); }

static void race_check(Exec& x, Thread& t, const Instr& in, uint64_t off, uint32_t size, int kind) {
    Cta& cta = *t.cta;
    uint32_t me = t.tid + 1, ep = cta.epoch, wep = cta.warp_epoch[t.warp];
    bool write = kind != AC_LOAD, atomic = kind == AC_ATOMIC;
    for (uint32_t i = 0; i < size; ++i) {
        Shadow& s = cta.shadow[off + i];
        // Another thread's access in this barrier epoch conflicts unless both are atomics, or both
        // threads are in one warp and a warp-synchronous collective separated the accesses.
        auto conflict = [&](uint32_t other, uint32_t oep, uint32_t owep) {
            if (other == 0 || other == me || oep != ep) return false;
            if (other != kManyReaders && (other - 1) / 32 == t.warp && owep != wep) return false;
            return true;
        };
        const char* what = nullptr;
        uint32_t other = 0, oline = 0;
        bool w_atomic = s.w_line >> 31;
        if (conflict(s.w_tid, s.w_epoch, s.w_wepoch) && !(atomic && w_atomic)) {
            what = w_atomic ? "an atomic" : "a write";
            other = s.w_tid;
            oline = s.w_line & 0x7fffffffu;
        } else if (write && (s.r_tid == kManyReaders ? s.r_epoch == ep : conflict(s.r_tid, s.r_epoch, s.r_wepoch))) {
            what = "a read";
            other = s.r_tid;
            oline = s.r_line;
        }
        if (what) {
            std::string by = other == kManyReaders ? "several threads" : "thread " + std::to_string(other - 1);
            const Thread& o = other != kManyReaders ? cta.threads[other - 1] : t;
            if (other != kManyReaders)
                by = "thread (" + std::to_string(o.tidx[0]) + "," + std::to_string(o.tidx[1]) + "," + std::to_string(o.tidx[2]) + ")";
            x.finding(719, CK_RACECHECK, t, in,
                      std::string("shared ") + access_name(kind) + " of " + std::to_string(size) + " bytes at shared offset " +
                          hex(off) + " races with " + what + " by " + by + " at line " + std::to_string(oline) +
                          " (no barrier between them)");
            return;
        }
        if (write) {
            s.w_tid = me;
            s.w_epoch = ep;
            s.w_wepoch = wep;
            s.w_line = in.line | (atomic ? 0x80000000u : 0);
            if (!atomic) s.r_tid = 0;
        } else if (s.r_tid == 0 || s.r_epoch != ep || s.r_tid == me) {
            s.r_tid = me;
            s.r_epoch = ep;
            s.r_wepoch = wep;
            s.r_line = in.line;
        } else if (s.r_tid != kManyReaders) {
            bool same_warp_synced = (s.r_tid - 1) / 32 == t.warp && s.r_wepoch != wep;
            if (!same_warp_synced) s.r_tid = kManyReaders;
            else s.r_tid = me, s.r_wepoch = wep;
            s.r_line = in.line;
        }
    }
}

uint8_t* resolve(Exec& x, Thread& t, const Instr& in, int sp, uint64_t a, uint32_t size, int kind, int* real) {
    if (sp == SP_GENERIC) {
        if (a - kSharedWindow < kWindowSize) sp = SP_SHARED, a -= kSharedWindow;
        else if (a - kLocalWindow < kWindowSize) sp = SP_LOCAL, a -= kLocalWindow;
        else if (a - kParamWindow < kWindowSize) sp = SP_KPARAM, a -= kParamWindow;
        else sp = SP_GLOBAL;
    }
    *real = sp;
    auto what = [&](const char* extra) {
        return std::string(extra) + " " + space_name(sp) + " " + access_name(kind) + " of " + std::to_string(size) +
               " bytes at " + hex(sp == SP_GLOBAL ? a : a) + (sp == SP_GLOBAL ? "" : " (offset in the " + std::string(space_name(sp)) + " window)");
    };
    bool align_bad = x.conf.memcheck && misaligned(a, size);
    switch (sp) {
        case SP_GLOBAL: {
            if (a - x.cache_base > x.cache_size || x.cache_size - (a - x.cache_base) < size) {
                const Allocation* al = find_allocation(a);
                if (!al || al->size - (a - al->base) < size) {
                    std::string d = x.conf.memcheck ? ": " + describe_address(al ? al->base + al->size : a) : "";
                    if (x.conf.memcheck && al) d = ": the access ends " + std::to_string(a + size - al->base - al->size) +
                                                   " bytes past the end of its allocation; " + describe_address(a + size - 1);
                    else if (x.conf.memcheck) d = ": " + describe_address(a);
                    x.finding(700, CK_MEMCHECK, t, in, what("invalid") + d);
                    x.abort = true;
                    return nullptr;
                }
                x.cache_alloc = al;
                x.cache_base = al->base;
                x.cache_size = al->size;
            }
            if (align_bad) {
                x.finding(700, CK_MEMCHECK, t, in, what("misaligned") + " (needs " + std::to_string(size) + "-byte alignment)");
                x.abort = true;
                return nullptr;
            }
            const Allocation& al = *x.cache_alloc;
            if (al.init) {
                if (kind != AC_STORE && x.conf.initcheck) {
                    uint64_t bad;
                    if (!is_initialized(al, a, size, &bad)) {
                        x.finding(719, CK_INITCHECK, t, in,
                                  std::string("uninitialised global ") + access_name(kind) + " of " + std::to_string(size) +
                                      " bytes at " + hex(a) + ": first unwritten byte " + describe_address(bad));
                    }
                }
                if (kind != AC_LOAD) mark_initialized(al, a, size);
            }
            if (x.cfg.access) x.cfg.access->note(al, a, size, kind != AC_STORE, kind != AC_LOAD);  // streamcheck
            return reinterpret_cast<uint8_t*>(a);
        }
        case SP_SHARED: {
            if (a - kReservedSmemOffset < kReservedSmemBytes && !t.cta->reserved_smem.empty()) {
                if (kReservedSmemBytes - (a - kReservedSmemOffset) < size || (align_bad)) {
                    x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds or misaligned") + " in the reserved shared memory");
                    x.abort = true;
                    return nullptr;
                }
                return t.cta->reserved_smem.data() + (a - kReservedSmemOffset);
            }
            if (a >= x.smem_size || x.smem_size - a < size) {
                x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds") + ": the block has " + std::to_string(x.smem_size) +
                                                        " bytes of shared memory");
                x.abort = true;
                return nullptr;
            }
            if (align_bad) {
                x.finding(700, CK_MEMCHECK, t, in, what("misaligned") + " (needs " + std::to_string(size) + "-byte alignment)");
                x.abort = true;
                return nullptr;
            }
            if (x.conf.racecheck) race_check(x, t, in, a, size, kind);
            return t.cta->smem.data() + a;
        }
        case SP_LOCAL: {
            if (a >= t.local.size() || t.local.size() - a < size) {
                x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds") + ": the thread has " + std::to_string(t.local.size()) +
                                                        " bytes of local memory");
                x.abort = true;
                return nullptr;
            }
            if (align_bad) {
                x.finding(700, CK_MEMCHECK, t, in, what("misaligned") + " (needs " + std::to_string(size) + "-byte alignment)");
                x.abort = true;
                return nullptr;
            }
            return t.local.data() + a;
        }
        case SP_KPARAM: {
            uint32_t pb = x.kernel->info.param_bytes;
            if (a >= pb || pb - a < size) {
                x.finding(700, CK_MEMCHECK, t, in, what("out-of-bounds") + ": the parameters are " + std::to_string(pb) + " bytes");
                x.abort = true;
                return nullptr;
            }
            if (kind != AC_LOAD) {
                x.finding(700, CK_MEMCHECK, t, in, what("invalid") + ": kernel parameters are read-only");
                x.abort = true;
                return nullptr;
            }
            return const_cast<uint8_t*>(x.cfg.params) + a;
        }
    }
    x.finding(700, CK_MEMCHECK, t, in, what("unsupported"));
    x.abort = true;
    return nullptr;
}

}  // namespace softgpu
