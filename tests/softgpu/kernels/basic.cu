// Corpus: indexing, shared memory, barriers, warp collectives, vectors, calls, special registers.
#include <cuda_fp16.h>

extern "C" __global__ void grid_stride(const double* x, double* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i] * 2.0 + (double)i;
}

extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float s[256];
    float v = 0.f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
    s[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// out[mode * n + tid]: 0 down-sum, 1 inclusive scan with up, 2 xor butterfly sum, 3 broadcast of
// lane 3, 4 down-sum within 8-lane segments, 5 shfl_up within 16-lane segments.
extern "C" __global__ void warp_shuffles(const int* x, int* out) {
    int n = blockDim.x, t = threadIdx.x, lane = t & 31;
    int v = x[t];
    int s = v;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    out[0 * n + t] = s;
    int scan = v;
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, scan, o);
        if (lane >= o) scan += u;
    }
    out[1 * n + t] = scan;
    int b = v;
    for (int o = 16; o > 0; o >>= 1) b += __shfl_xor_sync(0xffffffffu, b, o);
    out[2 * n + t] = b;
    out[3 * n + t] = __shfl_sync(0xffffffffu, v, 3);
    int seg = v;
    for (int o = 4; o > 0; o >>= 1) seg += __shfl_down_sync(0xffffffffu, seg, o, 8);
    out[4 * n + t] = seg;
    out[5 * n + t] = __shfl_up_sync(0xffffffffu, v, 2, 16);
}

// out[k * n + tid]: ballot, all, any, uni, activemask, reduce_add, reduce_min, reduce_max(unsigned),
// match_any, ballot of a partial mask (even lanes only; odd lanes write 0).
extern "C" __global__ void votes(const int* x, unsigned* out) {
    int n = blockDim.x, t = threadIdx.x;
    int v = x[t];
    out[0 * n + t] = __ballot_sync(0xffffffffu, v > 0);
    out[1 * n + t] = __all_sync(0xffffffffu, v > -100);
    out[2 * n + t] = __any_sync(0xffffffffu, v > 40);
    out[3 * n + t] = __uni_sync(0xffffffffu, v > -100);
    out[4 * n + t] = __activemask();
    out[5 * n + t] = __reduce_add_sync(0xffffffffu, (unsigned)v);
    out[6 * n + t] = (unsigned)__reduce_min_sync(0xffffffffu, v);
    out[7 * n + t] = __reduce_max_sync(0xffffffffu, (unsigned)v);
    out[8 * n + t] = __match_any_sync(0xffffffffu, v & 3);
    unsigned r = 0;
    if ((t & 1) == 0) r = __ballot_sync(0x55555555u, v > 0);
    out[9 * n + t] = r;
}

extern "C" __global__ void float4_scale(const float4* x, float4* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float4 v = x[i];
        y[i] = make_float4(v.x * 2.f, v.y + 1.f, v.z - v.w, v.w * v.x);
    }
}

// Reverses each block's slice through dynamic shared memory.
extern "C" __global__ void dyn_reverse(const float* x, float* y) {
    extern __shared__ float s[];
    int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    y[base + t] = s[blockDim.x - 1 - t];
}

struct Pair { long long a; float b; };
__device__ __noinline__ long long factorial(int n) { return n <= 1 ? 1 : n * factorial(n - 1); }
__device__ __noinline__ Pair make_pair(int i, float f) {
    float arr[8];
    for (int k = 0; k < 8; ++k) arr[k] = f * k;
    return Pair{factorial(i % 15), arr[i & 7]};
}
extern "C" __global__ void calls(long long* a, float* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        Pair p = make_pair(i, 0.5f);
        a[i] = p.a;
        b[i] = p.b;
    }
}

extern "C" __global__ void specials(unsigned* out) {
    unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned g = block * blockDim.x * blockDim.y * blockDim.z + tid;
    unsigned* o = out + 16 * g;
    unsigned lane, ltmask, dyn, warp;
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    asm("mov.u32 %0, %%lanemask_lt;" : "=r"(ltmask));
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    asm("mov.u32 %0, %%warpid;" : "=r"(warp));
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockDim.x; o[4] = blockDim.y; o[5] = blockDim.z;
    o[6] = blockIdx.x; o[7] = blockIdx.y; o[8] = blockIdx.z;
    o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
    o[12] = lane; o[13] = ltmask; o[14] = dyn;
    long long c0 = clock64();
    o[15] = clock64() > c0;
}

__constant__ float coeffs[4] = {1.5f, -2.0f, 0.25f, 8.0f};
__device__ int bias = 7;
__device__ unsigned long long hits;
extern "C" __global__ void poly(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        y[i] = ((coeffs[3] * v + coeffs[2]) * v + coeffs[1]) * v + coeffs[0] + bias;
        atomicAdd(&hits, 1ull);
    }
}
