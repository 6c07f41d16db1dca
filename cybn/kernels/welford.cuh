// welford.cuh: exact-in-fp32 running statistics (count, mean, mean of squared deviations), their parallel
// combination, and the error-free float pieces the kernels build on (TwoSum, compensated sums).
//
// Never a one-pass sum and sum of squares: at a mean of 1e6 with unit variance those cancel
// catastrophically in fp32. welford_push subtracts a per-channel shift (one sample of the channel,
// exactly by TwoSum), so the running mean stays small and each update keeps its low-order bits; a
// channel constant at 1e7 then gives mean exactly 0 (+ shift) and variance exactly 0. Beside Welford's
// own mean (which its variance recurrence needs) the state keeps a compensated sum of the exact shifted
// samples: the mean to float-float accuracy, from which the kernels form hi + lo.
//
// The state carries the variance itself (M2 / n), not M2: M2 = variance * count overflows float32 once
// that product passes FLT_MAX (4096 values of std 3e17) although the variance fits. Every intermediate
// here is at most about a (partial) variance or a squared mean difference weighted by fractions <= 1.
// And the shifted samples are scaled by a power of two, 2^-e for a shift of exponent e > 0 (exact), so
// the state holds variance * 2^-2e: a partial variance (two samples 4 sigma apart) cannot overflow
// either, and the statistic is finished in double, where a variance beyond FLT_MAX is still finite:
// only the float32 results that cannot hold it (running_var) become inf, honestly.
//
// The _rn intrinsics keep NVRTC from contracting a product into a following add (an FMA would break
// the error-free transformations, which rely on each operation rounding once).
#pragma once

// ---------------------------------------------------------------- float-float pieces
// Knuth's TwoSum: s + e == a + b exactly, s = fl(a + b). Branch-free.
__device__ __forceinline__ float two_sum(float a, float b, float& e) {
    const float s = __fadd_rn(a, b);
    const float bp = __fsub_rn(s, a);
    e = __fadd_rn(__fsub_rn(a, __fsub_rn(s, bp)), __fsub_rn(b, bp));
    return s;
}

// A compensated sum: s + c carries the total; every add's rounding error goes to c, so the error
// no longer grows with the number of terms (Kahan-Babuska / Ogita-Rump-Oishi Sum2).
struct CSum {
    float s, c;
};
__device__ __forceinline__ CSum csum_zero() { return CSum{0.0f, 0.0f}; }
__device__ __forceinline__ void csum_add(CSum& a, float v) {
    float e;
    a.s = two_sum(a.s, v, e);
    a.c = __fadd_rn(a.c, e);
}
// a + b * x, the product's rounding error (exact by FMA) compensated too (Dot2).
__device__ __forceinline__ void csum_add_product(CSum& a, float b, float x) {
    const float p = __fmul_rn(b, x);
    const float pe = fmaf(b, x, -p);
    float e;
    a.s = two_sum(a.s, p, e);
    a.c = __fadd_rn(a.c, __fadd_rn(e, pe));
}
__device__ __forceinline__ CSum csum_merge(CSum a, CSum b) {
    float e;
    const float s = two_sum(a.s, b.s, e);
    return CSum{s, __fadd_rn(__fadd_rn(a.c, b.c), e)};
}
__device__ __forceinline__ float csum_value(CSum a) { return __fadd_rn(a.s, a.c); }

struct Welford {
    float n;     // count (exact up to 2^24 per thread; beyond, the combination weights round at 1e-7)
    float mean;  // mean of the shifted samples (Welford's running mean, for the variance recurrence)
    float var;   // mean of squared deviations from that mean (the biased variance)
    CSum sum;    // the sum of the shifted samples, compensated and with each v - shift exact (TwoSum):
                 // the mean to float-float accuracy, from which the kernels form hi + lo
};

__device__ __forceinline__ Welford welford_empty() { return Welford{0.0f, 0.0f, 0.0f, csum_zero()}; }

// The power of two the statistics scale by: 2^-e for a shift of exponent e > 0 (at most 126), else 1
// (never scaled up: a tiny shift beside large samples would overflow).
__device__ __forceinline__ float welford_scale(float shift) {
    int e = ((__float_as_int(shift) >> 23) & 0xff) - 127;
    if (e > 126) e = 126;  // inf/NaN shifts too (their statistics are NaN anyway)
    return e > 0 ? __int_as_float((127 - e) << 23) : 1.0f;
}

// Pushes (v - shift) * scale. var' = var + (d (t - mean') - var) / n' = var (1 - r) + (d r)(t - mean'),
// r = 1 / n'. An inf variance (only reachable unscaled) stays inf instead of inf - inf = NaN.
__device__ __forceinline__ void welford_push(Welford& w, float v, float shift, float scale) {
    float e;
    float t = two_sum(v, -shift, e);  // v - shift == t + e exactly
    t *= scale;
    e *= scale;
    w.n += 1.0f;
    const float r = 1.0f / w.n;
    const float d = t - w.mean;
    const float dr = d * r;
    w.mean += dr;
    w.var = isinf(w.var) ? w.var : fmaf(dr, t - w.mean, fmaf(-w.var, r, w.var));
    csum_add(w.sum, t);
    w.sum.c = __fadd_rn(w.sum.c, e);
}

// Chan, Golub and LeVeque's pairwise formula in the variance form:
// var = fa var_a + fb var_b + (d fa)(d fb), fa = na / n, fb = nb / n, d = mean_b - mean_a.
// Exact when either side is empty; a delta of 0 (equal means) adds nothing. Sums merge error-free.
__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    const float n = a.n + b.n;
    const float d = b.mean - a.mean;
    const float fa = a.n / n, fb = b.n / n;
    return Welford{n, a.mean + d * fb, fmaf(fa, a.var, fmaf(fb, b.var, __fmul_rn(d * fa, d * fb))),
                   csum_merge(a.sum, b.sum)};
}

__device__ __forceinline__ Welford welford_shfl_down(Welford w, int offset) {
    return Welford{__shfl_down_sync(0xffffffffu, w.n, offset), __shfl_down_sync(0xffffffffu, w.mean, offset),
                   __shfl_down_sync(0xffffffffu, w.var, offset),
                   CSum{__shfl_down_sync(0xffffffffu, w.sum.s, offset), __shfl_down_sync(0xffffffffu, w.sum.c, offset)}};
}

// The batch mean shift + sum / (M scale) as the float pair hi + lo (hi the float32 mean). Once per
// statistic, in double: the float-float sum divided by the exact count, then split.
__device__ __forceinline__ float2 welford_mean_hi_lo(const Welford& w, float shift, float scale, long long M) {
    const double m = ((double)w.sum.s + (double)w.sum.c) / ((double)M * scale) + (double)shift;
    const float hi = (float)m;
    return make_float2(hi, (float)(m - (double)hi));
}

// The biased variance, unscaled, in double (finite even beyond FLT_MAX).
__device__ __forceinline__ double welford_variance(const Welford& w, float scale) {
    return (double)w.var / ((double)scale * (double)scale);
}
