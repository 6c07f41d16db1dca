// bn_reduce.cuh: the BatchNorm kernels' reductions, shared by every layout's kernels: the backward's
// compensated sums (BwdSums), merge/shfl_down for each reduced type, the in-CTA reductions over a
// threadIdx.y group (group_reduce) or a threadIdx.x column (column_reduce), the last-CTA election of a
// split grid column (which re-arms its counter), and the workspace partials' layout (FWD_PART, BWD_PART).
#pragma once
#include "bn_abi.h"
#include "welford.cuh"

template <typename P>
__device__ __forceinline__ Welford<P> merge(Welford<P> x, Welford<P> y) { return welford_merge(x, y); }
template <typename P>
__device__ __forceinline__ Welford<P> shfl_down(Welford<P> v, int o) { return welford_shfl_down(v, o); }

// The backward's per-statistic sums: dy, dy * (x - hi), x - hi, each compensated.
template <typename P>
struct BwdSums {
    CSum<P> dy, dyx, x;
};
template <typename P>
__device__ __forceinline__ BwdSums<P> bwd_empty() { return BwdSums<P>{csum_zero<P>(), csum_zero<P>(), csum_zero<P>()}; }
template <typename P>
__device__ __forceinline__ BwdSums<P> merge(BwdSums<P> a, BwdSums<P> b) {
    return BwdSums<P>{csum_merge(a.dy, b.dy), csum_merge(a.dyx, b.dyx), csum_merge(a.x, b.x)};
}
template <typename P>
__device__ __forceinline__ CSum<P> shfl_down(CSum<P> v, int o) {
    return CSum<P>{__shfl_down_sync(0xffffffffu, v.s, o), __shfl_down_sync(0xffffffffu, v.c, o)};
}
template <typename P>
__device__ __forceinline__ BwdSums<P> shfl_down(BwdSums<P> v, int o) {
    return BwdSums<P>{shfl_down(v.dy, o), shfl_down(v.dyx, o), shfl_down(v.x, o)};
}
// x - hi == d + e exactly (TwoSum): both sums see the exact difference (e matters where x is far from
// hi, e.g. data centred near 0).
template <typename P>
__device__ __forceinline__ void bwd_push(BwdSums<P>& s, P vx, P vd, P hi) {
    P e;
    const P d = two_sum(vx, -hi, e);
    csum_add(s.dy, vd);
    csum_add_product(s.dyx, vd, d);
    s.dyx.c = fma_(vd, e, s.dyx.c);
    csum_add(s.x, d);
    s.x.c = add_rn(s.x.c, e);
}
enum : int { BWD_PART = BN_BWD_PART };  // P values of one BwdSums partial in the workspace
template <typename P>
__device__ __forceinline__ void store_bwd(P* p, BwdSums<P> t) {
    p[0] = t.dy.s; p[1] = t.dy.c; p[2] = t.dyx.s; p[3] = t.dyx.c; p[4] = t.x.s; p[5] = t.x.c;
}
template <typename P>
__device__ __forceinline__ BwdSums<P> load_bwd(const P* p) {
    return BwdSums<P>{CSum<P>{__ldcg(p), __ldcg(p + 1)}, CSum<P>{__ldcg(p + 2), __ldcg(p + 3)},
                      CSum<P>{__ldcg(p + 4), __ldcg(p + 5)}};
}

// Shared scratch is kept small because the replay cache gets what is left of the shared memory (and the software
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
// atomicInc wraps at gridDim.y - 1: the last CTA's increment stores 0, so a column's counter is back
// at 0 when the grid ends and the next split call on the workspace needs no memset (the host's
// armed-extent rule, cybn/batchnorm/scratch.pxi, decides when it can trust that).
__device__ __forceinline__ bool last_cta_of_column(unsigned* counters) {
    __shared__ int last;
    __syncthreads();  // every partial of this CTA is written
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        __threadfence();
        const unsigned prev = atomicInc(&counters[blockIdx.x], gridDim.y - 1u);
        last = prev == gridDim.y - 1;
        __threadfence();
    }
    __syncthreads();
    return last;
}

enum : int { FWD_PART = BN_FWD_PART };  // P values of one Welford partial in the workspace
template <typename P>
__device__ __forceinline__ Welford<P> load_welford(const P* p) {
    return Welford<P>{__ldcg(p), __ldcg(p + 1), __ldcg(p + 2), CSum<P>{__ldcg(p + 3), __ldcg(p + 4)}};
}
template <typename P>
__device__ __forceinline__ void store_welford(P* p, Welford<P> w) {
    p[0] = w.n; p[1] = w.mean; p[2] = w.var; p[3] = w.sum.s; p[4] = w.sum.c;
}

// The cooperative plan's meeting point for the CTAs of a grid column (BN_COOP; all CTAs co-resident,
// so spinning is safe): every CTA's partials written before it are visible to every CTA after it.
// Each CTA adds 1 on arrival and waits for gridDim.y arrivals, then adds 1 on leaving; atomicInc wraps
// at 2 * gridDim.y - 1, so the last CTA to leave stores 0: the counter is re-armed as
// last_cta_of_column leaves it. No CTA can still be waiting then, since each leaves only after it saw
// all arrivals.
__device__ __forceinline__ void column_barrier(unsigned* counters) {
    __syncthreads();  // every partial of this CTA is written
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        unsigned* ctr = &counters[blockIdx.x];
        const unsigned wrap = 2u * gridDim.y - 1u;
        __threadfence();
        atomicInc(ctr, wrap);
        while (*(volatile unsigned*)ctr < gridDim.y) __nanosleep(64);  // back off: fewer polls of L2
        __threadfence();
        atomicInc(ctr, wrap);
    }
    __syncthreads();
}
