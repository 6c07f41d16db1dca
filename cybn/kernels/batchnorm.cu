// batchnorm.cu: BatchNorm forward (train, inference) and backward, NCHW and per-activation: fp32, fp16 or
// bf16 data with fp32 statistics, or fp64 data with fp64 statistics (io<T>::P, bn_io.cuh); each kernel
// a template <T, EPI> (EPI 1: the fused activation / residual epilogue, bn_epilogue.cuh).
//
// Layout: x is (N, C, S) contiguous. "spatial" mode has one statistic per channel c over its N rows
// of S elements; "per-activation" mode has one statistic per feature f of the (N, F = C * S) matrix.
//
// Spatial kernels: block (G, CPB): a group of G threads (whole warps) per channel, CPB channels per
// CTA; grid (ceil(C / CPB), P): the P CTAs of a grid column split each channel's elements. Units are
// 16-byte vectors (4 floats / 8 halves) when rows are 16-byte aligned (flag VEC); with N == 1 (each
// channel one row) the row's aligned middle is vectorised between a scalar head and tail (ROWVEC);
// otherwise elements. S not a multiple of V (7x7, fp16 14x14, odd S): the SPAN instantiations (template
// argument SPAN = true, separate programs, bn_span.cuh) walk each CTA's 16-byte span of CPB channels x S.
// Per-activation kernels: block (BX, R): BX consecutive features (coalesced) times R row lanes;
// grid (ceil(F / BX), P): the P CTAs split the batch rows.
// With P == 1 a CTA owns its channels whole and fuses statistics and normalisation (or reduction
// and dx) into one launch, replaying x from a shared-memory cache where it fits. With P > 1 each CTA
// writes its partial to a workspace and the last CTA of a grid column (an atomic counter per
// column, re-armed by that CTA: bn_reduce.cuh; zeroed by the host only where it cannot trust it) combines them in a fixed order
// (deterministic); the element-wise second half is then a second launch.
// Offsets: 64-bit at the tensor base, 32-bit inside the walks wherever they fit (walk_channel); loops are
// grid-stride so any size fits the grid limits.
//
// Numerics. The batch mean is carried as an unevaluated float pair hi + lo (from the statistics'
// float-float sum of x - shift, welford.cuh; save_mean holds hi) and every kernel forms x - mean as
// (x - hi) - lo: exact (Sterbenz) for x near the mean, one rounding relative to the result elsewhere, so outputs near the
// bias keep their own precision at any offset. The backward does not need the forward's lo: its
// reduction also sums x - hi (exact by TwoSum, compensated) and recovers lo = mean(x - hi), so
// save_mean stays a plain float32 array and the faces carry nothing extra. The backward's sums
// (dy, dy * (x - hi), x - hi) are compensated per thread (CSum, welford.cuh) and merged pairwise.
// Parameter gradients are written cuDNN-style: grad = alpha * this_batch + beta * grad (beta == 0:
// grad is not read), optionally also the plain batch gradients (batch_scale_grad/batch_bias_grad).
//
// Shared pieces: bn_io.cuh (element types), bn_reduce.cuh (reductions), bn_stats.cuh (flags and
// per-statistic arithmetic), bn_epilogue.cuh (the fused activation / residual epilogue).
#include "bn_abi.h"  // the kernel flags and workspace entry sizes, shared with the core
#include "bn_io.cuh"
#include "bn_reduce.cuh"
#include "bn_stats.cuh"
#include "bn_epilogue.cuh"
#include "bn_span.cuh"  // the SPAN walk (only the SPAN = true instantiations use it)

// x's and dy's (and, fused, the epilogue's e: y or z) 16-byte units of one position, loaded together.
struct uint4x2 { uint4 x, d; };
struct uint4x3 { uint4 x, d, e; };
__device__ __forceinline__ uint4x2 make_uint4x2(uint4 x, uint4 d) { return uint4x2{x, d}; }

// The pieces of a loaded unit or element: first() is x; epi_e() unpacks the epilogue's second stream
// (z in the forward; y or z in the backward) or gives 0 where the walk loaded none (EPI 0).
__device__ __forceinline__ uint4 first(uint4 u) { return u; }
__device__ __forceinline__ uint4 first(uint4x2 u) { return u.x; }
template <typename P> __device__ __forceinline__ P first(P v) { return v; }
template <typename P> __device__ __forceinline__ P first(trio<P> v) { return v.x; }
__device__ __forceinline__ float first(float2 v) { return v.x; }
__device__ __forceinline__ double first(double2 v) { return v.x; }
template <typename T, typename P> __device__ __forceinline__ void epi_e(uint4, P* e) {
#pragma unroll
    for (int i = 0; i < io<T>::vec; ++i) e[i] = P(0);
}
template <typename T, typename P> __device__ __forceinline__ void epi_e(uint4x2 u, P* e) { io<T>::unpack(u.d, e); }
template <typename P> __device__ __forceinline__ P epi_e(P) { return P(0); }
__device__ __forceinline__ float epi_e(float2 v) { return v.y; }
__device__ __forceinline__ double epi_e(double2 v) { return v.y; }

// A pointer's 16-byte unit, or 0 (all-zero bits are 0 in every dtype) where the pointer is absent.
__device__ __forceinline__ uint4 unit_or_0(const uint4* p, long long off) { return p ? p[off] : make_uint4(0u, 0u, 0u, 0u); }
template <typename T>
__device__ __forceinline__ typename io<T>::P elem_or_0(const T* p, long long off) {
    return p ? io<T>::load(p + off) : typename io<T>::P(0);
}

// ---------------------------------------------------------------- spatial traversal
// Walks units u0 + lane, u0 + lane + G, ... < u1 of channel c, where unit u is column u % su of
// row u / su, at unit offset (row * C + c) * su + column from the tensor start; without a division
// per step, in index type I (unsigned where the offsets fit: walk_channel). In batches of B units per thread: load(k, offset) of the batch's units first (independent
// loads, all in flight together), then use(k, offset, value) of each in walk order, so the
// accumulation order is the unbatched walk's (deterministic) and a store in use() never has to wait on
// aliasing analysis (y may be x: each unit is read before it is written, by its owner). The streaming
// kernels (normalize, bwd_dx) take B = LOADS_IN_FLIGHT; the fused reductions B = 1, since four batched
// units there cost 20-50 more registers (one CTA fewer per SM, fp16 backward 131 on sm_90), except the
// forward's 16-byte walks without an epilogue in 16- and 32-bit types: B = BN_FWD_BATCH (fwd_batch) keeps
// them at or under 80 registers on sm_80 and sm_90, the same 3 CTAs of 256 threads per SM as B = 1.
// The SPAN forward takes the same rule; the SPAN backward batches BN_FWD_BATCH units without an epilogue
// in float and bfloat16 (span_bwd_batch), where it keeps the CTAs per SM of B = 1 (2026-12-03, sm_90:
// float 86 -> 106 registers, 2 CTAs; bf16 134 -> 138, 1), not in fp16 (128 -> 161: 2 -> 1 CTA).
enum : int { LOADS_IN_FLIGHT = 4 };
template <typename T, int EPI> __host__ __device__ constexpr int fwd_batch() { return sizeof(T) <= 4 && EPI == 0 ? BN_FWD_BATCH : 1; }
template <typename T> struct span_bwd_batched { static constexpr bool value = sizeof(T) <= 4; };
template <> struct span_bwd_batched<__half> { static constexpr bool value = false; };
template <typename T, int EPI> __host__ __device__ constexpr int span_bwd_batch() {
    return span_bwd_batched<T>::value && EPI == 0 ? BN_FWD_BATCH : 1;
}
template <int B, typename I, typename L, typename U>
__device__ __forceinline__ void walk_channel_as(I c, I C, I su, long long u0, long long u1, L load, U use) {
    const I G = blockDim.x;
    if (u0 + threadIdx.x >= u1) return;
    unsigned left = (unsigned)((u1 - u0 - threadIdx.x - 1) / G) + 1;  // < 2^32 steps per thread
    const I u = (I)(u0 + threadIdx.x);
    I n = u / su, s = u - n * su;
    const I row = C * su;
    I off = (n * C + c) * su + s;
    const I dn = G / su, ds = G - dn * su;
    const I step = dn * row + ds, wrap = row - su;
    using R = decltype(load(0, off));
    for (int k = 0; left; k += B) {
        I o[B];
        R r[B];
        int m = 0;
#pragma unroll
        for (int j = 0; j < B; ++j) {
            o[j] = off;
            if (left) {
                r[j] = load(k + j, off);
                m = j + 1;
                --left;
            }
            s += ds;
            off += step;
            if (s >= su) {
                s -= su;
                off += wrap;
            }
        }
#pragma unroll
        for (int j = 0; j < B; ++j)
            if (j < m) use(k + j, o[j], r[j]);
    }
}
// The reach of the 32-bit walk: unsigned offsets (16-byte units, or elements) below 2^32, i.e. 64 GiB of
// vectorised data. A macro only so that a test can compile the kernels with a reach of 0 and run the
// 64-bit walk on small tensors (tests/batchnorm/test_bn_walk_offsets.py).
#ifndef CYBN_WALK32_REACH
#define CYBN_WALK32_REACH (1LL << 32)
#endif

// 32-bit offsets and counters whenever this channel's walk stays within the reach (every offset it forms,
// including the step past its last unit: at most one row of C * su units and G * (C + 1) beyond the
// channel's last row), 64-bit otherwise; the same walk and the same order either way.
template <int B, typename L, typename U>
__device__ __forceinline__ void walk_channel(long long c, long long C, long long su, long long u0, long long u1,
                                            L load, U use) {
    if (u0 >= u1) return;
    const long long end = (((u1 - 1) / su + 1) * C + c + 1) * su + (long long)blockDim.x * (C + 1);
    if (end <= CYBN_WALK32_REACH)
        walk_channel_as<B, unsigned>((unsigned)c, (unsigned)C, (unsigned)su, u0, u1, load, use);
    else
        walk_channel_as<B, long long>(c, C, su, u0, u1, load, use);
}

// Where a channel's units are. VEC: 16-byte unit `off` of the tensor, walk_channel over (N, C, S / V).
// ROWVEC: the channel is one contiguous row (N == 1); units start at element `base` (16-byte aligned)
// and cover su * V elements, between a scalar head of h and a tail of t elements. Otherwise: elements.
struct ChannelView {
    long long cw, Cw, su;  // walk_channel's channel, channel count and units per row
    long long base;        // element offset of unit 0
    long long h, t;        // ROWVEC head and tail element counts
};

template <typename T>
__device__ __forceinline__ ChannelView channel_view(const T* x, long long c, long long C, long long S, int flags) {
    constexpr int V = io<T>::vec;
    if (!(flags & BN_ROWVEC)) return ChannelView{c, C, (flags & BN_VEC) ? S / V : S, 0, 0, 0};
    const unsigned mis = (unsigned)(reinterpret_cast<unsigned long long>(x + c * S) & 15u);
    long long h = mis ? (16 - mis) / sizeof(T) : 0;
    if (h > S) h = S;
    return ChannelView{0, 1, (S - h) / V, c * S + h, h, (S - h) % V};
}

// ROWVEC: the channel's scalar head and tail elements, one per lane of the first CTA of the column.
// f(element offset).
template <typename F>
__device__ __forceinline__ void walk_edges(const ChannelView& cv, long long c, long long S, bool ok, F f) {
    const int l = threadIdx.x;
    if (!ok || blockIdx.y != 0 || l >= cv.h + cv.t) return;
    f(c * S + (l < cv.h ? l : S - cv.t + (l - cv.h)));
}

// This CTA's share [u0, u1) of a channel's `units` units.
__device__ __forceinline__ void split_range(long long units, long long& u0, long long& u1) {
    const long long chunk = (units + gridDim.y - 1) / gridDim.y;
    u0 = min(units, chunk * blockIdx.y);
    u1 = min(units, u0 + chunk);
}

// Per-statistic values loaded once per CTA by the statistic's leader thread and handed to the others
// through shared memory, so parameter traffic is per statistic and CTA, not per warp or thread.
// Spatial: a statistic is a threadIdx.y group (leader threadIdx.x == 0); per-activation: a
// threadIdx.x column (leader threadIdx.y == 0). At most 32 per CTA. Every thread must call share().
template <bool SPATIAL>
__device__ __forceinline__ bool leader() { return SPATIAL ? threadIdx.x == 0 : threadIdx.y == 0; }

template <bool SPATIAL, typename V4>
__device__ __forceinline__ V4 share(V4 v) {
    __shared__ V4 slot[32];
    const int i = SPATIAL ? threadIdx.y : threadIdx.x;
    if (leader<SPATIAL>()) slot[i] = v;
    __syncthreads();
    const V4 r = slot[i];
    __syncthreads();  // slot is reused by the next call
    return r;
}

// The normalisation's per-statistic constants (a, b, hi, lo): y = ((x - hi) - lo) * a + b. SHIFTED: the
// training statistics from the workspace tail (finish_statistics); else the given (running) mean, lo = 0.
template <typename P>
__device__ __forceinline__ typename pv<P>::v4 normalize_constants(long long i, const P* mean, const P* stat,
                                                                  const P* scale, const P* bias,
                                                                  const P* tail, P eps, int flags) {
    const bool affine = flags & BN_AFFINE;
    const P sc = affine && !(flags & BN_FIX_GAMMA) ? scale[i] : P(1), b = affine ? bias[i] : P(0);
    if (flags & BN_SHIFTED) {
        const auto t = *reinterpret_cast<const typename pv<P>::v4*>(tail + i * FWD_TAIL);
        return mk4(t.z, b, t.x, t.y);
    }
    const P st = stat[i];
    const P a = (flags & BN_STAT_IS_VAR) ? (P)(sc * inv_std((double)st, eps)) : sc * st;
    return mk4(a, b, mean[i], P(0));
}

// The split backward's dx constants, written by the last CTA of the first launch: (a, dbias / M, k, lo).
enum : int { BWD_TAIL = BN_BWD_TAIL };  // P values per statistic
template <typename P, typename V4>
__device__ __forceinline__ void store_dx_constants(P* tail, long long i, P a, V4 r, P Mf) {
    P* q = tail + i * BWD_TAIL;
    q[0] = a; q[1] = r.y / Mf; q[2] = r.w; q[3] = r.z;
}

// ---------------------------------------------------------------- spatial forward, training
// Statistics (+ running update, saved mean/invstd) and, when P == 1, the normalisation too.
// Dynamic shared memory: cache_units 16-byte slots (VEC) or sizeof(P)-byte slots (scalar) per thread.
// EPI 1: y = act(bn(x) + z) (bn_epilogue.cuh); z is read once, in the normalising pass.
template <typename T, int EPI = 0, bool SPAN = false>
__global__ void bn_fwd_train_spatial(const T* x, T* y, const typename io<T>::P* scale, const typename io<T>::P* bias,
                                     typename io<T>::P* running_mean, typename io<T>::P* running_var,
                                     typename io<T>::P* save_mean, typename io<T>::P* save_invstd,
                                     typename io<T>::P* partials, unsigned* counters, typename io<T>::P* stat_tail,
                                     long long N, long long C, long long S, typename io<T>::P eps,
                                     typename io<T>::P factor, int flags, int cache_units,
                                     const T* z, int act, typename io<T>::P alpha) {
    using P = typename io<T>::P;
    extern __shared__ uint4 cache[];
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4* xu = reinterpret_cast<const uint4*>(x + cv.base);
    const uint4* zu = z ? reinterpret_cast<const uint4*>(z + cv.base) : nullptr;
    uint4* yu = reinterpret_cast<uint4*>(y + cv.base);
    long long u0 = 0, u1 = 0;
    [[maybe_unused]] const SpanView sv = span_view<V>(c, C, S);  // SPAN: the channel's units
    split_range(N * (SPAN ? sv.su : cv.su), u0, u1);
    if (!ok) u1 = u0;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    P* cachef = reinterpret_cast<P*>(cache);

    const bool affine = flags & BN_AFFINE;
    auto p = mk4(P(0), P(0), P(0), P(0));
    if (ok && leader<true>()) p = mk4(io<T>::load(x + c * S), affine && !(flags & BN_FIX_GAMMA) ? scale[c] : P(1), affine ? bias[c] : P(0), P(0));
    [[maybe_unused]] decltype(p) pn;  // SPAN: the next channel's
    if constexpr (SPAN) p = span_share(p, pn); else p = share<true>(p);
    const P shift = p.x;  // one sample of the channel: Welford runs on (x - shift) * ws
    const P ws = welford_scale(shift);
    Welford<P> w = welford_empty<P>();
    [[maybe_unused]] P* sp = SPAN ? span_scratch<P>(16LL * cache_units * nthreads, tid, BN_SPAN_SLOT_FWD) : nullptr;
    if constexpr (SPAN) {  // the next channel's spill accumulator and shift in this thread's slot
        span_acc<Welford<P>>(sp) = welford_empty<P>();
        sp[5] = pn.x;
        span_walk<fwd_batch<T, EPI>()>(sv, u0, u1, [&](int, long long off) { return xu[off]; },
                     [&](int k, long long, uint4 u, bool last) {
            if (k < cache_units) cache[k * nthreads + tid] = u;
            P v[V];
            io<T>::unpack(u, v);
            span_welford_unit<V>(w, sp, v, shift, ws, last && sv.own < V, sv.own);
        });
        w = span_merge_prev(w, sp, BN_SPAN_SLOT_FWD);
    } else if (vec) {
        walk_channel<fwd_batch<T, EPI>()>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) { return xu[off]; },
                             [&](int k, long long, uint4 u) {
            if (k < cache_units) cache[k * nthreads + tid] = u;
            P v[V];
            io<T>::unpack(u, v);
            welford_push_unit<V>(w, v, shift, ws);
        });
        walk_edges(cv, c, S, ok, [&](long long e) { welford_push(w, io<T>::load(x + e), shift, ws); });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1, [&](int, long long off) { return io<T>::load(x + off); },
                             [&](int k, long long, P v) {
            if (k < cache_units) cachef[k * nthreads + tid] = v;
            welford_push(w, v, shift, ws);
        });
    }
    Welford<P> t = group_reduce(w);
    const long long M = N * S;

    if (gridDim.y > 1) {
        if (ok && threadIdx.x == 0) store_welford(partials + ((long long)c * gridDim.y + blockIdx.y) * FWD_PART, t);
        if (!last_cta_of_column(counters)) return;
        Welford<P> m = welford_empty<P>();
        if (ok)
            for (int q = threadIdx.x; q < gridDim.y; q += blockDim.x)
                m = welford_merge(m, load_welford(partials + ((long long)c * gridDim.y + q) * FWD_PART));
        t = group_reduce(m);
        if (ok && threadIdx.x == 0)
            finish_statistics(c, t, shift, M, eps, factor, flags, p.y, running_mean, running_var, save_mean, save_invstd,
                              stat_tail);
        return;  // the normalisation is the second launch (bn_normalize_spatial)
    }

    if (ok && threadIdx.x == 0)
        finish_statistics(c, t, shift, M, eps, factor, flags, p.y, running_mean, running_var, save_mean, save_invstd,
                          (P*)nullptr);
    if (flags & BN_PARTIALS) return;
    // ((x - hi) - lo): exact near the mean at any offset, and exactly 0 for a constant channel.
    const P a = (P)(p.y * inv_std(welford_variance(t, ws), eps)), b = p.z;
    const auto m = welford_mean_hi_lo(t, shift, ws, M);
    if constexpr (SPAN) {
        decltype(p) kn;  // the next channel's (a, b, hi, lo) into this thread's slot
        span_share(mk4(a, b, m.x, m.y), kn);
        sp[0] = kn.x; sp[1] = kn.y; sp[2] = kn.z; sp[3] = kn.w;
        span_walk<fwd_batch<T, EPI>()>(sv, u0, u1, [&](int k, long long off) {
            const uint4 u = k < cache_units ? cache[k * nthreads + tid] : xu[off];
            if constexpr (EPI) return make_uint4x2(u, unit_or_0(zu, off)); else return u;
        }, [&](int, long long off, auto q, bool last) {
            P v[V], e[V];
            io<T>::unpack(first(q), v);
            epi_e<T>(q, e);
            span_normalize_unit<EPI, V>(v, e, m.x, m.y, a, b, last && sv.own < V, sv.own, sp, act, alpha);
            yu[off] = io<T>::pack(v);
        });
    } else if (vec) {
        walk_channel<fwd_batch<T, EPI>()>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int k, long long off) {
            const uint4 u = k < cache_units ? cache[k * nthreads + tid] : xu[off];
            if constexpr (EPI) return make_uint4x2(u, unit_or_0(zu, off)); else return u;
        }, [&](int, long long off, auto q) {
            P v[V], e[V];
            io<T>::unpack(first(q), v);
            epi_e<T>(q, e);
#pragma unroll
            for (int i = 0; i < V; ++i) v[i] = epi_out<EPI>(normalize1(v[i], m.x, m.y, a, b), e[i], act, alpha);
            yu[off] = io<T>::pack(v);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            io<T>::store(y + e, epi_out<EPI>(normalize1(io<T>::load(x + e), m.x, m.y, a, b), elem_or_0(z, e), act, alpha));
        });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1, [&](int k, long long off) {
            const P v = k < cache_units ? cachef[k * nthreads + tid] : io<T>::load(x + off);
            if constexpr (EPI) return mk2(v, elem_or_0(z, off)); else return v;
        }, [&](int, long long off, auto q) {
            io<T>::store(y + off, epi_out<EPI>(normalize1(first(q), m.x, m.y, a, b), epi_e(q), act, alpha));
        });
    }
}

// ---------------------------------------------------------------- spatial normalisation
// y = (x - mean) * scale * invstd + bias; invstd = 1/sqrt(stat + eps) for inference (STAT_IS_VAR),
// else stat itself. SHIFTED (second launch of training): x - mean as (x - hi) - lo with the
// workspace's float pair, as the fused path does. y may be x (in place: each thread reads a unit, then writes it).
// EPI 1: y = act(that + z).
template <typename T, int EPI = 0, bool SPAN = false>
__global__ void bn_normalize_spatial(const T* x, T* y, const typename io<T>::P* mean, const typename io<T>::P* stat,
                                     const typename io<T>::P* scale, const typename io<T>::P* bias,
                                     const typename io<T>::P* stat_tail, long long N, long long C, long long S,
                                     typename io<T>::P eps, int flags, const T* z, int act, typename io<T>::P alpha) {
    using P = typename io<T>::P;
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4* xu = reinterpret_cast<const uint4*>(x + cv.base);
    const uint4* zu = z ? reinterpret_cast<const uint4*>(z + cv.base) : nullptr;
    uint4* yu = reinterpret_cast<uint4*>(y + cv.base);
    long long u0 = 0, u1 = 0;
    [[maybe_unused]] const SpanView sv = span_view<V>(c, C, S);  // SPAN: the channel's units
    split_range(N * (SPAN ? sv.su : cv.su), u0, u1);
    if (!ok) u1 = u0;
    auto p = mk4(P(0), P(0), P(0), P(0));
    if (ok && leader<true>()) p = normalize_constants(c, mean, stat, scale, bias, stat_tail, eps, flags);
    [[maybe_unused]] P* sp = SPAN ? span_scratch<P>(0, threadIdx.y + 1, BN_SPAN_SLOT_EW) : nullptr;  // the next group's
    if constexpr (SPAN) {
        if (leader<true>()) {
            P* mine = sp - BN_SPAN_SLOT_EW;
            mine[0] = p.x; mine[1] = p.y; mine[2] = p.z; mine[3] = p.w;
        }
    }
    p = share<true>(p);  // its barrier publishes the SPAN slots too
    const P a = p.x, b = p.y, hi = p.z, lo = p.w;
    if constexpr (SPAN) {
        span_walk<LOADS_IN_FLIGHT>(sv, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return make_uint4x2(xu[off], unit_or_0(zu, off)); else return xu[off];
        }, [&](int, long long off, auto q, bool last) {
            P v[V], e[V];
            io<T>::unpack(first(q), v);
            epi_e<T>(q, e);
            span_normalize_unit<EPI, V>(v, e, hi, lo, a, b, last && sv.own < V, sv.own, sp, act, alpha);
            yu[off] = io<T>::pack(v);
        });
    } else if (vec) {
        walk_channel<LOADS_IN_FLIGHT>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return make_uint4x2(xu[off], unit_or_0(zu, off)); else return xu[off];
        }, [&](int, long long off, auto q) {
            P v[V], e[V];
            io<T>::unpack(first(q), v);
            epi_e<T>(q, e);
#pragma unroll
            for (int i = 0; i < V; ++i) v[i] = epi_out<EPI>(normalize1(v[i], hi, lo, a, b), e[i], act, alpha);
            yu[off] = io<T>::pack(v);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            io<T>::store(y + e, epi_out<EPI>(normalize1(io<T>::load(x + e), hi, lo, a, b), elem_or_0(z, e), act, alpha));
        });
    } else {
        walk_channel<LOADS_IN_FLIGHT>(c, C, cv.su, u0, u1, [&](int, long long off) {
            const P v = io<T>::load(x + off);
            if constexpr (EPI) return mk2(v, elem_or_0(z, off)); else return v;
        }, [&](int, long long off, auto q) {
            io<T>::store(y + off, epi_out<EPI>(normalize1(first(q), hi, lo, a, b), epi_e(q), act, alpha));
        });
    }
}

// ---------------------------------------------------------------- spatial backward
// dbias = sum(dy), dscale = sum(dy * xhat) with xhat = ((x - hi) - lo) * invstd; then
// dx = scale * invstd * (dy - dbias / M - xhat * dscale / M) (P == 1: same launch, x and dy replayed
// from the cache). lo = mean(x - hi) comes out of the same reduction (the third sum). STAT_IS_VAR:
// eval-mode backward over frozen running statistics (lo = 0), where dx = scale * invstd * dy needs
// no reduction and is written in the first pass. Parameter gradients: store_param_grads (alpha/beta).
// Split: the last CTA of a column writes the gradients and the dx constants (workspace tail) that the
// second launch (bn_bwd_dx_spatial) reads.
// EPI 1: the reduction and dx run on g = dy * act'(v) (epi_grad) instead of dy; g is written to dz
// (when given) in the first pass and replaces dy in the replay cache; the non-cached replay and the
// split's second launch recompute it.
template <typename T, int EPI = 0, bool SPAN = false>
__global__ void bn_bwd_spatial(const T* x, const T* dy, T* dx, const typename io<T>::P* scale,
                               const typename io<T>::P* mean, const typename io<T>::P* stat,
                               typename io<T>::P* scale_grad, typename io<T>::P* bias_grad,
                               typename io<T>::P* batch_scale_grad, typename io<T>::P* batch_bias_grad,
                               typename io<T>::P* partials, unsigned* counters, typename io<T>::P* tail, long long N,
                               long long C, long long S, typename io<T>::P eps, typename io<T>::P sg_alpha,
                               typename io<T>::P sg_beta, typename io<T>::P bg_alpha, typename io<T>::P bg_beta,
                               int flags, int cache_units, const typename io<T>::P* bias, const T* y, const T* z,
                               T* dz, int act, typename io<T>::P alpha) {
    using P = typename io<T>::P;
    extern __shared__ uint4 cache[];
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC, frozen = flags & BN_STAT_IS_VAR, affine = flags & BN_AFFINE;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4 *xu = reinterpret_cast<const uint4*>(x + cv.base), *du = reinterpret_cast<const uint4*>(dy + cv.base);
    uint4* dxu = reinterpret_cast<uint4*>(dx + cv.base);
    const bool use_y = y && !act_needs_v(act, true);
    const T* ep = use_y ? y : z;  // the epilogue's second stream (0: none)
    const uint4* eu = ep ? reinterpret_cast<const uint4*>(ep + cv.base) : nullptr;
    uint4* dzu = dz ? reinterpret_cast<uint4*>(dz + cv.base) : nullptr;
    long long u0 = 0, u1 = 0;
    [[maybe_unused]] const SpanView sv = span_view<V>(c, C, S);  // SPAN: the channel's units
    split_range(N * (SPAN ? sv.su : cv.su), u0, u1);
    if (!ok) u1 = u0;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int slots = cache_units * nthreads;  // dy's (g's) cache follows x's
    P* cachef = reinterpret_cast<P*>(cache);

    auto p = mk4(P(0), P(0), P(0), P(0));
    if (ok && leader<true>()) {
        const P st = stat[c], sc = affine && !(flags & BN_FIX_GAMMA) ? scale[c] : P(1);
        const double isd = frozen ? inv_std((double)st, eps) : (double)st;
        p = mk4((P)isd, mean[c], (P)(sc * isd), (EPI && bias) ? bias[c] : P(0));
    }
    [[maybe_unused]] decltype(p) pn;  // SPAN: the next channel's
    if constexpr (SPAN) p = span_share(p, pn); else p = share<true>(p);
    const P invstd = p.x, hi = p.y, a = p.z, bb = p.w;
    BwdSums<P> acc = bwd_empty<P>();
    [[maybe_unused]] P* sp = SPAN ? span_scratch<P>(32LL * cache_units * nthreads, tid, BN_SPAN_SLOT_BWD) : nullptr;
    if constexpr (SPAN) {  // the next channel's spill sums and (hi, a, bias) in this thread's slot
        span_acc<BwdSums<P>>(sp) = bwd_empty<P>();
        sp[6] = pn.y; sp[7] = pn.z; sp[8] = pn.w;
        span_walk<span_bwd_batch<T, EPI>()>(sv, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return uint4x3{xu[off], du[off], unit_or_0(eu, off)};
            else return make_uint4x2(xu[off], du[off]);
        }, [&](int k, long long off, auto q, bool last) {
            P vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
            uint4 ud = q.d;
            const bool spill = last && sv.own < V;
            if constexpr (EPI) {
                P ve[V];
                io<T>::unpack(q.e, ve);
                span_epi_grad_unit<EPI, V>(vd, vx, ve, use_y, hi, a, bb, spill, sv.own, sp + 6, sp + 7, sp + 8, act,
                                           alpha);
                ud = io<T>::pack(vd);
                if (dzu) dzu[off] = ud;
            }
            if (k < cache_units) {
                cache[k * nthreads + tid] = q.x;
                cache[slots + k * nthreads + tid] = ud;
            }
            span_bwd_unit<V>(acc, sp, vx, vd, hi, a, spill, sv.own);
            if (frozen) dxu[off] = io<T>::pack(vd);
        });
        acc = span_merge_prev(acc, sp, BN_SPAN_SLOT_BWD);
    } else if (vec) {
        walk_channel<1>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return uint4x3{xu[off], du[off], unit_or_0(eu, off)};
            else return make_uint4x2(xu[off], du[off]);
        }, [&](int k, long long off, auto q) {
            P vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
            uint4 ud = q.d;
            if constexpr (EPI) {
                P ve[V];
                io<T>::unpack(q.e, ve);
#pragma unroll
                for (int i = 0; i < V; ++i) vd[i] = epi_grad<EPI>(vd[i], vx[i], ve[i], use_y, hi, a, bb, act, alpha);
                ud = io<T>::pack(vd);
                if (dzu) dzu[off] = ud;
            }
            if (k < cache_units) {
                cache[k * nthreads + tid] = q.x;
                cache[slots + k * nthreads + tid] = ud;
            }
#pragma unroll
            for (int i = 0; i < V; ++i) {
                bwd_push(acc, vx[i], vd[i], hi);
                vd[i] *= a;
            }
            if (frozen) dxu[off] = io<T>::pack(vd);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            const P vx = io<T>::load(x + e);
            const P vd = epi_grad<EPI>(io<T>::load(dy + e), vx, elem_or_0(ep, e), use_y, hi, a, bb, act, alpha);
            if (EPI && dz) io<T>::store(dz + e, vd);
            bwd_push(acc, vx, vd, hi);
            if (frozen) io<T>::store(dx + e, a * vd);
        });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return mk3(io<T>::load(x + off), io<T>::load(dy + off), elem_or_0(ep, off));
            else return mk2(io<T>::load(x + off), io<T>::load(dy + off));
        }, [&](int k, long long off, auto q) {
            const P vx = q.x;
            P vd = q.y;
            if constexpr (EPI) {
                vd = epi_grad<EPI>(vd, vx, q.z, use_y, hi, a, bb, act, alpha);
                if (dz) io<T>::store(dz + off, vd);
            }
            if (k < cache_units) {
                cachef[k * nthreads + tid] = vx;
                cachef[slots + k * nthreads + tid] = vd;
            }
            bwd_push(acc, vx, vd, hi);
            if (frozen) io<T>::store(dx + off, a * vd);
        });
    }
    BwdSums<P> t = group_reduce(acc);
    const P Mf = (P)(N * S);
    const auto ab = mk4(sg_alpha, sg_beta, bg_alpha, bg_beta);

    const bool coop = flags & BN_COOP;  // never with BN_SUMS or frozen statistics (the plan's rule)
    if (gridDim.y > 1) {
        if (ok && threadIdx.x == 0) store_bwd(partials + ((long long)c * gridDim.y + blockIdx.y) * BWD_PART, t);
        if (coop) column_barrier(counters);  // every CTA combines (the same order: the same bits) and goes on
        else if (!last_cta_of_column(counters)) return;
        BwdSums<P> m = bwd_empty<P>();
        if (ok)
            for (int q = threadIdx.x; q < gridDim.y; q += blockDim.x)
                m = merge(m, load_bwd(partials + ((long long)c * gridDim.y + q) * BWD_PART));
        t = group_reduce(m);
    }
    if (gridDim.y > 1 && !coop) {
        if (flags & BN_SUMS) {
            if (ok && threadIdx.x == 0) store_sums(c, t, scale_grad, bias_grad, batch_scale_grad);
            return;
        }
        if (ok && threadIdx.x == 0) {
            const auto r = bwd_finish(t, invstd, Mf, frozen);
            store_param_grads(c, flags & BN_FIX_GAMMA ? P(0) : r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
            if (!frozen) store_dx_constants(tail, c, a, r, Mf);
        }
        return;  // dx is the second launch (bn_bwd_dx_spatial) unless frozen (already written)
    }
    if (flags & BN_SUMS) {
        if (ok && threadIdx.x == 0) store_sums(c, t, scale_grad, bias_grad, batch_scale_grad);
        return;
    }
    const auto r = bwd_finish(t, invstd, Mf, frozen);
    if (ok && threadIdx.x == 0 && blockIdx.y == 0) store_param_grads(c, flags & BN_FIX_GAMMA ? P(0) : r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
    if (frozen) return;
    const P dbm = r.y / Mf, k = r.w, lo = r.z;
    const auto replay = [&](int kk, long long off) {  // a 16-byte position's x and g from the cache, or x, dy (e)
        const bool hit = kk < cache_units;
        if constexpr (EPI)
            return hit ? uint4x3{cache[kk * nthreads + tid], cache[slots + kk * nthreads + tid], make_uint4(0u, 0u, 0u, 0u)}
                       : uint4x3{xu[off], du[off], unit_or_0(eu, off)};
        else
            return hit ? make_uint4x2(cache[kk * nthreads + tid], cache[slots + kk * nthreads + tid])
                       : make_uint4x2(xu[off], du[off]);
    };
    if constexpr (SPAN) {
        const P hn = sp[6], an = sp[7];
        decltype(p) dn;  // the next channel's (dbias / M, k, lo): span_dx_unit's (a, dbias / M, k, lo, hi) in the slot
        span_share(mk4(dbm, k, lo, P(0)), dn);
        sp[0] = an; sp[1] = dn.x; sp[2] = dn.y; sp[3] = dn.z; sp[4] = hn;
        span_walk<span_bwd_batch<T, EPI>()>(sv, u0, u1, replay, [&](int kk, long long off, auto q, bool last) {
            P vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
            const bool spill = last && sv.own < V;
            if constexpr (EPI) {
                if (kk >= cache_units) {  // the cache holds g already
                    P ve[V];
                    io<T>::unpack(q.e, ve);
                    span_epi_grad_unit<EPI, V>(vd, vx, ve, use_y, hi, a, bb, spill, sv.own, sp + 4, sp, sp + 8, act,
                                               alpha);
                }
            }
            span_dx_unit<V>(vd, vx, hi, lo, a, dbm, k, spill, sv.own, sp);
            dxu[off] = io<T>::pack(vd);
        });
    } else if (vec) {
        walk_channel<1>(cv.cw, cv.Cw, cv.su, u0, u1, replay, [&](int kk, long long off, auto q) {
            P vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
            if constexpr (EPI) {
                if (kk >= cache_units) {  // the cache holds g already
                    P ve[V];
                    io<T>::unpack(q.e, ve);
#pragma unroll
                    for (int i = 0; i < V; ++i) vd[i] = epi_grad<EPI>(vd[i], vx[i], ve[i], use_y, hi, a, bb, act, alpha);
                }
            }
#pragma unroll
            for (int i = 0; i < V; ++i) vd[i] = dx1(vx[i], vd[i], hi, lo, a, dbm, k);
            dxu[off] = io<T>::pack(vd);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            const P vx = io<T>::load(x + e);
            const P vd = epi_grad<EPI>(io<T>::load(dy + e), vx, elem_or_0(ep, e), use_y, hi, a, bb, act, alpha);
            io<T>::store(dx + e, dx1(vx, vd, hi, lo, a, dbm, k));
        });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1, [&](int kk, long long off) {
            const bool hit = kk < cache_units;
            const P vx = hit ? cachef[kk * nthreads + tid] : io<T>::load(x + off);
            P vd = hit ? cachef[slots + kk * nthreads + tid] : io<T>::load(dy + off);
            if (EPI && !hit) vd = epi_grad<EPI>(vd, vx, elem_or_0(ep, off), use_y, hi, a, bb, act, alpha);
            return mk2(vx, vd);
        }, [&](int, long long off, auto q) { io<T>::store(dx + off, dx1(q.x, q.y, hi, lo, a, dbm, k)); });
    }
}

// Second launch of the split backward: dx from the first launch's constants (workspace tail).
// EPI 1: g recomputed from dy and y (or x, z) as the first launch did; dz is ignored (written there).
template <typename T, int EPI = 0, bool SPAN = false>
__global__ void bn_bwd_dx_spatial(const T* x, const T* dy, T* dx, const typename io<T>::P* mean,
                                  const typename io<T>::P* tail, long long N, long long C, long long S, int flags,
                                  const typename io<T>::P* bias, const T* y, const T* z, T* dz, int act,
                                  typename io<T>::P alpha) {
    using P = typename io<T>::P;
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4 *xu = reinterpret_cast<const uint4*>(x + cv.base), *du = reinterpret_cast<const uint4*>(dy + cv.base);
    uint4* dxu = reinterpret_cast<uint4*>(dx + cv.base);
    const bool use_y = y && !act_needs_v(act, true);
    const T* ep = use_y ? y : z;
    const uint4* eu = ep ? reinterpret_cast<const uint4*>(ep + cv.base) : nullptr;
    long long u0 = 0, u1 = 0;
    [[maybe_unused]] const SpanView sv = span_view<V>(c, C, S);  // SPAN: the channel's units
    split_range(N * (SPAN ? sv.su : cv.su), u0, u1);
    if (!ok) u1 = u0;
    auto p = mk4(P(0), P(0), P(0), P(0));
    P hi = P(0), bb = P(0);
    if (ok && leader<true>()) {
        p = *reinterpret_cast<const typename pv<P>::v4*>(tail + c * BWD_TAIL);
        hi = mean[c];
        if (EPI && bias) bb = bias[c];
    }
    [[maybe_unused]] P* sp = SPAN ? span_scratch<P>(0, threadIdx.y + 1, BN_SPAN_SLOT_EW) : nullptr;  // the next group's
    if constexpr (SPAN) {
        if (leader<true>()) {
            P* mine = sp - BN_SPAN_SLOT_EW;
            mine[0] = p.x; mine[1] = p.y; mine[2] = p.z; mine[3] = p.w; mine[4] = hi; mine[5] = bb;
        }
    }
    p = share<true>(p);  // its barrier publishes the SPAN slots too
    const P a = p.x, dbm = p.y, k = p.z, lo = p.w;
    const auto hb = share<true>(mk4(hi, bb, P(0), P(0)));
    hi = hb.x;
    bb = hb.y;
    if constexpr (SPAN) {
        span_walk<LOADS_IN_FLIGHT>(sv, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return uint4x3{xu[off], du[off], unit_or_0(eu, off)};
            else return make_uint4x2(xu[off], du[off]);
        }, [&](int, long long off, auto q, bool last) {
            P vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
            const bool spill = last && sv.own < V;
            if constexpr (EPI) {
                P ve[V];
                io<T>::unpack(q.e, ve);
                span_epi_grad_unit<EPI, V>(vd, vx, ve, use_y, hi, a, bb, spill, sv.own, sp + 4, sp, sp + 5, act, alpha);
            }
            span_dx_unit<V>(vd, vx, hi, lo, a, dbm, k, spill, sv.own, sp);
            dxu[off] = io<T>::pack(vd);
        });
    } else if (vec) {
        walk_channel<LOADS_IN_FLIGHT>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return uint4x3{xu[off], du[off], unit_or_0(eu, off)};
            else return make_uint4x2(xu[off], du[off]);
        }, [&](int, long long off, auto q) {
            P vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
            if constexpr (EPI) {
                P ve[V];
                io<T>::unpack(q.e, ve);
#pragma unroll
                for (int i = 0; i < V; ++i) vd[i] = epi_grad<EPI>(vd[i], vx[i], ve[i], use_y, hi, a, bb, act, alpha);
            }
#pragma unroll
            for (int i = 0; i < V; ++i) vd[i] = dx1(vx[i], vd[i], hi, lo, a, dbm, k);
            dxu[off] = io<T>::pack(vd);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            const P vx = io<T>::load(x + e);
            const P vd = epi_grad<EPI>(io<T>::load(dy + e), vx, elem_or_0(ep, e), use_y, hi, a, bb, act, alpha);
            io<T>::store(dx + e, dx1(vx, vd, hi, lo, a, dbm, k));
        });
    } else {
        walk_channel<LOADS_IN_FLIGHT>(c, C, cv.su, u0, u1, [&](int, long long off) {
            if constexpr (EPI) return mk3(io<T>::load(x + off), io<T>::load(dy + off), elem_or_0(ep, off));
            else return mk2(io<T>::load(x + off), io<T>::load(dy + off));
        }, [&](int, long long off, auto q) {
            P vd = q.y;
            if constexpr (EPI) vd = epi_grad<EPI>(vd, q.x, q.z, use_y, hi, a, bb, act, alpha);
            io<T>::store(dx + off, dx1(q.x, vd, hi, lo, a, dbm, k));
        });
    }
}
