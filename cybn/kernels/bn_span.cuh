// bn_span.cuh: the SPAN walk of the NCHW spatial kernels (batchnorm.cu, their `SPAN = true` instantiations,
// compiled only into the SPAN programs so the plain kernels keep their registers).
//
// For S not a multiple of the vector width V (7x7 = 49, fp16 14x14 = 196 x 2 B, odd S) a row's channels do
// not start on 16-byte boundaries, but a CTA's span of CPB channels x S elements does (the plan makes
// CPB * S a multiple of V: CPB a multiple of V / gcd(S, V), and C * S a multiple of V). Channel c owns the
// 16-byte units that START in its elements, units ub = ceil(c S / V) .. ue - 1 = ceil((c + 1) S / V) - 1
// of each row; the last of them may end in channel c + 1 (S >= V: never further), whose first `V - own`
// elements it then holds. The owner reduces and writes those elements with c + 1's statistics and hands
// their sums to c + 1 through shared memory (a spill slot per thread, merged by the same lane of the next
// group after its own walk: a fixed order, deterministic). So every element is loaded once, in whole
// 16-byte units, and only a row's last unit touches the scratch: the next channel's state costs no
// registers across the walk.
#pragma once
#include "bn_abi.h"  // BN_SPAN_SLOT_*

// Channel c's units: unit s (0 <= s < su) of row n is unit n * rowlen + ub + s of the tensor.
struct SpanView {
    long long rowlen;  // units per tensor row: C * S / V
    long long ub;      // the channel's first unit in a row
    long long su;      // its units per row (floor or ceil of S / V)
    int own;           // its elements in each row's last unit (V: all of them)
};

template <int V>
__device__ __forceinline__ SpanView span_view(long long c, long long C, long long S) {
    const long long ub = (c * S + V - 1) / V, ue = ((c + 1) * S + V - 1) / V;
    return SpanView{C * S / V, ub, ue - ub, (int)((c + 1) * S - (ue - 1) * V)};
}

// walk_channel (batchnorm.cu) over a SpanView: units u0 + lane, u0 + lane + G, ... < u1 of the channel,
// in batches of B (loads first, then uses in walk order); use(k, offset, value, last) also gets whether
// the unit is its row's last (the one that may hold the next channel's first elements).
template <int B, typename L, typename U>
__device__ __forceinline__ void span_walk(const SpanView& sv, long long u0, long long u1, L load, U use) {
    const int G = blockDim.x;
    long long u = u0 + threadIdx.x;
    if (u >= u1) return;
    const long long su = sv.su;
    long long n = u / su, s = u - n * su;
    long long off = n * sv.rowlen + sv.ub + s;
    const long long dn = G / su, ds = G - dn * su;
    const long long step = dn * sv.rowlen + ds, wrap = sv.rowlen - su;
    using R = decltype(load(0, off));
    for (int k = 0; u < u1; k += B) {
        long long o[B];
        R r[B];
        unsigned last = 0;  // bit j: unit j is its row's last
        int m = 0;
#pragma unroll
        for (int j = 0; j < B; ++j) {
            o[j] = off;
            last |= (s == su - 1 ? 1u : 0u) << j;
            if (u < u1) {
                r[j] = load(k + j, off);
                m = j + 1;
            }
            u += G;
            s += ds;
            off += step;
            if (s >= su) {
                s -= su;
                off += wrap;
            }
        }
#pragma unroll
        for (int j = 0; j < B; ++j)
            if (j < m) use(k + j, o[j], r[j], ((last >> j) & 1u) != 0u);
    }
}

// share<true> (batchnorm.cu) that also gives each threadIdx.y group the next group's values (its own for
// the CTA's last group, which never spills). Every thread must call it.
template <typename V4>
__device__ __forceinline__ V4 span_share(V4 v, V4& next) {
    __shared__ V4 slot[32];
    const int i = threadIdx.y;
    if (threadIdx.x == 0) slot[i] = v;
    __syncthreads();
    const V4 r = slot[i];
    next = i + 1 < (int)blockDim.y ? slot[i + 1] : r;
    __syncthreads();  // slot is reused by the next call
    return r;
}

// Slot `slot` of `width` P values in the dynamic shared memory after `skip` bytes (the replay cache).
// Reductions: a slot per thread (BN_SPAN_SLOT_FWD / _BWD: the spill accumulator, then constants);
// element-wise kernels: a slot per group (BN_SPAN_SLOT_EW: its constants, read by the previous group).
template <typename P>
__device__ __forceinline__ P* span_scratch(long long skip, int slot, int width) {
    extern __shared__ uint4 bn_span_smem[];  // the kernel's dynamic shared memory (also its `cache`)
    return reinterpret_cast<P*>(reinterpret_cast<char*>(bn_span_smem) + skip) + slot * width;
}
// The accumulators live at a slot's start as whole structs (whatever their fields).
template <typename A, typename P>
__device__ __forceinline__ A& span_acc(P* slot) { return *reinterpret_cast<A*>(slot); }

// After the walk: the previous group's spill (the same lane's slot, `width` back) merged after this
// group's own values. Every thread must call it.
template <typename A, typename P>
__device__ __forceinline__ A span_merge_prev(A own, P* slot, int width) {
    __syncthreads();
    return threadIdx.y > 0 ? merge(own, span_acc<A>(slot - (int)blockDim.x * width)) : own;
}

// A unit's elements: f(i, next) with next = whether element i is the next channel's (spill: i >= own).
template <int V, typename F>
__device__ __forceinline__ void span_unit(bool spill, int own, F f) {
    if (spill) {
#pragma unroll
        for (int i = 0; i < V; ++i) f(i, i >= own);
    } else {
#pragma unroll
        for (int i = 0; i < V; ++i) f(i, false);
    }
}

// Forward statistics of a unit: own elements into w, the spill into the slot's accumulator (shift at [5]).
template <int V, typename P>
__device__ __forceinline__ void span_welford_unit(Welford<P>& w, P* slot, const P* v, P shift, P ws, bool spill,
                                                  int own) {
    static_assert(sizeof(Welford<P>) <= (BN_SPAN_SLOT_FWD - 1) * sizeof(P), "bn_abi.h: BN_SPAN_SLOT_FWD too small");
    if (spill) {
        Welford<P> wn = span_acc<Welford<P>>(slot);
        const P shn = slot[5], wsn = welford_scale(shn);
#pragma unroll
        for (int i = 0; i < V; ++i)
            if (i < own) welford_push(w, v[i], shift, ws);
            else welford_push(wn, v[i], shn, wsn);
        span_acc<Welford<P>>(slot) = wn;
    } else {
#pragma unroll
        for (int i = 0; i < V; ++i) welford_push(w, v[i], shift, ws);
    }
}

// Backward sums of a unit (own into acc, the spill into the slot's; the next channel's hi and a at [6], [7]),
// and vd scaled by a (the frozen backward's dx).
template <int V, typename P>
__device__ __forceinline__ void span_bwd_unit(BwdSums<P>& acc, P* slot, const P* vx, P* vd, P hi, P a, bool spill,
                                              int own) {
    static_assert(sizeof(BwdSums<P>) <= (BN_SPAN_SLOT_BWD - 3) * sizeof(P), "bn_abi.h: BN_SPAN_SLOT_BWD too small");
    if (spill) {
        BwdSums<P> an = span_acc<BwdSums<P>>(slot);
        const P hn = slot[6], sn = slot[7];
#pragma unroll
        for (int i = 0; i < V; ++i) {
            const bool nx = i >= own;
            bwd_push(nx ? an : acc, vx[i], vd[i], nx ? hn : hi);
            vd[i] *= nx ? sn : a;
        }
        span_acc<BwdSums<P>>(slot) = an;
    } else {
#pragma unroll
        for (int i = 0; i < V; ++i) {
            bwd_push(acc, vx[i], vd[i], hi);
            vd[i] *= a;
        }
    }
}

// y of a unit: the next channel's (a, b, hi, lo) at q[0..3] for the spilled elements.
template <int EPI, int V, typename P>
__device__ __forceinline__ void span_normalize_unit(P* v, const P* e, P hi, P lo, P a, P b, bool spill, int own,
                                                    const P* q, int act, P alpha) {
    span_unit<V>(spill, own, [&](int i, bool nx) {
        v[i] = epi_out<EPI>(normalize1(v[i], nx ? q[2] : hi, nx ? q[3] : lo, nx ? q[0] : a, nx ? q[1] : b), e[i], act,
                            alpha);
    });
}

// g = dy * act'(v) of a unit: the next channel's hi, a, bias at *hn, *an, *bn for the spilled elements.
template <int EPI, int V, typename P>
__device__ __forceinline__ void span_epi_grad_unit(P* vd, const P* vx, const P* ve, bool use_y, P hi, P a, P bb,
                                                   bool spill, int own, const P* hn, const P* an, const P* bn, int act,
                                                   P alpha) {
    span_unit<V>(spill, own, [&](int i, bool nx) {
        vd[i] = epi_grad<EPI>(vd[i], vx[i], ve[i], use_y, nx ? *hn : hi, nx ? *an : a, nx ? *bn : bb, act, alpha);
    });
}

// dx of a unit: the next channel's (a, dbias / M, k, lo, hi) at q[0..4] for the spilled elements.
template <int V, typename P>
__device__ __forceinline__ void span_dx_unit(P* vd, const P* vx, P hi, P lo, P a, P dbm, P k, bool spill, int own,
                                             const P* q) {
    span_unit<V>(spill, own, [&](int i, bool nx) {
        vd[i] = dx1(vx[i], vd[i], nx ? q[4] : hi, nx ? q[3] : lo, nx ? q[0] : a, nx ? q[1] : dbm, nx ? q[2] : k);
    });
}
