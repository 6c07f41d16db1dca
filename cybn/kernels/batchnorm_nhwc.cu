// batchnorm_nhwc.cu: channels-last BatchNorm (spatial mode): x viewed as (M = N * spatial, C) row-major,
// one statistic per channel over its M rows. Not a transpose: the kernels read x where it lies.
//
// Block (BX, BY): BX threads side by side over the channels (coalesced), each owning W channels
// (W = io<T>::vec, one 16-byte unit, when C is a multiple of it and the pointers are 16-byte aligned:
// flag BN_VEC; else W = 1, element loads), times BY row lanes (a power of two). Grid (ceil(C / (W BX)),
// P): the P CTAs of a grid column split the M rows. A thread walks rows n0 + ty, n0 + ty + BY, ... of
// its CTA's share, in batches of B rows whose loads are issued together (several 16-byte loads in flight).
// The in-CTA reduction over the row lanes is column_reduce (a fixed tree); across CTAs the scheme of
// batchnorm.cu: per-CTA partials in the workspace, the last CTA of a column (atomic counter, zeroed by
// the host before each split call) combines them in a fixed order (deterministic) and finishes the
// statistics; the element-wise half is then a second launch (bn_nhwc_normalize / bn_nhwc_bwd_dx).
// With P == 1 the kernel fuses both halves, replaying x (and dy) from a shared-memory cache where it fits.
//
// Numerics are batchnorm.cu's (welford.cuh, bn_stats.cuh): Welford on power-of-two-scaled samples
// shifted by one sample of the channel (row 0), the mean as a float pair hi + lo, x - mean formed as
// (x - hi) - lo, the backward's compensated sums recovering lo. The kernel arguments are batchnorm.cu's
// spatial ones (N, C, S with M = N * S) with the epilogue's appended arguments (bn_epilogue.cuh), so the
// host passes one argument list for both layouts; these kernels take no epilogue yet (the core refuses one).
#include "bn_abi.h"  // the kernel flags and workspace entry sizes, shared with the core
#include "bn_io.cuh"
#include "bn_reduce.cuh"
#include "bn_stats.cuh"
#include "bn_epilogue.cuh"

enum : int { NHWC_LOADS_IN_FLIGHT = 4, NHWC_MAX_CHANNELS = 256 };  // channels per CTA at most (BX * W)

// W channels of one row: their raw unit R (what the replay cache keeps), load/store and unpacking to float.
template <typename T, bool VEC> struct lanes;
template <typename T> struct lanes<T, false> {
    static constexpr int W = 1;
    using R = float;
    static __device__ __forceinline__ R load(const T* p, long long e) { return io<T>::load(p + e); }
    static __device__ __forceinline__ void unpack(R r, float* v) { v[0] = r; }
    static __device__ __forceinline__ void store(T* p, long long e, const float* v) { io<T>::store(p + e, v[0]); }
};
template <typename T> struct lanes<T, true> {
    static constexpr int W = io<T>::vec;
    using R = uint4;
    static __device__ __forceinline__ R load(const T* p, long long e) { return *reinterpret_cast<const uint4*>(p + e); }
    static __device__ __forceinline__ void unpack(R r, float* v) { io<T>::unpack(r, v); }
    static __device__ __forceinline__ void store(T* p, long long e, const float* v) {
        *reinterpret_cast<uint4*>(p + e) = io<T>::pack(v);
    }
};

// x's and dy's units of one row, loaded together (backward).
template <typename R> struct pair2 { R x, d; };

// This CTA's share [n0, n1) of the M rows (contiguous blocks of rows, one per grid.y index).
__device__ __forceinline__ void rows_range(long long M, long long& n0, long long& n1) {
    const long long chunk = (M + gridDim.y - 1) / gridDim.y;
    n0 = min(M, chunk * blockIdx.y);
    n1 = min(M, n0 + chunk);
}

// The rows of [n0, n1) from lane threadIdx.y in steps of BY: load(k, row) of B rows first (independent
// loads, in flight together), then use(k, row, value) in walk order (deterministic; a unit is read
// before its owner writes it, so y may be x). k counts the thread's rows (the replay cache's slot).
template <int B, typename L, typename U>
__device__ __forceinline__ void walk_rows(long long n0, long long n1, L load, U use) {
    const int BY = blockDim.y;
    long long n = n0 + threadIdx.y;
    using R = decltype(load(0, n));
    for (int k = 0; n < n1; k += B) {
        long long rows[B];
        R r[B];
        int m = 0;
#pragma unroll
        for (int j = 0; j < B; ++j) {
            rows[j] = n;
            if (n < n1) {
                r[j] = load(k + j, n);
                m = j + 1;
            }
            n += BY;
        }
#pragma unroll
        for (int j = 0; j < B; ++j)
            if (j < m) use(k + j, rows[j], r[j]);
    }
}

// Per-channel values loaded once per CTA by row lane 0 and handed to the other lanes through shared
// memory (parameter traffic per channel and CTA, not per lane). Every thread must call it.
__device__ __forceinline__ float4 share_channel(int j, int W, float4 v) {
    __shared__ float4 slot[NHWC_MAX_CHANNELS];
    const int i = threadIdx.x * W + j;
    if (threadIdx.y == 0) slot[i] = v;
    __syncthreads();
    const float4 r = slot[i];
    __syncthreads();  // slot is reused by the next call
    return r;
}

// The normalisation constants (a, b, hi, lo) of channel c: y = ((x - hi) - lo) * a + b. SHIFTED: the
// training statistics from the workspace tail (finish_statistics); else the running mean and variance.
__device__ __forceinline__ float4 nhwc_constants(long long c, const float* mean, const float* stat, const float* scale,
                                                 const float* bias, const float* tail, float eps, int flags) {
    const bool affine = flags & BN_AFFINE;
    const float sc = affine && !(flags & BN_FIX_GAMMA) ? scale[c] : 1.0f, b = affine ? bias[c] : 0.0f;
    if (flags & BN_SHIFTED) {
        const float4 t = *reinterpret_cast<const float4*>(tail + c * FWD_TAIL);
        return make_float4(t.z, b, t.x, t.y);
    }
    const float st = stat[c];
    const float a = (flags & BN_STAT_IS_VAR) ? (float)(sc * inv_std(st, eps)) : sc * st;
    return make_float4(a, b, mean[c], 0.0f);
}

// The split backward's dx constants per channel (a, dbias / M, k, lo), as batchnorm.cu's.
enum : int { NHWC_BWD_TAIL = BN_BWD_TAIL };

// ---------------------------------------------------------------- forward, training
template <typename T, bool VEC>
__device__ __forceinline__ void fwd_train(const T* x, T* y, const float* scale, const float* bias, float* running_mean,
                                          float* running_var, float* save_mean, float* save_invstd, float* partials,
                                          unsigned* counters, float* stat_tail, long long M, long long C, float eps,
                                          float factor, int flags, int cache_units) {
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    extern __shared__ uint4 cache_raw[];
    R* cache = reinterpret_cast<R*>(cache_raw);
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const bool affine = flags & BN_AFFINE;
    float shift[W], ws[W], sc[W], b[W];
    float s0[W];
    if (ok && threadIdx.y == 0) L::unpack(L::load(x, c0), s0);  // row 0: one sample of each channel
#pragma unroll
    for (int j = 0; j < W; ++j) {
        float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (ok && threadIdx.y == 0) p = make_float4(s0[j], affine && !(flags & BN_FIX_GAMMA) ? scale[c0 + j] : 1.0f, affine ? bias[c0 + j] : 0.0f, 0.0f);
        p = share_channel(j, W, p);
        shift[j] = p.x; ws[j] = welford_scale(p.x); sc[j] = p.y; b[j] = p.z;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) n1 = n0;
    Welford<float> w[W];
#pragma unroll
    for (int j = 0; j < W; ++j) w[j] = welford_empty<float>();
    walk_rows<1>(n0, n1, [&](int, long long n) { return L::load(x, n * C + c0); }, [&](int k, long long, R r) {
        if (k < cache_units) cache[k * nthreads + tid] = r;
        float v[W];
        L::unpack(r, v);
#pragma unroll
        for (int j = 0; j < W; ++j) welford_push(w[j], v[j], shift[j], ws[j]);
    });
    Welford<float> t[W];
#pragma unroll
    for (int j = 0; j < W; ++j) t[j] = column_reduce(w[j]);

    if (gridDim.y > 1) {
        if (ok && threadIdx.y == 0)
#pragma unroll
            for (int j = 0; j < W; ++j)
                store_welford(partials + ((c0 + j) * gridDim.y + blockIdx.y) * FWD_PART, t[j]);
        if (!last_cta_of_column(counters)) return;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            Welford<float> m = welford_empty<float>();
            if (ok)
                for (int q = threadIdx.y; q < gridDim.y; q += blockDim.y)
                    m = welford_merge(m, load_welford(partials + ((c0 + j) * gridDim.y + q) * FWD_PART));
            m = column_reduce(m);
            if (ok && threadIdx.y == 0)
                finish_statistics(c0 + j, m, shift[j], M, eps, factor, flags, sc[j], running_mean, running_var,
                                  save_mean, save_invstd, stat_tail);
        }
        return;  // the normalisation is the second launch (bn_nhwc_normalize)
    }
    float a[W], hi[W], lo[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        if (ok && threadIdx.y == 0)
            finish_statistics(c0 + j, t[j], shift[j], M, eps, factor, flags, sc[j], running_mean, running_var,
                              save_mean, save_invstd, (float*)nullptr);
        a[j] = (float)(sc[j] * inv_std(welford_variance(t[j], ws[j]), eps));
        const float2 m = welford_mean_hi_lo(t[j], shift[j], ws[j], M);
        hi[j] = m.x; lo[j] = m.y;
    }
    walk_rows<1>(n0, n1, [&](int k, long long n) { return k < cache_units ? cache[k * nthreads + tid] : L::load(x, n * C + c0); },
                 [&](int, long long n, R r) {
        float v[W];
        L::unpack(r, v);
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = normalize1(v[j], hi[j], lo[j], a[j], b[j]);
        L::store(y, n * C + c0, v);
    });
}

template <typename T>
__global__ void bn_nhwc_fwd_train(const T* x, T* y, const float* scale, const float* bias, float* running_mean,
                                  float* running_var, float* save_mean, float* save_invstd, float* partials,
                                  unsigned* counters, float* stat_tail, long long N, long long C, long long S,
                                  float eps, float factor, int flags, int cache_units, const T* z, int act,
                                  float alpha) {
    if (flags & BN_VEC)
        fwd_train<T, true>(x, y, scale, bias, running_mean, running_var, save_mean, save_invstd, partials, counters,
                           stat_tail, N * S, C, eps, factor, flags, cache_units);
    else
        fwd_train<T, false>(x, y, scale, bias, running_mean, running_var, save_mean, save_invstd, partials, counters,
                            stat_tail, N * S, C, eps, factor, flags, cache_units);
}

// ---------------------------------------------------------------- normalisation
// Inference (STAT_IS_VAR: stat is running_var) and the split training's second launch (SHIFTED).
template <typename T, bool VEC>
__device__ __forceinline__ void normalize(const T* x, T* y, const float* mean, const float* stat, const float* scale,
                                          const float* bias, const float* stat_tail, long long M, long long C, float eps,
                                          int flags) {
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    float a[W], b[W], hi[W], lo[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (ok && threadIdx.y == 0) p = nhwc_constants(c0 + j, mean, stat, scale, bias, stat_tail, eps, flags);
        p = share_channel(j, W, p);
        a[j] = p.x; b[j] = p.y; hi[j] = p.z; lo[j] = p.w;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) return;
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int, long long n) { return L::load(x, n * C + c0); },
                                    [&](int, long long n, R r) {
        float v[W];
        L::unpack(r, v);
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = normalize1(v[j], hi[j], lo[j], a[j], b[j]);
        L::store(y, n * C + c0, v);
    });
}

template <typename T>
__global__ void bn_nhwc_normalize(const T* x, T* y, const float* mean, const float* stat, const float* scale,
                                  const float* bias, const float* stat_tail, long long N, long long C, long long S,
                                  float eps, int flags, const T* z, int act, float alpha) {
    if (flags & BN_VEC)
        normalize<T, true>(x, y, mean, stat, scale, bias, stat_tail, N * S, C, eps, flags);
    else
        normalize<T, false>(x, y, mean, stat, scale, bias, stat_tail, N * S, C, eps, flags);
}

// ---------------------------------------------------------------- backward
// As batchnorm.cu's spatial backward: sums of dy, dy (x - hi), x - hi per channel (compensated), then
// dx = a (dy - dbias / M - ((x - hi) - lo) k). STAT_IS_VAR: frozen running statistics, dx = a dy in the
// first pass. Split: the last CTA of a column writes the gradients and the dx constants (tail).
template <typename T, bool VEC>
__device__ __forceinline__ void bwd(const T* x, const T* dy, T* dx, const float* scale, const float* mean,
                                    const float* stat, float* scale_grad, float* bias_grad, float* batch_scale_grad,
                                    float* batch_bias_grad, float* partials, unsigned* counters, float* tail,
                                    long long M, long long C, float eps, float4 ab, int flags, int cache_units) {
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    extern __shared__ uint4 cache_raw[];
    R* cache = reinterpret_cast<R*>(cache_raw);
    const bool frozen = flags & BN_STAT_IS_VAR, affine = flags & BN_AFFINE;
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int slots = cache_units * nthreads;  // dy's cache follows x's
    float invstd[W], hi[W], a[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (ok && threadIdx.y == 0) {
            const float st = stat[c0 + j], sc = affine && !(flags & BN_FIX_GAMMA) ? scale[c0 + j] : 1.0f;
            const double isd = frozen ? inv_std(st, eps) : (double)st;
            p = make_float4((float)isd, mean[c0 + j], (float)(sc * isd), 0.0f);
        }
        p = share_channel(j, W, p);
        invstd[j] = p.x; hi[j] = p.y; a[j] = p.z;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) n1 = n0;
    BwdSums<float> acc[W];
#pragma unroll
    for (int j = 0; j < W; ++j) acc[j] = bwd_empty<float>();
    walk_rows<1>(n0, n1, [&](int, long long n) { return pair2<R>{L::load(x, n * C + c0), L::load(dy, n * C + c0)}; },
                 [&](int k, long long n, pair2<R> q) {
        if (k < cache_units) {
            cache[k * nthreads + tid] = q.x;
            cache[slots + k * nthreads + tid] = q.d;
        }
        float vx[W], vd[W];
        L::unpack(q.x, vx);
        L::unpack(q.d, vd);
#pragma unroll
        for (int j = 0; j < W; ++j) {
            bwd_push(acc[j], vx[j], vd[j], hi[j]);
            vd[j] *= a[j];
        }
        if (frozen) L::store(dx, n * C + c0, vd);
    });
    BwdSums<float> t[W];
#pragma unroll
    for (int j = 0; j < W; ++j) t[j] = column_reduce(acc[j]);
    const float Mf = (float)M;

    if (gridDim.y > 1) {
        if (ok && threadIdx.y == 0)
#pragma unroll
            for (int j = 0; j < W; ++j) store_bwd(partials + ((c0 + j) * gridDim.y + blockIdx.y) * BWD_PART, t[j]);
        if (!last_cta_of_column(counters)) return;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            BwdSums<float> m = bwd_empty<float>();
            if (ok)
                for (int q = threadIdx.y; q < gridDim.y; q += blockDim.y)
                    m = merge(m, load_bwd(partials + ((c0 + j) * gridDim.y + q) * BWD_PART));
            m = column_reduce(m);
            if (ok && threadIdx.y == 0) {
                const float4 r = bwd_finish(m, invstd[j], Mf, frozen);
                store_param_grads(c0 + j, flags & BN_FIX_GAMMA ? 0.0f : r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
                if (!frozen) {
                    float* d = tail + (c0 + j) * NHWC_BWD_TAIL;
                    d[0] = a[j]; d[1] = r.y / Mf; d[2] = r.w; d[3] = r.z;
                }
            }
        }
        return;  // dx is the second launch (bn_nhwc_bwd_dx) unless frozen (already written)
    }
    float dbm[W], kk[W], lo[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        const float4 r = bwd_finish(t[j], invstd[j], Mf, frozen);
        if (ok && threadIdx.y == 0)
            store_param_grads(c0 + j, flags & BN_FIX_GAMMA ? 0.0f : r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
        dbm[j] = r.y / Mf; kk[j] = r.w; lo[j] = r.z;
    }
    if (frozen) return;
    walk_rows<1>(n0, n1, [&](int k, long long n) {
        return k < cache_units ? pair2<R>{cache[k * nthreads + tid], cache[slots + k * nthreads + tid]}
                               : pair2<R>{L::load(x, n * C + c0), L::load(dy, n * C + c0)};
    }, [&](int, long long n, pair2<R> q) {
        float vx[W], vd[W];
        L::unpack(q.x, vx);
        L::unpack(q.d, vd);
#pragma unroll
        for (int j = 0; j < W; ++j) vd[j] = dx1(vx[j], vd[j], hi[j], lo[j], a[j], dbm[j], kk[j]);
        L::store(dx, n * C + c0, vd);
    });
}

template <typename T>
__global__ void bn_nhwc_bwd(const T* x, const T* dy, T* dx, const float* scale, const float* mean, const float* stat,
                            float* scale_grad, float* bias_grad, float* batch_scale_grad, float* batch_bias_grad,
                            float* partials, unsigned* counters, float* tail, long long N, long long C, long long S,
                            float eps, float sg_alpha, float sg_beta, float bg_alpha, float bg_beta, int flags,
                            int cache_units, const float* bias, const T* y, const T* z, T* dz, int act, float alpha) {
    const float4 ab = make_float4(sg_alpha, sg_beta, bg_alpha, bg_beta);
    if (flags & BN_VEC)
        bwd<T, true>(x, dy, dx, scale, mean, stat, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, partials,
                     counters, tail, N * S, C, eps, ab, flags, cache_units);
    else
        bwd<T, false>(x, dy, dx, scale, mean, stat, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, partials,
                      counters, tail, N * S, C, eps, ab, flags, cache_units);
}

// Second launch of the split backward: dx from the first launch's per-channel constants.
template <typename T, bool VEC>
__device__ __forceinline__ void bwd_dx(const T* x, const T* dy, T* dx, const float* mean, const float* tail, long long M,
                                       long long C) {
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    float a[W], dbm[W], kk[W], lo[W], hi[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        float4 p = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float h = 0.0f;
        if (ok && threadIdx.y == 0) {
            p = *reinterpret_cast<const float4*>(tail + (c0 + j) * NHWC_BWD_TAIL);
            h = mean[c0 + j];
        }
        p = share_channel(j, W, p);
        a[j] = p.x; dbm[j] = p.y; kk[j] = p.z; lo[j] = p.w;
        hi[j] = share_channel(j, W, make_float4(h, 0.0f, 0.0f, 0.0f)).x;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) return;
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int, long long n) {
        return pair2<R>{L::load(x, n * C + c0), L::load(dy, n * C + c0)};
    }, [&](int, long long n, pair2<R> q) {
        float vx[W], vd[W];
        L::unpack(q.x, vx);
        L::unpack(q.d, vd);
#pragma unroll
        for (int j = 0; j < W; ++j) vd[j] = dx1(vx[j], vd[j], hi[j], lo[j], a[j], dbm[j], kk[j]);
        L::store(dx, n * C + c0, vd);
    });
}

template <typename T>
__global__ void bn_nhwc_bwd_dx(const T* x, const T* dy, T* dx, const float* mean, const float* tail, long long N,
                               long long C, long long S, int flags, const float* bias, const T* y, const T* z, T* dz,
                               int act, float alpha) {
    if (flags & BN_VEC)
        bwd_dx<T, true>(x, dy, dx, mean, tail, N * S, C);
    else
        bwd_dx<T, false>(x, dy, dx, mean, tail, N * S, C);
}
