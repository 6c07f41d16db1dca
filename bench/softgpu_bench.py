"""Software GPU interpreter speed: thread-instructions per second for an elementwise kernel and a
Welford-style block reduction, with all checks on and with checks off. Host timings of the
interpreter only (no GPU is involved; these are not GPU timings).

    python bench/softgpu_bench.py [--library path/to/libcuda.so.1]
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)  # a source checkout that is not pip-installed

SOURCE = r"""
extern "C" __global__ void scale_shift(const float* x, float* y, float a, float b, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = fmaf(a, x[i], b);
}

struct W { float mean, m2, n; };
__device__ W merge(W a, W b) {
    float n = a.n + b.n;
    if (n == 0.f) return a;
    float d = b.mean - a.mean, f = b.n / n;
    return W{a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f, n};
}
extern "C" __global__ void welford(const float* x, float* out, int n) {
    W w{0.f, 0.f, 0.f};
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        w.n += 1.f;
        float d = v - w.mean;
        w.mean += d / w.n;
        w.m2 += d * (v - w.mean);
    }
    for (int o = 16; o > 0; o >>= 1) {
        W o2{__shfl_down_sync(~0u, w.mean, o), __shfl_down_sync(~0u, w.m2, o), __shfl_down_sync(~0u, w.n, o)};
        w = merge(w, o2);
    }
    __shared__ W part[32];
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = w;
    __syncthreads();
    if (threadIdx.x < 32) {
        w = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : W{0.f, 0.f, 0.f};
        for (int o = 16; o > 0; o >>= 1) {
            W o2{__shfl_down_sync(~0u, w.mean, o), __shfl_down_sync(~0u, w.m2, o), __shfl_down_sync(~0u, w.n, o)};
            w = merge(w, o2);
        }
        if (threadIdx.x == 0) { out[3 * blockIdx.x] = w.mean; out[3 * blockIdx.x + 1] = w.m2; out[3 * blockIdx.x + 2] = w.n; }
    }
}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", help="software GPU library (default: cybn/_softgpu/libcuda.so.1)")
    ap.add_argument("--n", type=int, default=1 << 20, help="elements per launch")
    args = ap.parse_args()

    from cybn import softgpu
    softgpu.load(args.library)
    from cuda.bindings import driver as cu
    from cybn.testing import ptx as P  # NVRTC compile + launch helpers (shared with the PTX corpus tests)

    P.ok(cu.cuInit(0))
    ctx = P.ok(cu.cuDevicePrimaryCtxRetain(0))
    P.ok(cu.cuCtxPushCurrent(ctx))
    mod = P.Module(P.compile_ptx(SOURCE))
    n = args.n
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    with P.Device() as dev:
        px, py = dev.put(x), dev.alloc(4 * n)
        pout = dev.alloc(4 * 3 * 64)
        cases = [
            ("elementwise fma", mod.fn("scale_shift"), (64,), (256,), (px, py, np.float32(2), np.float32(1), np.int64(n))),
            ("welford block reduction", mod.fn("welford"), (64,), (256,), (px, pout, np.int32(n))),
        ]
        for checks in ("all", "none"):
            on = checks == "all"
            softgpu.set_checks(memcheck=on, racecheck=on, initcheck=on)
            for name, f, grid, block, kargs in cases:
                with softgpu.measure() as m:
                    t0 = time.perf_counter()
                    P.run(f, grid, block, *kargs)
                    dt = time.perf_counter() - t0
                ins = m.instructions
                print("%-26s checks=%-4s %12d thread-instructions in %6.3f s: %6.1f M thread-instructions/s"
                      % (name, checks, ins, dt, ins / dt / 1e6))
        softgpu.set_checks(memcheck=True, racecheck=True, initcheck=True)
    mod.close()


if __name__ == "__main__":
    main()
