// batchnorm_nhwc.cu: row-major BatchNorm: x viewed as (M, C) rows, one statistic per column over its M rows.
// Channels last (spatial mode): M = N * spatial rows of C channels. Per-activation mode (either layout):
// the (N, F) rows themselves, M = N and C = F (the host passes N, F, S = 1). Not a transpose: the kernels
// read x where it lies.
//
// Block (BX, BY): BX threads side by side over the channels (coalesced), each owning W channels
// (W = io<T>::vec, one 16-byte unit, when C is a multiple of it and the pointers are 16-byte aligned:
// flag BN_VEC; else W = 1, element loads), times BY row lanes (a power of two). Grid (ceil(C / (W BX)),
// P): the P CTAs of a grid column split the M rows. A thread walks rows n0 + ty, n0 + ty + BY, ... of
// its CTA's share, in batches of B rows whose loads are issued together (several 16-byte loads in flight).
// The in-CTA reduction over the row lanes is column_reduce (a fixed tree); across CTAs the scheme of
// batchnorm.cu: per-CTA partials in the workspace, the last CTA of a column (atomic counter, re-armed by
// that CTA; bn_reduce.cuh) combines them in a fixed order (deterministic) and finishes the
// statistics; the element-wise half is then a second launch (bn_nhwc_normalize / bn_nhwc_bwd_dx).
// With P == 1 the kernel fuses both halves, replaying x (and dy) from a shared-memory cache where it fits.
//
// Numerics are batchnorm.cu's (welford.cuh, bn_stats.cuh): Welford on power-of-two-scaled samples
// shifted by one sample of the channel (row 0), the mean as a pair hi + lo, x - mean formed as
// (x - hi) - lo, the backward's compensated sums recovering lo; all in P = io<T>::P (float for float32,
// float16 and bfloat16 data, double for float64). The kernel arguments are batchnorm.cu's spatial ones
// (N, C, S with M = N * S) followed by the epilogue's (bn_epilogue.cuh), so the host passes one argument
// list for both layouts. Each kernel is `template <typename T, int EPI>`: EPI 1 fuses y = act(bn(x) + z)
// in the forward and g = dy * act'(v) (written to dz when given) in the backward, as batchnorm.cu does;
// z, y and dz are read or written in the passes that already stream x, so the epilogue adds no pass.
#include "bn_abi.h"  // the kernel flags and workspace entry sizes, shared with the core
#include "bn_io.cuh"
#include "bn_reduce.cuh"
#include "bn_stats.cuh"
#include "bn_epilogue.cuh"

enum : int { NHWC_LOADS_IN_FLIGHT = 4, NHWC_MAX_CHANNELS = 256 };  // channels per CTA at most (BX * W)

template <typename T> using PT = typename io<T>::P;  // the statistics / parameter type of data T

// W channels of one row: their raw unit R (what the replay cache keeps), load/store and unpacking to P.
template <typename T, bool VEC> struct lanes;
template <typename T> struct lanes<T, false> {
    using P = PT<T>;
    static constexpr int W = 1;
    using R = P;
    static __device__ __forceinline__ R load(const T* p, long long e) { return io<T>::load(p + e); }
    static __device__ __forceinline__ R zero() { return P(0); }
    static __device__ __forceinline__ void unpack(R r, P* v) { v[0] = r; }
    static __device__ __forceinline__ R pack(const P* v) { return v[0]; }
    static __device__ __forceinline__ void store(T* p, long long e, const P* v) { io<T>::store(p + e, v[0]); }
};
template <typename T> struct lanes<T, true> {
    using P = PT<T>;
    static constexpr int W = io<T>::vec;
    using R = uint4;
    static __device__ __forceinline__ R load(const T* p, long long e) { return *reinterpret_cast<const uint4*>(p + e); }
    static __device__ __forceinline__ R zero() { return make_uint4(0u, 0u, 0u, 0u); }  // 0 in every dtype
    static __device__ __forceinline__ void unpack(R r, P* v) { io<T>::unpack(r, v); }
    static __device__ __forceinline__ R pack(const P* v) { return io<T>::pack(v); }
    static __device__ __forceinline__ void store(T* p, long long e, const P* v) {
        *reinterpret_cast<uint4*>(p + e) = io<T>::pack(v);
    }
};

// A pointer's units of a row, or 0 where the pointer is absent (the epilogue's optional streams).
template <typename L, typename T>
__device__ __forceinline__ typename L::R load_or_0(const T* p, long long e) { return p ? L::load(p, e) : L::zero(); }

// Two or three arrays' units of one row, loaded together: x and z (forward, EPI), x and dy (backward),
// x, dy and the epilogue's second stream e (y or z; backward, EPI).
template <typename R> struct pair2 { R x, d; };
template <typename R> struct rows3 { R x, d, e; };

// The forward's loaded row: x's values and z's (0 when the walk loaded none: EPI 0).
template <typename L, typename R, typename P>
__device__ __forceinline__ void unpack_xz(R q, P* v, P* e) {
    L::unpack(q, v);
#pragma unroll
    for (int j = 0; j < L::W; ++j) e[j] = P(0);
}
template <typename L, typename R, typename P>
__device__ __forceinline__ void unpack_xz(pair2<R> q, P* v, P* e) {
    L::unpack(q.x, v);
    L::unpack(q.d, e);
}

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
template <typename V4>
__device__ __forceinline__ V4 share_channel(int j, int W, V4 v) {
    __shared__ V4 slot[NHWC_MAX_CHANNELS];
    const int i = threadIdx.x * W + j;
    if (threadIdx.y == 0) slot[i] = v;
    __syncthreads();
    const V4 r = slot[i];
    __syncthreads();  // slot is reused by the next call
    return r;
}

// The normalisation constants (a, b, hi, lo) of channel c: y = ((x - hi) - lo) * a + b. SHIFTED: the
// training statistics from the workspace tail (finish_statistics); else the running mean and variance.
template <typename P>
__device__ __forceinline__ typename pv<P>::v4 nhwc_constants(long long c, const P* mean, const P* stat, const P* scale,
                                                             const P* bias, const P* tail, P eps, int flags) {
    const bool affine = flags & BN_AFFINE;
    const P sc = affine && !(flags & BN_FIX_GAMMA) ? scale[c] : P(1), b = affine ? bias[c] : P(0);
    if (flags & BN_SHIFTED) {
        const auto t = *reinterpret_cast<const typename pv<P>::v4*>(tail + c * FWD_TAIL);
        return mk4(t.z, b, t.x, t.y);
    }
    const P st = stat[c];
    const P a = (flags & BN_STAT_IS_VAR) ? (P)(sc * inv_std((double)st, eps)) : sc * st;
    return mk4(a, b, mean[c], P(0));
}

// The split backward's dx constants per channel (a, dbias / M, k, lo), as batchnorm.cu's.
enum : int { NHWC_BWD_TAIL = BN_BWD_TAIL };

// ---------------------------------------------------------------- forward, training
// EPI 1: y = act(bn(x) + z); z is read once, in the normalising pass.
// BN_PARTIALS (SyncBatchNorm): only this process's statistics (finish_statistics: mean hi, lo, biased
// variance), no normalisation in either plan; the host combines them and launches bn_nhwc_normalize.
template <typename T, int EPI, bool VEC>
__device__ __forceinline__ void fwd_train(const T* x, T* y, const PT<T>* scale, const PT<T>* bias, PT<T>* running_mean,
                                          PT<T>* running_var, PT<T>* save_mean, PT<T>* save_invstd, PT<T>* partials,
                                          unsigned* counters, PT<T>* stat_tail, long long M, long long C, PT<T> eps,
                                          PT<T> factor, int flags, int cache_units, const T* z, int act, PT<T> alpha) {
    using P = PT<T>;
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    extern __shared__ uint4 cache_raw[];
    R* cache = reinterpret_cast<R*>(cache_raw);
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const bool affine = flags & BN_AFFINE;
    P shift[W], ws[W], sc[W], b[W];
    P s0[W];
    if (ok && threadIdx.y == 0) L::unpack(L::load(x, c0), s0);  // row 0: one sample of each channel
#pragma unroll
    for (int j = 0; j < W; ++j) {
        auto p = mk4(P(0), P(0), P(0), P(0));
        if (ok && threadIdx.y == 0) p = mk4(s0[j], affine && !(flags & BN_FIX_GAMMA) ? scale[c0 + j] : P(1), affine ? bias[c0 + j] : P(0), P(0));
        p = share_channel(j, W, p);
        shift[j] = p.x; ws[j] = welford_scale(p.x); sc[j] = p.y; b[j] = p.z;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) n1 = n0;
    Welford<P> w[W];
#pragma unroll
    for (int j = 0; j < W; ++j) w[j] = welford_empty<P>();
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int, long long n) { return L::load(x, n * C + c0); }, [&](int k, long long, R r) {
        if (k < cache_units) cache[k * nthreads + tid] = r;
        P v[W];
        L::unpack(r, v);
#pragma unroll
        for (int j = 0; j < W; ++j) welford_push(w[j], v[j], shift[j], ws[j]);
    });
    Welford<P> t[W];
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
            Welford<P> m = welford_empty<P>();
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
    P a[W], hi[W], lo[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        if (ok && threadIdx.y == 0)
            finish_statistics(c0 + j, t[j], shift[j], M, eps, factor, flags, sc[j], running_mean, running_var,
                              save_mean, save_invstd, (P*)nullptr);
        a[j] = (P)(sc[j] * inv_std(welford_variance(t[j], ws[j]), eps));
        const auto m = welford_mean_hi_lo(t[j], shift[j], ws[j], M);
        hi[j] = m.x; lo[j] = m.y;
    }
    if (flags & BN_PARTIALS) return;  // SyncBatchNorm: the partials only (finish_statistics wrote them)
    const auto out = [&](int, long long n, auto q) {
        P v[W], e[W];
        unpack_xz<L>(q, v, e);
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = epi_out<EPI>(normalize1(v[j], hi[j], lo[j], a[j], b[j]), e[j], act, alpha);
        L::store(y, n * C + c0, v);
    };
    // The thread's first cache_units rows (k < cache_units) lie below nc: replayed from the cache, then the
    // rest loaded in batches with no select between the two (each load stays in flight until its batch is used).
    const long long nc = min(n1, n0 + (long long)cache_units * blockDim.y);
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, nc, [&](int k, long long n) {
        if constexpr (EPI) return pair2<R>{cache[k * nthreads + tid], load_or_0<L>(z, n * C + c0)};
        else return cache[k * nthreads + tid];
    }, out);
    walk_rows<NHWC_LOADS_IN_FLIGHT>(nc, n1, [&](int, long long n) {
        if constexpr (EPI) return pair2<R>{L::load(x, n * C + c0), load_or_0<L>(z, n * C + c0)};
        else return L::load(x, n * C + c0);
    }, out);
}

template <typename T, int EPI>
__global__ void bn_nhwc_fwd_train(const T* x, T* y, const PT<T>* scale, const PT<T>* bias, PT<T>* running_mean,
                                  PT<T>* running_var, PT<T>* save_mean, PT<T>* save_invstd, PT<T>* partials,
                                  unsigned* counters, PT<T>* stat_tail, long long N, long long C, long long S,
                                  PT<T> eps, PT<T> factor, int flags, int cache_units, const T* z, int act,
                                  PT<T> alpha) {
    if (flags & BN_VEC)
        fwd_train<T, EPI, true>(x, y, scale, bias, running_mean, running_var, save_mean, save_invstd, partials,
                                counters, stat_tail, N * S, C, eps, factor, flags, cache_units, z, act, alpha);
    else
        fwd_train<T, EPI, false>(x, y, scale, bias, running_mean, running_var, save_mean, save_invstd, partials,
                                 counters, stat_tail, N * S, C, eps, factor, flags, cache_units, z, act, alpha);
}

// ---------------------------------------------------------------- normalisation
// Inference (STAT_IS_VAR: stat is running_var) and the split training's second launch (SHIFTED).
// EPI 1: y = act(that + z).
template <typename T, int EPI, bool VEC>
__device__ __forceinline__ void normalize(const T* x, T* y, const PT<T>* mean, const PT<T>* stat, const PT<T>* scale,
                                          const PT<T>* bias, const PT<T>* stat_tail, long long M, long long C,
                                          PT<T> eps, int flags, const T* z, int act, PT<T> alpha) {
    using P = PT<T>;
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    P a[W], b[W], hi[W], lo[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        auto p = mk4(P(0), P(0), P(0), P(0));
        if (ok && threadIdx.y == 0) p = nhwc_constants(c0 + j, mean, stat, scale, bias, stat_tail, eps, flags);
        p = share_channel(j, W, p);
        a[j] = p.x; b[j] = p.y; hi[j] = p.z; lo[j] = p.w;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) return;
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int, long long n) {
        if constexpr (EPI) return pair2<R>{L::load(x, n * C + c0), load_or_0<L>(z, n * C + c0)};
        else return L::load(x, n * C + c0);
    }, [&](int, long long n, auto q) {
        P v[W], e[W];
        unpack_xz<L>(q, v, e);
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = epi_out<EPI>(normalize1(v[j], hi[j], lo[j], a[j], b[j]), e[j], act, alpha);
        L::store(y, n * C + c0, v);
    });
}

template <typename T, int EPI>
__global__ void bn_nhwc_normalize(const T* x, T* y, const PT<T>* mean, const PT<T>* stat, const PT<T>* scale,
                                  const PT<T>* bias, const PT<T>* stat_tail, long long N, long long C, long long S,
                                  PT<T> eps, int flags, const T* z, int act, PT<T> alpha) {
    if (flags & BN_VEC)
        normalize<T, EPI, true>(x, y, mean, stat, scale, bias, stat_tail, N * S, C, eps, flags, z, act, alpha);
    else
        normalize<T, EPI, false>(x, y, mean, stat, scale, bias, stat_tail, N * S, C, eps, flags, z, act, alpha);
}

// ---------------------------------------------------------------- backward
// As batchnorm.cu's spatial backward: sums of dy, dy (x - hi), x - hi per channel (compensated), then
// dx = a (dy - dbias / M - ((x - hi) - lo) k). STAT_IS_VAR: frozen running statistics, dx = a dy in the
// first pass. Split: the last CTA of a column writes the gradients and the dx constants (tail).
// EPI 1: the sums and dx run on g = dy * act'(v) (epi_grad: act' from y, or from v recomputed from x,
// the statistics, bias and z); g is written to dz (when given) in the first pass and replaces dy in the
// replay cache; the non-cached replay and the split's second launch recompute it.
// BN_SUMS (SyncBatchNorm): only the raw sums (store_sums: sum g, sum g (x - hi), sum (x - hi)), no dx.
template <typename T, int EPI, bool VEC>
__device__ __forceinline__ void bwd(const T* x, const T* dy, T* dx, const PT<T>* scale, const PT<T>* mean,
                                    const PT<T>* stat, PT<T>* scale_grad, PT<T>* bias_grad, PT<T>* batch_scale_grad,
                                    PT<T>* batch_bias_grad, PT<T>* partials, unsigned* counters, PT<T>* tail,
                                    long long M, long long C, PT<T> eps, typename pv<PT<T>>::v4 ab, int flags,
                                    int cache_units, const PT<T>* bias, const T* y, const T* z, T* dz, int act,
                                    PT<T> alpha) {
    using P = PT<T>;
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    extern __shared__ uint4 cache_raw[];
    R* cache = reinterpret_cast<R*>(cache_raw);
    const bool frozen = flags & BN_STAT_IS_VAR, affine = flags & BN_AFFINE;
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int slots = cache_units * nthreads;  // dy's (g's) cache follows x's
    const bool use_y = y && !act_needs_v(act, true);
    const T* ep = use_y ? y : z;  // the epilogue's second stream (0: none)
    P invstd[W], hi[W], a[W], bb[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        auto p = mk4(P(0), P(0), P(0), P(0));
        if (ok && threadIdx.y == 0) {
            const P st = stat[c0 + j], sc = affine && !(flags & BN_FIX_GAMMA) ? scale[c0 + j] : P(1);
            const double isd = frozen ? inv_std((double)st, eps) : (double)st;
            p = mk4((P)isd, mean[c0 + j], (P)(sc * isd), (EPI && bias) ? bias[c0 + j] : P(0));
        }
        p = share_channel(j, W, p);
        invstd[j] = p.x; hi[j] = p.y; a[j] = p.z; bb[j] = p.w;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) n1 = n0;
    BwdSums<P> acc[W];
#pragma unroll
    for (int j = 0; j < W; ++j) acc[j] = bwd_empty<P>();
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int, long long n) {
        const long long e = n * C + c0;
        if constexpr (EPI) return rows3<R>{L::load(x, e), L::load(dy, e), load_or_0<L>(ep, e)};
        else return pair2<R>{L::load(x, e), L::load(dy, e)};
    }, [&](int k, long long n, auto q) {
        P vx[W], vd[W];
        L::unpack(q.x, vx);
        L::unpack(q.d, vd);
        R ud = q.d;
        if constexpr (EPI) {
            P ve[W];
            L::unpack(q.e, ve);
#pragma unroll
            for (int j = 0; j < W; ++j) vd[j] = epi_grad<EPI>(vd[j], vx[j], ve[j], use_y, hi[j], a[j], bb[j], act, alpha);
            ud = L::pack(vd);
            if (dz) L::store(dz, n * C + c0, vd);
        }
        if (k < cache_units) {
            cache[k * nthreads + tid] = q.x;
            cache[slots + k * nthreads + tid] = ud;
        }
#pragma unroll
        for (int j = 0; j < W; ++j) {
            bwd_push(acc[j], vx[j], vd[j], hi[j]);
            vd[j] *= a[j];
        }
        if (frozen) L::store(dx, n * C + c0, vd);
    });
    BwdSums<P> t[W];
#pragma unroll
    for (int j = 0; j < W; ++j) t[j] = column_reduce(acc[j]);
    const P Mf = (P)M;

    if (gridDim.y > 1) {
        if (ok && threadIdx.y == 0)
#pragma unroll
            for (int j = 0; j < W; ++j) store_bwd(partials + ((c0 + j) * gridDim.y + blockIdx.y) * BWD_PART, t[j]);
        if (!last_cta_of_column(counters)) return;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            BwdSums<P> m = bwd_empty<P>();
            if (ok)
                for (int q = threadIdx.y; q < gridDim.y; q += blockDim.y)
                    m = merge(m, load_bwd(partials + ((c0 + j) * gridDim.y + q) * BWD_PART));
            m = column_reduce(m);
            if (ok && threadIdx.y == 0 && (flags & BN_SUMS)) {
                store_sums(c0 + j, m, scale_grad, bias_grad, batch_scale_grad);
            } else if (ok && threadIdx.y == 0) {
                const auto r = bwd_finish(m, invstd[j], Mf, frozen);
                store_param_grads(c0 + j, flags & BN_FIX_GAMMA ? P(0) : r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
                if (!frozen) {
                    P* d = tail + (c0 + j) * NHWC_BWD_TAIL;
                    d[0] = a[j]; d[1] = r.y / Mf; d[2] = r.w; d[3] = r.z;
                }
            }
        }
        return;  // dx is the second launch (bn_nhwc_bwd_dx) unless frozen (already written) or BN_SUMS
    }
    if (flags & BN_SUMS) {  // SyncBatchNorm: the raw sums only; dx is the host's dx launch
        if (ok && threadIdx.y == 0)
#pragma unroll
            for (int j = 0; j < W; ++j) store_sums(c0 + j, t[j], scale_grad, bias_grad, batch_scale_grad);
        return;
    }
    P dbm[W], kk[W], lo[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        const auto r = bwd_finish(t[j], invstd[j], Mf, frozen);
        if (ok && threadIdx.y == 0)
            store_param_grads(c0 + j, flags & BN_FIX_GAMMA ? P(0) : r.x, r.y, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad, ab);
        dbm[j] = r.y / Mf; kk[j] = r.w; lo[j] = r.z;
    }
    if (frozen) return;
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int k, long long n) {
        const long long e = n * C + c0;
        const bool hit = k < cache_units;
        if constexpr (EPI)
            return hit ? rows3<R>{cache[k * nthreads + tid], cache[slots + k * nthreads + tid], L::zero()}
                       : rows3<R>{L::load(x, e), L::load(dy, e), load_or_0<L>(ep, e)};
        else
            return hit ? pair2<R>{cache[k * nthreads + tid], cache[slots + k * nthreads + tid]}
                       : pair2<R>{L::load(x, e), L::load(dy, e)};
    }, [&](int k, long long n, auto q) {
        P vx[W], vd[W];
        L::unpack(q.x, vx);
        L::unpack(q.d, vd);
        if constexpr (EPI) {
            if (k >= cache_units) {  // the cache holds g already
                P ve[W];
                L::unpack(q.e, ve);
#pragma unroll
                for (int j = 0; j < W; ++j)
                    vd[j] = epi_grad<EPI>(vd[j], vx[j], ve[j], use_y, hi[j], a[j], bb[j], act, alpha);
            }
        }
#pragma unroll
        for (int j = 0; j < W; ++j) vd[j] = dx1(vx[j], vd[j], hi[j], lo[j], a[j], dbm[j], kk[j]);
        L::store(dx, n * C + c0, vd);
    });
}

template <typename T, int EPI>
__global__ void bn_nhwc_bwd(const T* x, const T* dy, T* dx, const PT<T>* scale, const PT<T>* mean, const PT<T>* stat,
                            PT<T>* scale_grad, PT<T>* bias_grad, PT<T>* batch_scale_grad, PT<T>* batch_bias_grad,
                            PT<T>* partials, unsigned* counters, PT<T>* tail, long long N, long long C, long long S,
                            PT<T> eps, PT<T> sg_alpha, PT<T> sg_beta, PT<T> bg_alpha, PT<T> bg_beta, int flags,
                            int cache_units, const PT<T>* bias, const T* y, const T* z, T* dz, int act, PT<T> alpha) {
    const auto ab = mk4(sg_alpha, sg_beta, bg_alpha, bg_beta);
    if (flags & BN_VEC)
        bwd<T, EPI, true>(x, dy, dx, scale, mean, stat, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad,
                          partials, counters, tail, N * S, C, eps, ab, flags, cache_units, bias, y, z, dz, act, alpha);
    else
        bwd<T, EPI, false>(x, dy, dx, scale, mean, stat, scale_grad, bias_grad, batch_scale_grad, batch_bias_grad,
                           partials, counters, tail, N * S, C, eps, ab, flags, cache_units, bias, y, z, dz, act, alpha);
}

// Second launch of the split backward: dx from the first launch's per-channel constants.
// EPI 1: g recomputed from dy and y (or x, z) as the first launch did; dz is ignored (written there).
template <typename T, int EPI, bool VEC>
__device__ __forceinline__ void bwd_dx(const T* x, const T* dy, T* dx, const PT<T>* mean, const PT<T>* tail,
                                       long long M, long long C, const PT<T>* bias, const T* y, const T* z, int act,
                                       PT<T> alpha) {
    using P = PT<T>;
    using L = lanes<T, VEC>;
    using R = typename L::R;
    constexpr int W = L::W;
    const long long c0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    const bool ok = c0 < C;
    const bool use_y = y && !act_needs_v(act, true);
    const T* ep = use_y ? y : z;
    P a[W], dbm[W], kk[W], lo[W], hi[W], bb[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
        auto p = mk4(P(0), P(0), P(0), P(0));
        P h = P(0), bj = P(0);
        if (ok && threadIdx.y == 0) {
            p = *reinterpret_cast<const typename pv<P>::v4*>(tail + (c0 + j) * NHWC_BWD_TAIL);
            h = mean[c0 + j];
            if (EPI && bias) bj = bias[c0 + j];
        }
        p = share_channel(j, W, p);
        a[j] = p.x; dbm[j] = p.y; kk[j] = p.z; lo[j] = p.w;
        const auto hb = share_channel(j, W, mk4(h, bj, P(0), P(0)));
        hi[j] = hb.x; bb[j] = hb.y;
    }
    long long n0, n1;
    rows_range(M, n0, n1);
    if (!ok) return;
    walk_rows<NHWC_LOADS_IN_FLIGHT>(n0, n1, [&](int, long long n) {
        const long long e = n * C + c0;
        if constexpr (EPI) return rows3<R>{L::load(x, e), L::load(dy, e), load_or_0<L>(ep, e)};
        else return pair2<R>{L::load(x, e), L::load(dy, e)};
    }, [&](int, long long n, auto q) {
        P vx[W], vd[W];
        L::unpack(q.x, vx);
        L::unpack(q.d, vd);
        if constexpr (EPI) {
            P ve[W];
            L::unpack(q.e, ve);
#pragma unroll
            for (int j = 0; j < W; ++j) vd[j] = epi_grad<EPI>(vd[j], vx[j], ve[j], use_y, hi[j], a[j], bb[j], act, alpha);
        }
#pragma unroll
        for (int j = 0; j < W; ++j) vd[j] = dx1(vx[j], vd[j], hi[j], lo[j], a[j], dbm[j], kk[j]);
        L::store(dx, n * C + c0, vd);
    });
}

template <typename T, int EPI>
__global__ void bn_nhwc_bwd_dx(const T* x, const T* dy, T* dx, const PT<T>* mean, const PT<T>* tail, long long N,
                               long long C, long long S, int flags, const PT<T>* bias, const T* y, const T* z, T* dz,
                               int act, PT<T> alpha) {
    if (flags & BN_VEC)
        bwd_dx<T, EPI, true>(x, dy, dx, mean, tail, N * S, C, bias, y, z, act, alpha);
    else
        bwd_dx<T, EPI, false>(x, dy, dx, mean, tail, N * S, C, bias, y, z, act, alpha);
}
