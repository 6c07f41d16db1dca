// bn_stats.cuh: per-statistic arithmetic every BatchNorm kernel family shares (layout-independent):
// the kernel flags, the element-wise normalisation and dx formulas, the finished statistics with the
// running-average update, and the parameter gradients (cuDNN alpha/beta).
#pragma once
#include "welford.cuh"
#include "bn_reduce.cuh"

#include "bn_abi.h"  // the kernel flags (BN_AFFINE, ...) and the workspace entry sizes, shared with the core

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
