// exec/mbarrier.cpp: mbarrier objects (cuda::barrier, cuda::pipeline, TMA-style transaction
// counts). The 64-bit object in shared memory holds, in this engine's own layout, the expected
// arrivals per phase, the pending arrivals, the pending transaction bytes and the phase parity.
// The token an arrive returns is the object before the arrival; a wait compares phases.
#include "exec/exec.hpp"

namespace softgpu {

namespace {
constexpr uint64_t kField = (1ull << 21) - 1;
inline uint64_t expected(uint64_t s) { return s & kField; }
inline uint64_t pending(uint64_t s) { return (s >> 21) & kField; }
inline uint64_t tx(uint64_t s) { return (s >> 42) & kField; }
inline uint64_t phase(uint64_t s) { return s >> 63; }
inline uint64_t make(uint64_t exp, uint64_t pend, uint64_t txc, uint64_t ph) {
    return (exp & kField) | (pend & kField) << 21 | (txc & kField) << 42 | ph << 63;
}
}  // namespace

// Returns -1 after a finding that stops the launch, 1 when the thread should yield (a try_wait
// that is not complete yet), else 0.
int Exec::mbarrier(Thread& t, const Instr& in, uint64_t* R) {
    int real;
    if (in.mod == MB_PENDING_COUNT) {
        R[in.d] = pending(R[in.a]);
        return 0;
    }
    uint8_t* p = resolve(*this, t, in, in.space, R[in.a] + uint64_t(in.imm), 8,
                         in.mod == MB_INIT || in.mod == MB_INVAL ? AC_STORE : AC_ATOMIC, &real);  // waits are atomic reads
    if (!p) return abort ? -1 : 0;
    if (real != SP_SHARED) {
        finding(719, CK_OTHER, t, in, "mbarrier object outside shared memory");
        abort = true;
        return -1;
    }
    uint64_t s;
    memcpy(&s, p, 8);
    uint64_t b = R[in.b];
    auto fail = [&](const std::string& what) {
        finding(719, CK_OTHER, t, in, "mbarrier: " + what);
        abort = true;
        return -1;
    };
    auto complete_if_done = [&](uint64_t& st) {
        if (pending(st) == 0 && tx(st) == 0) {
            st = make(expected(st), expected(st), 0, phase(st) ^ 1);
            t.cta->epoch = uint32_t(epoch_counter++);  // racecheck: the phase orders its participants
        }
    };
    switch (in.mod) {
        case MB_INIT:
            if (b == 0 || b > kField) return fail("init count " + std::to_string(b) + " is outside 1..2^20-1");
            s = make(b, b, 0, 0);
            break;
        case MB_INVAL: s = 0; break;
        case MB_EXPECT_TX: s = make(expected(s), pending(s), tx(s) + b, phase(s)); break;
        case MB_COMPLETE_TX:
            if (b > tx(s)) return fail("complete_tx of " + std::to_string(b) + " bytes exceeds the " + std::to_string(tx(s)) + " expected");
            s = make(expected(s), pending(s), tx(s) - b, phase(s));
            complete_if_done(s);
            break;
        case MB_ARRIVE:
        case MB_ARRIVE_NOCOMPLETE:
        case MB_ARRIVE_EXPECT_TX: {
            if (expected(s) == 0) return fail("arrive on an object that is not initialised");
            uint64_t token = s, count = in.mod == MB_ARRIVE_EXPECT_TX ? 1 : b, txc = tx(s);
            if (in.mod == MB_ARRIVE_EXPECT_TX) txc += b;
            if (count == 0 || count > pending(s))
                return fail("arrive count " + std::to_string(count) + " exceeds the " + std::to_string(pending(s)) +
                            " pending arrivals of the phase");
            uint64_t exp = in.mod2 ? expected(s) - count : expected(s);  // arrive_drop: fewer from the next phase
            s = make(exp, pending(s) - count, txc, phase(s));
            if (in.mod == MB_ARRIVE_NOCOMPLETE && pending(s) == 0 && tx(s) == 0)
                return fail("arrive.noComplete would complete the phase");
            complete_if_done(s);
            R[in.d] = token;
            R[S_SINK] = 0;
            break;
        }
        default: {  // test_wait / try_wait
            bool done = (in.flags & F_HI) ? phase(s) != (b & 1) : phase(s) != phase(b);
            R[in.d] = done;
            return !done && in.mod == MB_TRY_WAIT ? 1 : 0;
        }
    }
    memcpy(p, &s, 8);
    return 0;
}

}  // namespace softgpu
