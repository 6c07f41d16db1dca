// welford.cuh: exact-in-fp32 (or fp64, P = double for float64 data) running statistics (count, mean, mean of squared deviations), their parallel
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
// Rounded-once arithmetic in P (float or double); the error-free transformations rely on it.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }

// Knuth's TwoSum: s + e == a + b exactly, s = fl(a + b). Branch-free.
template <typename P>
__device__ __forceinline__ P two_sum(P a, P b, P& e) {
    const P s = add_rn(a, b);
    const P bp = sub_rn(s, a);
    e = add_rn(sub_rn(a, sub_rn(s, bp)), sub_rn(b, bp));
    return s;
}

// A compensated sum: s + c carries the total; every add's rounding error goes to c, so the error
// no longer grows with the number of terms (Kahan-Babuska / Ogita-Rump-Oishi Sum2).
template <typename P>
struct CSum {
    P s, c;
};
template <typename P>
__device__ __forceinline__ CSum<P> csum_zero() { return CSum<P>{P(0), P(0)}; }
template <typename P>
__device__ __forceinline__ void csum_add(CSum<P>& a, P v) {
    P e;
    a.s = two_sum(a.s, v, e);
    a.c = add_rn(a.c, e);
}
// a + b * x, the product's rounding error (exact by FMA) compensated too (Dot2).
template <typename P>
__device__ __forceinline__ void csum_add_product(CSum<P>& a, P b, P x) {
    const P p = mul_rn(b, x);
    const P pe = fma_(b, x, -p);
    P e;
    a.s = two_sum(a.s, p, e);
    a.c = add_rn(a.c, add_rn(e, pe));
}
template <typename P>
__device__ __forceinline__ CSum<P> csum_merge(CSum<P> a, CSum<P> b) {
    P e;
    const P s = two_sum(a.s, b.s, e);
    return CSum<P>{s, add_rn(add_rn(a.c, b.c), e)};
}
template <typename P>
__device__ __forceinline__ P csum_value(CSum<P> a) { return add_rn(a.s, a.c); }

template <typename P>
struct Welford {
    P n;     // count (exact up to 2^24 per thread in float; beyond, the combination weights round at 1e-7)
    P mean;  // mean of the shifted samples (Welford's running mean, for the variance recurrence)
    P var;   // mean of squared deviations from that mean (the biased variance)
    CSum<P> sum;  // the sum of the shifted samples, compensated and with each v - shift exact (TwoSum):
                  // the mean to float-float accuracy, from which the kernels form hi + lo
};

template <typename P>
__device__ __forceinline__ Welford<P> welford_empty() { return Welford<P>{P(0), P(0), P(0), csum_zero<P>()}; }

// The power of two the statistics scale by: 2^-e for a shift of exponent e > 0 (at most 126 in float,
// 1022 in double), else 1 (never scaled up: a tiny shift beside large samples would overflow).
__device__ __forceinline__ float welford_scale(float shift) {
    int e = ((__float_as_int(shift) >> 23) & 0xff) - 127;
    if (e > 126) e = 126;  // inf/NaN shifts too (their statistics are NaN anyway)
    return e > 0 ? __int_as_float((127 - e) << 23) : 1.0f;
}
__device__ __forceinline__ double welford_scale(double shift) {
    long long e = ((__double_as_longlong(shift) >> 52) & 0x7ff) - 1023;
    if (e > 1022) e = 1022;
    return e > 0 ? __longlong_as_double((1023 - e) << 52) : 1.0;
}

// Pushes (v - shift) * scale. var' = var + (d (t - mean') - var) / n' = var (1 - r) + (d r)(t - mean'),
// r = 1 / n'. An inf variance (only reachable unscaled) stays inf instead of inf - inf = NaN.
template <typename P>
__device__ __forceinline__ void welford_push(Welford<P>& w, P v, P shift, P scale) {
    P e;
    P t = two_sum(v, -shift, e);  // v - shift == t + e exactly
    t *= scale;
    e *= scale;
    w.n += P(1);
    const P r = P(1) / w.n;
    const P d = t - w.mean;
    const P dr = d * r;
    w.mean += dr;
    w.var = isinf(w.var) ? w.var : fma_(dr, t - w.mean, fma_(-w.var, r, w.var));
    csum_add(w.sum, t);
    w.sum.c = add_rn(w.sum.c, e);
}

// Pushes the V samples of one 16-byte unit (V a power of two) with one division, not V: the unit's
// own (V, mean, variance) in registers first (two passes over them, by the exact reciprocal 1 / V),
// then one Chan merge into the running state. The compensated sum takes each exact shifted sample as
// welford_push does (so the mean, hi + lo, is the per-element walk's bit for bit); only the variance
// recurrence's rounding differs, and the unit's two-pass variance is at least as accurate as V steps.
// Overflow: every term is a squared deviation times a weight <= 1, as in welford_push.
template <int V, typename P>
__device__ __forceinline__ void welford_push_unit(Welford<P>& w, const P* v, P shift, P scale) {
    static_assert(V > 0 && (V & (V - 1)) == 0, "a unit's count must be a power of two (exact reciprocal)");
    constexpr P inv = P(1) / P(V);
    P t[V];
    P m = P(0);
#pragma unroll
    for (int i = 0; i < V; ++i) {
        P e;
        t[i] = two_sum(v[i], -shift, e) * scale;  // v - shift == t + e exactly, then scaled exactly
        csum_add(w.sum, t[i]);
        w.sum.c = add_rn(w.sum.c, e * scale);
        m = add_rn(m, t[i]);
    }
    m = mul_rn(m, inv);
    P q = P(0);
#pragma unroll
    for (int i = 0; i < V; ++i) {
        const P d = sub_rn(t[i], m);
        q = fma_(mul_rn(d, inv), d, q);
    }
    // Merge (V, m, q), fb = V / n' (V r: exact, one rounding in r), fa = n / n':
    // mean' = mean + d fb, var' = var + fb (q - var) + (d fa)(d fb). The old variance's weight 1 - fb is
    // implicit (exact), as in welford_push; an inf variance stays inf instead of inf - inf = NaN.
    const P n = w.n + P(V);
    const P r = P(1) / n;
    const P fa = w.n * r, fb = P(V) * r;
    const P d = m - w.mean;
    w.mean = fma_(d, fb, w.mean);
    w.var = isinf(w.var) ? w.var : fma_(fb, q - w.var, fma_(d * fa, d * fb, w.var));
    w.n = n;
}

// Chan, Golub and LeVeque's pairwise formula in the variance form:
// var = fa var_a + fb var_b + (d fa)(d fb), fa = na / n, fb = nb / n, d = mean_b - mean_a.
// Exact when either side is empty; a delta of 0 (equal means) adds nothing. Sums merge error-free.
template <typename P>
__device__ __forceinline__ Welford<P> welford_merge(Welford<P> a, Welford<P> b) {
    if (b.n == P(0)) return a;
    if (a.n == P(0)) return b;
    const P n = a.n + b.n;
    const P d = b.mean - a.mean;
    const P fa = a.n / n, fb = b.n / n;
    return Welford<P>{n, a.mean + d * fb, fma_(fa, a.var, fma_(fb, b.var, mul_rn(d * fa, d * fb))),
                      csum_merge(a.sum, b.sum)};
}

template <typename P>
__device__ __forceinline__ Welford<P> welford_shfl_down(Welford<P> w, int offset) {
    return Welford<P>{__shfl_down_sync(0xffffffffu, w.n, offset), __shfl_down_sync(0xffffffffu, w.mean, offset),
                      __shfl_down_sync(0xffffffffu, w.var, offset),
                      CSum<P>{__shfl_down_sync(0xffffffffu, w.sum.s, offset),
                              __shfl_down_sync(0xffffffffu, w.sum.c, offset)}};
}

// The batch mean shift + sum / (M scale) as the float pair hi + lo (hi the float32 mean). Once per
// statistic, in double: the float-float sum divided by the exact count, then split.
__device__ __forceinline__ float2 welford_mean_hi_lo(const Welford<float>& w, float shift, float scale, long long M) {
    const double m = ((double)w.sum.s + (double)w.sum.c) / ((double)M * scale) + (double)shift;
    const float hi = (float)m;
    return make_float2(hi, (float)(m - (double)hi));
}
// In double: the quotient's remainder (exact by FMA; M * scale is exact) and the shift's add (TwoSum)
// carried into lo, so hi + lo is the mean to double-double accuracy.
__device__ __forceinline__ double2 welford_mean_hi_lo(const Welford<double>& w, double shift, double scale, long long M) {
    const double Ms = (double)M * scale;
    const double q = w.sum.s / Ms;
    const double r = fma(-q, Ms, w.sum.s);
    double e;
    const double hi = two_sum(shift, q, e);
    return make_double2(hi, e + (r + w.sum.c) / Ms);
}

// The biased variance, unscaled, in double (finite even beyond FLT_MAX).
template <typename P>
__device__ __forceinline__ double welford_variance(const Welford<P>& w, P scale) {
    return (double)w.var / ((double)scale * (double)scale);
}
