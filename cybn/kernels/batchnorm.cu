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
//
// Shared pieces: bn_io.cuh (element types), bn_reduce.cuh (reductions), bn_stats.cuh (flags and
// per-statistic arithmetic), bn_epilogue.cuh (the fused activation / residual epilogue).
#include "bn_abi.h"  // the kernel flags and workspace entry sizes, shared with the core
#include "bn_io.cuh"
#include "bn_reduce.cuh"
#include "bn_stats.cuh"
#include "bn_epilogue.cuh"

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
