// Corpus: global and shared atomics, CAS loops, and a grid-wide barrier from atomics + a volatile spin.

// i32[0] add, i32[1] min, i32[2] max, i32[3] and, i32[4] or, i32[5] xor, i32[6] exch target,
// u32[7] inc (wrap 16), u32[8] dec (wrap 10), f32 add, f64 add, u64 add, float max via CAS.
extern "C" __global__ void global_atomics(const int* x, int* i32, float* f32, double* f64,
                                          unsigned long long* u64, float* fmax_out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[t];
    atomicAdd(&i32[0], v);
    atomicMin(&i32[1], v);
    atomicMax(&i32[2], v);
    atomicAnd(&i32[3], ~(1 << (t & 31)));
    atomicOr(&i32[4], 1 << (t & 31));
    atomicXor(&i32[5], v);
    atomicExch(&i32[6], 5);
    atomicInc((unsigned*)&i32[7], 15u);
    atomicDec((unsigned*)&i32[8], 9u);
    atomicAdd(f32, (float)v);
    atomicAdd(f64, (double)v * 0.5);
    atomicAdd(u64, (unsigned long long)(v + 1000));
    float fv = v * 0.25f;
    int* addr = (int*)fmax_out;
    int old = *addr, assumed;
    do {
        assumed = old;
        if (__int_as_float(assumed) >= fv) break;
        old = atomicCAS(addr, assumed, __float_as_int(fv));
    } while (old != assumed);
}

// Per-block histogram of x % 16 in shared memory, then merged into global counts.
extern "C" __global__ void shared_histogram(const int* x, unsigned* counts, int n) {
    __shared__ unsigned h[16];
    if (threadIdx.x < 16) h[threadIdx.x] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&h[x[i] & 15], 1u);
    __syncthreads();
    if (threadIdx.x < 16) atomicAdd(&counts[threadIdx.x], h[threadIdx.x]);
}

// Every block publishes a value, waits at a grid barrier, then sums everyone's values.
__device__ void grid_barrier(unsigned* arrived, unsigned nblocks) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(arrived, 1u);
        while (*(volatile unsigned*)arrived < nblocks) {}
        __threadfence();
    }
    __syncthreads();
}
extern "C" __global__ void grid_sync_sum(int* values, int* sums, unsigned* arrived) {
    if (threadIdx.x == 0) values[blockIdx.x] = (blockIdx.x + 1) * 10;
    grid_barrier(arrived, gridDim.x);
    if (threadIdx.x == 0) {
        int s = 0;
        for (unsigned b = 0; b < gridDim.x; ++b) s += ((volatile int*)values)[b];
        sums[blockIdx.x] = s;
    }
}
