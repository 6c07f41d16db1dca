// bn_stats.cuh: per-statistic arithmetic every BatchNorm kernel family shares (layout-independent):
// the element-wise normalisation and dx formulas, the finished statistics with the
// running-average update, and the parameter gradients (cuDNN alpha/beta).
#pragma once
#include "bn_abi.h"  // the kernel flags (BN_AFFINE, ...) and the workspace entry sizes, shared with the core
#include "welford.cuh"
#include "bn_reduce.cuh"
#include "bn_io.cuh"

// y = ((x - hi) - lo) * a + b: x - mean in two exact-or-once-rounded steps.
template <typename P>
__device__ __forceinline__ P normalize1(P v, P hi, P lo, P a, P b) {
    return fma_(sub_rn(sub_rn(v, hi), lo), a, b);
}

// 1 / sqrt(var + eps) in double, once per statistic, so invstd and scale * invstd each round once.
// A variance beyond FLT_MAX is inf: invstd 0, y = bias (honest, never NaN).
template <typename P>
__device__ __forceinline__ double inv_std(double var, P eps) { return 1.0 / sqrt(var + (double)eps); }

// The split forward's per-statistic tail for its second launch: (hi, lo, scale * invstd, 0).
enum : int { FWD_TAIL = BN_FWD_TAIL };

// Batch mean/invstd from the combined statistics; saved statistics and running-average update.
// M == 1: the unbiased variance is undefined; the biased one (0) is used, never NaN or inf.
// flags & BN_BIASED_RUNVAR: the biased variance goes into running_var (no M / (M - 1)).
template <typename P>
__device__ __forceinline__ void finish_statistics(long long c, Welford<P> t, P shift, long long M, P eps, P factor,
                                                  int flags, P sc, P* running_mean, P* running_var,
                                                  P* save_mean, P* save_invstd, P* tail) {
    const P ws = welford_scale(shift);
    const auto m = welford_mean_hi_lo(t, shift, ws, M);
    const double var = welford_variance(t, ws);
    if (flags & BN_PARTIALS) {  // SyncBatchNorm: the process's partials; combined and applied by the host
        save_mean[c] = m.x;
        save_invstd[c] = m.y;
        running_mean[c] = (P)var;
        return;
    }
    const double is = inv_std(var, eps);
    save_mean[c] = m.x;
    save_invstd[c] = (P)is;
    const P unbiased = (P)(M > 1 && !(flags & BN_BIASED_RUNVAR) ? var * ((double)M / (double)(M - 1)) : var);
    running_mean[c] = (P(1) - factor) * running_mean[c] + factor * m.x;
    running_var[c] = (P(1) - factor) * running_var[c] + factor * unbiased;
    if (tail)  // for the second launch: it must not re-read x, which y may be
        *reinterpret_cast<typename pv<P>::v4*>(tail + c * FWD_TAIL) = mk4(m.x, m.y, (P)(sc * is), P(0));
}

// The parameter gradients of one statistic: cuDNN's grad = alpha * this + beta * grad (beta == 0 does
// not read grad, which may be uninitialised), and the plain batch values where batch_* is given.
// ab = (scale alpha, scale beta, bias alpha, bias beta).
template <typename P, typename V4>
__device__ __forceinline__ void store_param_grads(long long i, P ds, P db, P* scale_grad, P* bias_grad,
                                                  P* batch_scale_grad, P* batch_bias_grad, V4 ab) {
    scale_grad[i] = ab.y == P(0) ? ab.x * ds : fma_(ab.x, ds, ab.y * scale_grad[i]);
    bias_grad[i] = ab.w == P(0) ? ab.z * db : fma_(ab.z, db, ab.w * bias_grad[i]);
    if (batch_scale_grad) batch_scale_grad[i] = ds;
    if (batch_bias_grad) batch_bias_grad[i] = db;
}

// The backward's per-statistic results from its combined sums: (dscale, dbias, lo, k) with
// lo = mean(x - hi) (0 when frozen: the running mean is exact as given) and k = invstd * dscale / M,
// so dx = a * (dy - dbias / M - ((x - hi) - lo) * k).
template <typename P>
__device__ __forceinline__ typename pv<P>::v4 bwd_finish(BwdSums<P> t, P invstd, P Mf, bool frozen) {
    const P A = csum_value(t.dy), Bp = csum_value(t.dyx);
    const P lo = frozen ? P(0) : csum_value(t.x) / Mf;
    const P ds = fma_(-lo, A, Bp) * invstd;  // sum(dy * ((x - hi) - lo)) * invstd
    return mk4(ds, A, lo, invstd * (ds / Mf));
}

// BN_SUMS (SyncBatchNorm): the raw per-statistic sums, all-reduced over the processes by the host.
template <typename P>
__device__ __forceinline__ void store_sums(long long i, BwdSums<P> t, P* sum_dyx, P* sum_dy, P* sum_x) {
    sum_dy[i] = csum_value(t.dy);
    sum_dyx[i] = csum_value(t.dyx);
    sum_x[i] = csum_value(t.x);
}

template <typename P>
__device__ __forceinline__ P dx1(P vx, P vd, P hi, P lo, P a, P dbm, P k) {
    return a * fma_(-sub_rn(sub_rn(vx, hi), lo), k, vd - dbm);
}
