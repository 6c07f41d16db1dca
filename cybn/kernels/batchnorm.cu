// batchnorm.cu: BatchNorm forward (train, inference) and backward, fp32 or fp16 data, fp32 statistics.
//
// Layout: x is (N, C, S) contiguous. "spatial" mode has one statistic per channel c over its N rows
// of S elements; "per-activation" mode has one statistic per feature f of the (N, F = C * S) matrix.
//
// Spatial kernels: block (G, CPB): a group of G threads (whole warps) per channel, CPB channels per
// CTA; grid (ceil(C / CPB), P): the P CTAs of a grid column split each channel's elements. Units are
// 16-byte vectors (4 floats / 8 halves) when rows are 16-byte aligned (flag VEC); with N == 1 (each
// channel one row) the row's aligned middle is vectorised between a scalar head and tail (ROWVEC);
// otherwise elements.
// Per-activation kernels: block (BX, R): BX consecutive features (coalesced) times R row lanes;
// grid (ceil(F / BX), P): the P CTAs split the batch rows.
// With P == 1 a CTA owns its channels whole and fuses statistics and normalisation (or reduction
// and dx) into one launch, replaying x from a shared-memory cache where it fits. With P > 1 each CTA
// writes its partial to a workspace and the last CTA of a grid column (an atomic counter per
// column, zeroed on the stream by the host before each split call) combines them in a fixed order
// (deterministic); the element-wise second half is then a second launch.
// All offsets are 64-bit; loops are grid-stride so any size fits the grid limits.
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
#include <cuda_fp16.h>

#include "welford.cuh"

#include "bn_abi.h"  // the kernel flags (BN_AFFINE, ...) and the workspace entry sizes, shared with the core

// ---------------------------------------------------------------- element types
template <typename T> struct io;

template <> struct io<float> {
    static constexpr int vec = 4;
    static __device__ __forceinline__ float load(const float* p) { return *p; }
    static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
    static __device__ __forceinline__ void unpack(uint4 u, float* v) {
        v[0] = __uint_as_float(u.x); v[1] = __uint_as_float(u.y);
        v[2] = __uint_as_float(u.z); v[3] = __uint_as_float(u.w);
    }
    static __device__ __forceinline__ uint4 pack(const float* v) {
        return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
    }
};

template <> struct io<__half> {
    static constexpr int vec = 8;
    static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
    static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
    static __device__ __forceinline__ float2 half2_bits(unsigned b) {
        __half2 h = *reinterpret_cast<__half2*>(&b);
        return __half22float2(h);
    }
    static __device__ __forceinline__ unsigned bits_half2(float a, float b) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<unsigned*>(&h);
    }
    static __device__ __forceinline__ void unpack(uint4 u, float* v) {
        float2 a = half2_bits(u.x), b = half2_bits(u.y), c = half2_bits(u.z), d = half2_bits(u.w);
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y; v[4] = c.x; v[5] = c.y; v[6] = d.x; v[7] = d.y;
    }
    static __device__ __forceinline__ uint4 pack(const float* v) {
        return make_uint4(bits_half2(v[0], v[1]), bits_half2(v[2], v[3]), bits_half2(v[4], v[5]), bits_half2(v[6], v[7]));
    }
};

// ---------------------------------------------------------------- reductions
__device__ __forceinline__ Welford merge(Welford x, Welford y) { return welford_merge(x, y); }
__device__ __forceinline__ Welford shfl_down(Welford v, int o) { return welford_shfl_down(v, o); }

// The backward's per-statistic sums: dy, dy * (x - hi), x - hi, each compensated.
struct BwdSums {
    CSum dy, dyx, x;
};
__device__ __forceinline__ BwdSums bwd_empty() { return BwdSums{csum_zero(), csum_zero(), csum_zero()}; }
__device__ __forceinline__ BwdSums merge(BwdSums a, BwdSums b) {
    return BwdSums{csum_merge(a.dy, b.dy), csum_merge(a.dyx, b.dyx), csum_merge(a.x, b.x)};
}
__device__ __forceinline__ CSum shfl_down(CSum v, int o) {
    return CSum{__shfl_down_sync(0xffffffffu, v.s, o), __shfl_down_sync(0xffffffffu, v.c, o)};
}
__device__ __forceinline__ BwdSums shfl_down(BwdSums v, int o) {
    return BwdSums{shfl_down(v.dy, o), shfl_down(v.dyx, o), shfl_down(v.x, o)};
}
// x - hi == d + e exactly (TwoSum): both sums see the exact difference (e matters where x is far from
// hi, e.g. data centred near 0).
__device__ __forceinline__ void bwd_push(BwdSums& s, float vx, float vd, float hi) {
    float e;
    const float d = two_sum(vx, -hi, e);
    csum_add(s.dy, vd);
    csum_add_product(s.dyx, vd, d);
    s.dyx.c = fmaf(vd, e, s.dyx.c);
    csum_add(s.x, d);
    s.x.c = __fadd_rn(s.x.c, e);
}
enum : int { BWD_PART = BN_BWD_PART };  // floats of one BwdSums partial in the workspace
__device__ __forceinline__ void store_bwd(float* p, BwdSums t) {
    p[0] = t.dy.s; p[1] = t.dy.c; p[2] = t.dyx.s; p[3] = t.dyx.c; p[4] = t.x.s; p[5] = t.x.c;
}
__device__ __forceinline__ BwdSums load_bwd(const float* p) {
    return BwdSums{CSum{__ldcg(p), __ldcg(p + 1)}, CSum{__ldcg(p + 2), __ldcg(p + 3)}, CSum{__ldcg(p + 4), __ldcg(p + 5)}};
}

// Shared scratch is kept small because the replay cache gets what is left of 48 KiB (and the software
// GPU counts a module's static shared memory for each of its kernels).

// Total of v over the G threads (whole warps) of each threadIdx.y group, returned to all of them.
// Every thread of the CTA must call it. Fixed combination order: deterministic.
template <typename R>
__device__ R group_reduce(R v) {
    __shared__ R warp_part[32];
    const int G = blockDim.x;
    const int tid = threadIdx.y * G + threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) v = merge(v, shfl_down(v, o));
    if ((tid & 31) == 0) warp_part[tid >> 5] = v;
    __syncthreads();
    const int w0 = threadIdx.y * (G >> 5);
    if (threadIdx.x == 0) {  // the group's leader folds its warps into its first slot
        R t = warp_part[w0];
        for (int w = 1; w < (G >> 5); ++w) t = merge(t, warp_part[w0 + w]);
        warp_part[w0] = t;
    }
    __syncthreads();
    const R t = warp_part[w0];
    __syncthreads();  // warp_part is reused by the next call
    return t;
}

// Total of v over the R = blockDim.y row lanes of each threadIdx.x column (per-activation kernels),
// returned to all of them. Every thread must call it. Tree in a fixed order (lane y merges lane y + s):
// deterministic. The upper half of the active lanes hands its values over, so 128 slots suffice.
template <typename R>
__device__ R column_reduce(R v) {
    __shared__ R part[128];  // per-activation CTAs have at most 256 threads
    const int bx = blockDim.x, y = threadIdx.y;
    for (int s = blockDim.y >> 1; s > 0; s >>= 1) {
        if (y >= s && y < 2 * s) part[(y - s) * bx + threadIdx.x] = v;
        __syncthreads();
        if (y < s) v = merge(v, part[y * bx + threadIdx.x]);
        __syncthreads();
    }
    if (y == 0) part[threadIdx.x] = v;
    __syncthreads();
    const R t = part[threadIdx.x];
    __syncthreads();  // part is reused by the next call
    return t;
}

// Marks this CTA done for its grid column; true in every thread of the CTA that finished last.
// The partials written before it are visible to that CTA (fence before the atomic, fence after).
__device__ __forceinline__ bool last_cta_of_column(unsigned* counters) {
    __shared__ int last;
    __syncthreads();  // every partial of this CTA is written
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        __threadfence();
        const unsigned prev = atomicAdd(&counters[blockIdx.x], 1u);
        last = prev == gridDim.y - 1;
        __threadfence();
    }
    __syncthreads();
    return last;
}

enum : int { FWD_PART = BN_FWD_PART };  // floats of one Welford partial in the workspace
__device__ __forceinline__ Welford load_welford(const float* p) {
    return Welford{__ldcg(p), __ldcg(p + 1), __ldcg(p + 2), CSum{__ldcg(p + 3), __ldcg(p + 4)}};
}
__device__ __forceinline__ void store_welford(float* p, Welford w) {
    p[0] = w.n; p[1] = w.mean; p[2] = w.var; p[3] = w.sum.s; p[4] = w.sum.c;
}

// y = ((x - hi) - lo) * a + b: x - mean in two exact-or-once-rounded steps.
__device__ __forceinline__ float normalize1(float v, float hi, float lo, float a, float b) {
    return fmaf(__fsub_rn(__fsub_rn(v, hi), lo), a, b);
}

// 1 / sqrt(var + eps) in double, once per statistic, so invstd and scale * invstd each round once.
// A variance beyond FLT_MAX is inf: invstd 0, y = bias (honest, never NaN).
__device__ __forceinline__ double inv_std(double var, float eps) { return 1.0 / sqrt(var + (double)eps); }

// The split forward's per-statistic tail for its second launch: (hi, lo, scale * invstd, 0).
enum : int { FWD_TAIL = BN_FWD_TAIL };

// Batch mean/invstd from the combined statistics; saved statistics and running-average update.
// M == 1: the unbiased variance is undefined; the biased one (0) is used, never NaN or inf.
// flags & BN_BIASED_RUNVAR: the biased variance goes into running_var (no M / (M - 1)).
__device__ __forceinline__ void finish_statistics(long long c, Welford t, float shift, long long M, float eps, float factor,
                                                  int flags,
                                                  float sc, float* running_mean, float* running_var,
                                                  float* save_mean, float* save_invstd, float* tail) {
    const float ws = welford_scale(shift);
    const float2 m = welford_mean_hi_lo(t, shift, ws, M);
    const double var = welford_variance(t, ws);
    const double is = inv_std(var, eps);
    save_mean[c] = m.x;
    save_invstd[c] = (float)is;
    const float unbiased = (float)(M > 1 && !(flags & BN_BIASED_RUNVAR) ? var * ((double)M / (double)(M - 1)) : var);
    running_mean[c] = (1.0f - factor) * running_mean[c] + factor * m.x;
    running_var[c] = (1.0f - factor) * running_var[c] + factor * unbiased;
    if (tail)  // for the second launch: it must not re-read x, which y may be
        *reinterpret_cast<float4*>(tail + c * FWD_TAIL) = make_float4(m.x, m.y, (float)(sc * is), 0.0f);
}

// The parameter gradients of one statistic: cuDNN's grad = alpha * this + beta * grad (beta == 0 does
// not read grad, which may be uninitialised), and the plain batch values where batch_* is given.
// ab = (scale alpha, scale beta, bias alpha, bias beta).
__device__ __forceinline__ void store_param_grads(long long i, float ds, float db, float* scale_grad, float* bias_grad,
                                                  float* batch_scale_grad, float* batch_bias_grad, float4 ab) {
    scale_grad[i] = ab.y == 0.0f ? ab.x * ds : fmaf(ab.x, ds, ab.y * scale_grad[i]);
    bias_grad[i] = ab.w == 0.0f ? ab.z * db : fmaf(ab.z, db, ab.w * bias_grad[i]);
    if (batch_scale_grad) batch_scale_grad[i] = ds;
    if (batch_bias_grad) batch_bias_grad[i] = db;
}

// The backward's per-statistic results from its combined sums: (dscale, dbias, lo, k) with
// lo = mean(x - hi) (0 when frozen: the running mean is exact as given) and k = invstd * dscale / M,
// so dx = a * (dy - dbias / M - ((x - hi) - lo) * k).
__device__ __forceinline__ float4 bwd_finish(BwdSums t, float invstd, float Mf, bool frozen) {
    const float A = csum_value(t.dy), Bp = csum_value(t.dyx);
    const float lo = frozen ? 0.0f : csum_value(t.x) / Mf;
    const float ds = fmaf(-lo, A, Bp) * invstd;  // sum(dy * ((x - hi) - lo)) * invstd
    return make_float4(ds, A, lo, invstd * (ds / Mf));
}

__device__ __forceinline__ float dx1(float vx, float vd, float hi, float lo, float a, float dbm, float k) {
    return a * fmaf(-__fsub_rn(__fsub_rn(vx, hi), lo), k, vd - dbm);
}

// x's and dy's 16-byte units of one position, loaded together (backward).
struct uint4x2 { uint4 x, d; };
__device__ __forceinline__ uint4x2 make_uint4x2(uint4 x, uint4 d) { return uint4x2{x, d}; }

// ---------------------------------------------------------------- spatial traversal
// Walks units u0 + lane, u0 + lane + G, ... < u1 of channel c, where unit u is column u % su of
// row u / su, at unit offset (row * C + c) * su + column from the tensor start; without a division
// per step. In batches of B units per thread: load(k, offset) of the batch's units first (independent
// loads, all in flight together), then use(k, offset, value) of each in walk order, so the
// accumulation order is the unbatched walk's (deterministic) and a store in use() never has to wait on
// aliasing analysis (y may be x: each unit is read before it is written, by its owner). The streaming
// kernels (normalize, bwd_dx) take B = LOADS_IN_FLIGHT; the fused reductions B = 1, since four batched
// units there cost 20-50 more registers (one CTA fewer per SM, fp16 backward 131 on sm_90).
enum : int { LOADS_IN_FLIGHT = 4 };
template <int B, typename L, typename U>
__device__ __forceinline__ void walk_channel(long long c, long long C, long long su, long long u0, long long u1,
                                            L load, U use) {
    const int G = blockDim.x;
    long long u = u0 + threadIdx.x;
    if (u >= u1) return;
    long long n = u / su, s = u - n * su;
    const long long row = C * su;
    long long off = (n * C + c) * su + s;
    const long long dn = G / su, ds = G - dn * su;
    const long long step = dn * row + ds, wrap = row - su;
    using R = decltype(load(0, off));
    for (int k = 0; u < u1; k += B) {
        long long o[B];
        R r[B];
        int m = 0;
#pragma unroll
        for (int j = 0; j < B; ++j) {
            o[j] = off;
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
            if (j < m) use(k + j, o[j], r[j]);
    }
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

template <bool SPATIAL>
__device__ __forceinline__ float4 share(float4 v) {
    __shared__ float4 slot[32];
    const int i = SPATIAL ? threadIdx.y : threadIdx.x;
    if (leader<SPATIAL>()) slot[i] = v;
    __syncthreads();
    const float4 r = slot[i];
    __syncthreads();  // slot is reused by the next call
    return r;
}

// The normalisation's per-statistic constants (a, b, hi, lo): y = ((x - hi) - lo) * a + b. SHIFTED: the
// training statistics from the workspace tail (finish_statistics); else the given (running) mean, lo = 0.
__device__ __forceinline__ float4 normalize_constants(long long i, const float* mean, const float* stat,
                                                      const float* scale, const float* bias,
                                                      const float* tail, float eps, int flags) {
    const bool affine = flags & BN_AFFINE;
    const float sc = affine ? scale[i] : 1.0f, b = affine ? bias[i] : 0.0f;
    if (flags & BN_SHIFTED) {
        const float4 t = *reinterpret_cast<const float4*>(tail + i * FWD_TAIL);
        return make_float4(t.z, b, t.x, t.y);
    }
    const float st = stat[i];
    const float a = (flags & BN_STAT_IS_VAR) ? (float)(sc * inv_std(st, eps)) : sc * st;
    return make_float4(a, b, mean[i], 0.0f);
}

// The split backward's dx constants, written by the last CTA of the first launch: (a, dbias / M, k, lo).
enum : int { BWD_TAIL = BN_BWD_TAIL };  // floats per statistic
__device__ __forceinline__ void store_dx_constants(float* tail, long long i, float a, float4 r, float Mf) {
    float* q = tail + i * BWD_TAIL;
    q[0] = a; q[1] = r.y / Mf; q[2] = r.w; q[3] = r.z;
}

// ---------------------------------------------------------------- spatial forward, training
// Statistics (+ running update, saved mean/invstd) and, when P == 1, the normalisation too.
// Dynamic shared memory: cache_units 16-byte slots (VEC) or 4-byte slots (scalar) per thread.
template <typename T>
__global__ void bn_fwd_train_spatial(const T* x, T* y, const float* scale, const float* bias, float* running_mean,
                                     float* running_var, float* save_mean, float* save_invstd, float* partials,
                                     unsigned* counters, float* stat_tail, long long N, long long C, long long S,
                                     float eps, float factor, int flags, int cache_units) {
    extern __shared__ uint4 cache[];
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4* xu = reinterpret_cast<const uint4*>(x + cv.base);
    uint4* yu = reinterpret_cast<uint4*>(y + cv.base);
    long long u0 = 0, u1 = 0;
    split_range(N * cv.su, u0, u1);
    if (!ok) u1 = u0;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    float* cachef = reinterpret_cast<float*>(cache);

    const bool affine = flags & BN_AFFINE;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ok && leader<true>()) p = make_float4(io<T>::load(x + c * S), affine ? scale[c] : 1.0f, affine ? bias[c] : 0.0f, 0.0f);
    p = share<true>(p);
    const float shift = p.x;  // one sample of the channel: Welford runs on (x - shift) * ws
    const float ws = welford_scale(shift);
    Welford w = welford_empty();
    if (vec) {
        walk_channel<1>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) { return xu[off]; },
                             [&](int k, long long, uint4 u) {
            if (k < cache_units) cache[k * nthreads + tid] = u;
            float v[V];
            io<T>::unpack(u, v);
#pragma unroll
            for (int i = 0; i < V; ++i) welford_push(w, v[i], shift, ws);
        });
        walk_edges(cv, c, S, ok, [&](long long e) { welford_push(w, io<T>::load(x + e), shift, ws); });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1, [&](int, long long off) { return io<T>::load(x + off); },
                             [&](int k, long long, float v) {
            if (k < cache_units) cachef[k * nthreads + tid] = v;
            welford_push(w, v, shift, ws);
        });
    }
    Welford t = group_reduce(w);
    const long long M = N * S;

    if (gridDim.y > 1) {
        if (ok && threadIdx.x == 0) store_welford(partials + ((long long)c * gridDim.y + blockIdx.y) * FWD_PART, t);
        if (!last_cta_of_column(counters)) return;
        Welford m = welford_empty();
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
                          nullptr);
    // ((x - hi) - lo): exact near the mean at any offset, and exactly 0 for a constant channel.
    const float a = (float)(p.y * inv_std(welford_variance(t, ws), eps)), b = p.z;
    const float2 m = welford_mean_hi_lo(t, shift, ws, M);
    if (vec) {
        walk_channel<1>(cv.cw, cv.Cw, cv.su, u0, u1,
                             [&](int k, long long off) { return k < cache_units ? cache[k * nthreads + tid] : xu[off]; },
                             [&](int, long long off, uint4 u) {
            float v[V];
            io<T>::unpack(u, v);
#pragma unroll
            for (int i = 0; i < V; ++i) v[i] = normalize1(v[i], m.x, m.y, a, b);
            yu[off] = io<T>::pack(v);
        });
        walk_edges(cv, c, S, ok, [&](long long e) { io<T>::store(y + e, normalize1(io<T>::load(x + e), m.x, m.y, a, b)); });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1,
                             [&](int k, long long off) { return k < cache_units ? cachef[k * nthreads + tid] : io<T>::load(x + off); },
                             [&](int, long long off, float v) { io<T>::store(y + off, normalize1(v, m.x, m.y, a, b)); });
    }
}

// ---------------------------------------------------------------- spatial normalisation
// y = (x - mean) * scale * invstd + bias; invstd = 1/sqrt(stat + eps) for inference (STAT_IS_VAR),
// else stat itself. SHIFTED (second launch of training): x - mean as (x - hi) - lo with the
// workspace's float pair, as the fused path does. y may be x (in place: each thread reads a unit, then writes it).
template <typename T>
__global__ void bn_normalize_spatial(const T* x, T* y, const float* mean, const float* stat, const float* scale,
                                     const float* bias, const float* stat_tail, long long N, long long C, long long S,
                                     float eps, int flags) {
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4* xu = reinterpret_cast<const uint4*>(x + cv.base);
    uint4* yu = reinterpret_cast<uint4*>(y + cv.base);
    long long u0 = 0, u1 = 0;
    split_range(N * cv.su, u0, u1);
    if (!ok) u1 = u0;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ok && leader<true>()) p = normalize_constants(c, mean, stat, scale, bias, stat_tail, eps, flags);
    p = share<true>(p);
    const float a = p.x, b = p.y, hi = p.z, lo = p.w;
    if (vec) {
        walk_channel<LOADS_IN_FLIGHT>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) { return xu[off]; },
                             [&](int, long long off, uint4 u) {
            float v[V];
            io<T>::unpack(u, v);
#pragma unroll
            for (int i = 0; i < V; ++i) v[i] = normalize1(v[i], hi, lo, a, b);
            yu[off] = io<T>::pack(v);
        });
        walk_edges(cv, c, S, ok, [&](long long e) { io<T>::store(y + e, normalize1(io<T>::load(x + e), hi, lo, a, b)); });
    } else {
        walk_channel<LOADS_IN_FLIGHT>(c, C, cv.su, u0, u1, [&](int, long long off) { return io<T>::load(x + off); },
                             [&](int, long long off, float v) { io<T>::store(y + off, normalize1(v, hi, lo, a, b)); });
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
template <typename T>
__global__ void bn_bwd_spatial(const T* x, const T* dy, T* dx, const float* scale, const float* mean, const float* stat,
                               float* scale_grad, float* bias_grad, float* batch_scale_grad, float* batch_bias_grad,
                               float* partials, unsigned* counters, float* tail, long long N, long long C, long long S,
                               float eps, float sg_alpha, float sg_beta, float bg_alpha, float bg_beta, int flags,
                               int cache_units) {
    extern __shared__ uint4 cache[];
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC, frozen = flags & BN_STAT_IS_VAR, affine = flags & BN_AFFINE;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4 *xu = reinterpret_cast<const uint4*>(x + cv.base), *du = reinterpret_cast<const uint4*>(dy + cv.base);
    uint4* dxu = reinterpret_cast<uint4*>(dx + cv.base);
    long long u0 = 0, u1 = 0;
    split_range(N * cv.su, u0, u1);
    if (!ok) u1 = u0;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int slots = cache_units * nthreads;  // dy's cache follows x's
    float* cachef = reinterpret_cast<float*>(cache);

    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ok && leader<true>()) {
        const float st = stat[c], sc = affine ? scale[c] : 1.0f;
        const double isd = frozen ? inv_std(st, eps) : (double)st;
        p = make_float4((float)isd, mean[c], (float)(sc * isd), 0.0f);
    }
    p = share<true>(p);
    const float invstd = p.x, hi = p.y, a = p.z;
    BwdSums acc = bwd_empty();
    if (vec) {
        walk_channel<1>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) { return make_uint4x2(xu[off], du[off]); },
                             [&](int k, long long off, uint4x2 q) {
            const uint4 ux = q.x, ud = q.d;
            if (k < cache_units) {
                cache[k * nthreads + tid] = ux;
                cache[slots + k * nthreads + tid] = ud;
            }
            float vx[V], vd[V];
            io<T>::unpack(ux, vx);
            io<T>::unpack(ud, vd);
#pragma unroll
            for (int i = 0; i < V; ++i) {
                bwd_push(acc, vx[i], vd[i], hi);
                vd[i] *= a;
            }
            if (frozen) dxu[off] = io<T>::pack(vd);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            const float vd = io<T>::load(dy + e);
            bwd_push(acc, io<T>::load(x + e), vd, hi);
            if (frozen) io<T>::store(dx + e, a * vd);
        });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1,
                             [&](int, long long off) { return make_float2(io<T>::load(x + off), io<T>::load(dy + off)); },
                             [&](int k, long long off, float2 q) {
            const float vx = q.x, vd = q.y;
            if (k < cache_units) {
                cachef[k * nthreads + tid] = vx;
                cachef[slots + k * nthreads + tid] = vd;
            }
            bwd_push(acc, vx, vd, hi);
            if (frozen) io<T>::store(dx + off, a * vd);
        });
    }
    BwdSums t = group_reduce(acc);
    const float Mf = (float)(N * S);
    const float4 ab = make_float4(sg_alpha, sg_beta, bg_alpha, bg_beta);

    if (gridDim.y > 1) {
        if (ok && threadIdx.x == 0) store_bwd(partials + ((long long)c * gridDim.y + blockIdx.y) * BWD_PART, t);
        if (!last_cta_of_column(counters)) return;
        BwdSums m = bwd_empty();
        if (ok)
            for (int q = threadIdx.x; q < gridDim.y; q += blockDim.x)
                m = merge(m, load_bwd(partials + ((long long)c * gridDim.y + q) * BWD_PART));
        t = group_reduce(m);
        if (ok && threadIdx.x == 0) {
            const float4 r = bwd_finish(t, invstd, Mf, frozen);
            store_param_grads(c, r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
            if (!frozen) store_dx_constants(tail, c, a, r, Mf);
        }
        return;  // dx is the second launch (bn_bwd_dx_spatial) unless frozen (already written)
    }
    const float4 r = bwd_finish(t, invstd, Mf, frozen);
    if (ok && threadIdx.x == 0) store_param_grads(c, r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
    if (frozen) return;
    const float dbm = r.y / Mf, k = r.w, lo = r.z;
    if (vec) {
        walk_channel<1>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int kk, long long off) {
            const bool hit = kk < cache_units;
            return hit ? make_uint4x2(cache[kk * nthreads + tid], cache[slots + kk * nthreads + tid])
                       : make_uint4x2(xu[off], du[off]);
        }, [&](int, long long off, uint4x2 q) {
            const uint4 ux = q.x, ud = q.d;
            float vx[V], vd[V];
            io<T>::unpack(ux, vx);
            io<T>::unpack(ud, vd);
#pragma unroll
            for (int i = 0; i < V; ++i) vd[i] = dx1(vx[i], vd[i], hi, lo, a, dbm, k);
            dxu[off] = io<T>::pack(vd);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            io<T>::store(dx + e, dx1(io<T>::load(x + e), io<T>::load(dy + e), hi, lo, a, dbm, k));
        });
    } else {
        walk_channel<1>(c, C, cv.su, u0, u1, [&](int kk, long long off) {
            const bool hit = kk < cache_units;
            return make_float2(hit ? cachef[kk * nthreads + tid] : io<T>::load(x + off),
                               hit ? cachef[slots + kk * nthreads + tid] : io<T>::load(dy + off));
        }, [&](int, long long off, float2 q) { io<T>::store(dx + off, dx1(q.x, q.y, hi, lo, a, dbm, k)); });
    }
}

// Second launch of the split backward: dx from the first launch's constants (workspace tail).
template <typename T>
__global__ void bn_bwd_dx_spatial(const T* x, const T* dy, T* dx, const float* mean, const float* tail, long long N,
                                  long long C, long long S, int flags) {
    constexpr int V = io<T>::vec;
    const bool vec = flags & BN_VEC;
    const long long c = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    const bool ok = c < C;
    const ChannelView cv = channel_view(x, c, C, S, flags);
    const uint4 *xu = reinterpret_cast<const uint4*>(x + cv.base), *du = reinterpret_cast<const uint4*>(dy + cv.base);
    uint4* dxu = reinterpret_cast<uint4*>(dx + cv.base);
    long long u0 = 0, u1 = 0;
    split_range(N * cv.su, u0, u1);
    if (!ok) u1 = u0;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float hi = 0.0f;
    if (ok && leader<true>()) {
        p = *reinterpret_cast<const float4*>(tail + c * BWD_TAIL);
        hi = mean[c];
    }
    p = share<true>(p);
    const float a = p.x, dbm = p.y, k = p.z, lo = p.w;
    hi = share<true>(make_float4(hi, 0.0f, 0.0f, 0.0f)).x;
    if (vec) {
        walk_channel<LOADS_IN_FLIGHT>(cv.cw, cv.Cw, cv.su, u0, u1, [&](int, long long off) { return make_uint4x2(xu[off], du[off]); },
                             [&](int, long long off, uint4x2 q) {
            float vx[V], vd[V];
            io<T>::unpack(q.x, vx);
            io<T>::unpack(q.d, vd);
#pragma unroll
            for (int i = 0; i < V; ++i) vd[i] = dx1(vx[i], vd[i], hi, lo, a, dbm, k);
            dxu[off] = io<T>::pack(vd);
        });
        walk_edges(cv, c, S, ok, [&](long long e) {
            io<T>::store(dx + e, dx1(io<T>::load(x + e), io<T>::load(dy + e), hi, lo, a, dbm, k));
        });
    } else {
        walk_channel<LOADS_IN_FLIGHT>(c, C, cv.su, u0, u1,
                             [&](int, long long off) { return make_float2(io<T>::load(x + off), io<T>::load(dy + off)); },
                             [&](int, long long off, float2 q) { io<T>::store(dx + off, dx1(q.x, q.y, hi, lo, a, dbm, k)); });
    }
}

// ---------------------------------------------------------------- per-activation traversal
// Thread (tx, ty) of CTA (bx, p) handles feature f = bx * BX + tx over rows n0 + ty, n0 + ty + R,
// ... < n1, where [n0, n1) is the CTA's share of the N rows. f(k, offset) gets its k-th element.
template <typename F>
__device__ __forceinline__ void walk_feature(long long f, long long F_, long long N, bool ok, F f_) {
    long long n0, n1;
    split_range(N, n0, n1);
    if (!ok) return;
    const int R = blockDim.y;
    int k = 0;
    for (long long n = n0 + threadIdx.y; n < n1; n += R, ++k) f_(k, n * F_ + f);
}

// ---------------------------------------------------------------- per-activation forward, training
template <typename T>
__global__ void bn_fwd_train_pa(const T* x, T* y, const float* scale, const float* bias, float* running_mean,
                                float* running_var, float* save_mean, float* save_invstd, float* partials,
                                unsigned* counters, float* stat_tail, long long N, long long C, long long S, float eps,
                                float factor, int flags, int cache_units) {
    const long long F = C * S;
    extern __shared__ float cachef[];
    const long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool ok = f < F;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const bool affine = flags & BN_AFFINE;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ok && leader<false>()) p = make_float4(io<T>::load(x + f), affine ? scale[f] : 1.0f, affine ? bias[f] : 0.0f, 0.0f);
    p = share<false>(p);
    const float shift = p.x, ws = welford_scale(shift);
    Welford w = welford_empty();
    walk_feature(f, F, N, ok, [&](int k, long long off) {
        const float v = io<T>::load(x + off);
        if (k < cache_units) cachef[k * nthreads + tid] = v;
        welford_push(w, v, shift, ws);
    });
    Welford t = column_reduce(w);

    if (gridDim.y > 1) {
        if (ok && threadIdx.y == 0) store_welford(partials + (f * gridDim.y + blockIdx.y) * FWD_PART, t);
        if (!last_cta_of_column(counters)) return;
        Welford m = welford_empty();
        if (ok)
            for (int q = threadIdx.y; q < gridDim.y; q += blockDim.y)
                m = welford_merge(m, load_welford(partials + (f * gridDim.y + q) * FWD_PART));
        t = column_reduce(m);
        if (ok && threadIdx.y == 0)
            finish_statistics(f, t, shift, N, eps, factor, flags, p.y, running_mean, running_var, save_mean, save_invstd,
                              stat_tail);
        return;  // the normalisation is the second launch (bn_normalize_pa)
    }
    if (ok && threadIdx.y == 0)
        finish_statistics(f, t, shift, N, eps, factor, flags, p.y, running_mean, running_var, save_mean, save_invstd,
                          nullptr);
    if (!ok) return;
    const float a = (float)(p.y * inv_std(welford_variance(t, ws), eps)), b = p.z;
    const float2 m = welford_mean_hi_lo(t, shift, ws, N);
    walk_feature(f, F, N, ok, [&](int k, long long off) {
        const float v = k < cache_units ? cachef[k * nthreads + tid] : io<T>::load(x + off);
        io<T>::store(y + off, normalize1(v, m.x, m.y, a, b));
    });
}

template <typename T>
__global__ void bn_normalize_pa(const T* x, T* y, const float* mean, const float* stat, const float* scale,
                                const float* bias, const float* stat_tail, long long N, long long C, long long S, float eps,
                                int flags) {
    const long long F = C * S;
    const long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool ok = f < F;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ok && leader<false>()) p = normalize_constants(f, mean, stat, scale, bias, stat_tail, eps, flags);
    p = share<false>(p);
    const float a = p.x, b = p.y, hi = p.z, lo = p.w;
    walk_feature(f, F, N, ok, [&](int, long long off) {
        io<T>::store(y + off, normalize1(io<T>::load(x + off), hi, lo, a, b));
    });
}

// ---------------------------------------------------------------- per-activation backward
// As the spatial backward, one statistic per feature column.
template <typename T>
__global__ void bn_bwd_pa(const T* x, const T* dy, T* dx, const float* scale, const float* mean, const float* stat,
                          float* scale_grad, float* bias_grad, float* batch_scale_grad, float* batch_bias_grad,
                          float* partials, unsigned* counters, float* tail, long long N, long long C, long long S,
                          float eps, float sg_alpha, float sg_beta, float bg_alpha, float bg_beta, int flags,
                          int cache_units) {
    const long long F = C * S;
    extern __shared__ float cachef[];
    const bool frozen = flags & BN_STAT_IS_VAR, affine = flags & BN_AFFINE;
    const long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool ok = f < F;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int slots = cache_units * nthreads;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ok && leader<false>()) {
        const float st = stat[f], sc = affine ? scale[f] : 1.0f;
        const double isd = frozen ? inv_std(st, eps) : (double)st;
        p = make_float4((float)isd, mean[f], (float)(sc * isd), 0.0f);
    }
    p = share<false>(p);
    const float invstd = p.x, hi = p.y, a = p.z;
    BwdSums acc = bwd_empty();
    walk_feature(f, F, N, ok, [&](int k, long long off) {
        const float vx = io<T>::load(x + off), vd = io<T>::load(dy + off);
        if (k < cache_units) {
            cachef[k * nthreads + tid] = vx;
            cachef[slots + k * nthreads + tid] = vd;
        }
        bwd_push(acc, vx, vd, hi);
        if (frozen) io<T>::store(dx + off, a * vd);
    });
    BwdSums t = column_reduce(acc);
    const float Mf = (float)N;
    const float4 ab = make_float4(sg_alpha, sg_beta, bg_alpha, bg_beta);

    if (gridDim.y > 1) {
        if (ok && threadIdx.y == 0) store_bwd(partials + (f * gridDim.y + blockIdx.y) * BWD_PART, t);
        if (!last_cta_of_column(counters)) return;
        BwdSums m = bwd_empty();
        if (ok)
            for (int q = threadIdx.y; q < gridDim.y; q += blockDim.y)
                m = merge(m, load_bwd(partials + (f * gridDim.y + q) * BWD_PART));
        t = column_reduce(m);
        if (ok && threadIdx.y == 0) {
            const float4 r = bwd_finish(t, invstd, Mf, frozen);
            store_param_grads(f, r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
            if (!frozen) store_dx_constants(tail, f, a, r, Mf);
        }
        return;  // dx is the second launch (bn_bwd_dx_pa) unless frozen (already written)
    }
    const float4 r = bwd_finish(t, invstd, Mf, frozen);
    if (ok && threadIdx.y == 0) store_param_grads(f, r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
    if (frozen || !ok) return;
    const float dbm = r.y / Mf, k = r.w, lo = r.z;
    walk_feature(f, F, N, ok, [&](int kk, long long off) {
        const bool hit = kk < cache_units;
        const float vx = hit ? cachef[kk * nthreads + tid] : io<T>::load(x + off);
        const float vd = hit ? cachef[slots + kk * nthreads + tid] : io<T>::load(dy + off);
        io<T>::store(dx + off, dx1(vx, vd, hi, lo, a, dbm, k));
    });
}

template <typename T>
__global__ void bn_bwd_dx_pa(const T* x, const T* dy, T* dx, const float* mean, const float* tail, long long N,
                             long long C, long long S, int flags) {
    const long long F = C * S;
    const long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool ok = f < F;
    float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float hi = 0.0f;
    if (ok && leader<false>()) {
        p = *reinterpret_cast<const float4*>(tail + f * BWD_TAIL);
        hi = mean[f];
    }
    p = share<false>(p);
    const float a = p.x, dbm = p.y, k = p.z, lo = p.w;
    hi = share<false>(make_float4(hi, 0.0f, 0.0f, 0.0f)).x;
    walk_feature(f, F, N, ok, [&](int, long long off) {
        io<T>::store(dx + off, dx1(io<T>::load(x + off), io<T>::load(dy + off), hi, lo, a, dbm, k));
    });
}
