// welford.cuh: exact-in-fp32 running statistics (count, mean, M2) and their parallel combination.
//
// Never a one-pass sum and sum of squares: at a mean of 1e6 with unit variance those cancel
// catastrophically in fp32. Callers also subtract a per-channel shift (one sample of the channel)
// before pushing, so the running mean stays small and each update keeps its low-order bits; a
// channel constant at 1e7 then gives mean exactly 0 (+ shift) and M2 exactly 0.
#pragma once

struct Welford {
    float n;     // count (exact up to 2^24 per thread; the final division uses the exact host count)
    float mean;  // mean of the shifted samples
    float m2;    // sum of squared deviations from that mean
};

__device__ __forceinline__ Welford welford_empty() { return Welford{0.0f, 0.0f, 0.0f}; }

__device__ __forceinline__ void welford_push(Welford& w, float v) {
    w.n += 1.0f;
    const float d = v - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (v - w.mean);
}

// Chan, Golub and LeVeque's pairwise formula: exact when either side is empty, and a delta of 0
// (equal means) leaves mean and M2 untouched.
__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    const float n = a.n + b.n;
    const float d = b.mean - a.mean;
    const float fb = b.n / n;
    return Welford{n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

__device__ __forceinline__ Welford welford_shfl_down(Welford w, int offset) {
    return Welford{__shfl_down_sync(0xffffffffu, w.n, offset), __shfl_down_sync(0xffffffffu, w.mean, offset),
                   __shfl_down_sync(0xffffffffu, w.m2, offset)};
}
