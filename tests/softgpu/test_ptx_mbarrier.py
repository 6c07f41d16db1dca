"""mbarrier: libcu++'s cuda::barrier (mbarrier.init / arrive / test_wait on sm_80) ordering shared
memory between phases under racecheck, split arrive/wait, and the raw forms (try_wait.parity,
expect_tx/complete_tx, arrive_drop, pending_count) through inline PTX, compared with numpy."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, cccl_include_dir, compile_ptx, launch, run

LIBCU = r"""
#include <cuda/barrier>
// Each round every thread publishes a value, then reads its neighbour's: two phases per round.
extern "C" __global__ void rounds(const int* x, int* out, int nrounds) {
    __shared__ cuda::barrier<cuda::thread_scope_block> bar;
    __shared__ int buf[256];
    if (threadIdx.x == 0) init(&bar, blockDim.x);
    __syncthreads();
    int acc = 0;
    for (int r = 0; r < nrounds; ++r) {
        buf[threadIdx.x] = x[(blockIdx.x * nrounds + r) * blockDim.x + threadIdx.x];
        bar.arrive_and_wait();
        acc += buf[(threadIdx.x + 1) % blockDim.x] * (r + 1);
        auto token = bar.arrive();  // split: independent work between arrive and wait
        acc += threadIdx.x;
        bar.wait(std::move(token));
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
"""

RAW = r"""
__device__ unsigned long long bar_obj_dummy;
extern "C" __global__ void raw(int* out) {
    __shared__ unsigned long long bar;
    __shared__ int data[64];
    unsigned addr = (unsigned)__cvta_generic_to_shared(&bar);
    int t = threadIdx.x;
    if (t == 0) {
        asm volatile("mbarrier.init.shared.b64 [%0], %1;" :: "r"(addr), "r"(blockDim.x));
        asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" :: "r"(addr), "r"(256));
    }
    __syncthreads();
    data[t] = t * t;
    unsigned long long token;
    asm volatile("mbarrier.arrive.shared.b64 %0, [%1];" : "=l"(token) : "r"(addr));
    unsigned pend;
    asm volatile("mbarrier.pending_count.b64 %0, %1;" : "=r"(pend) : "l"(token));
    out[4 * t] = pend;  // arrivals still pending before this one
    __syncthreads();  // everyone arrived; the 256 expected bytes keep the phase open
    unsigned done;
    asm volatile("{ .reg .pred p; mbarrier.test_wait.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(addr), "l"(token));
    out[4 * t + 1] = done;
    __syncthreads();
    if (t == 0) asm volatile("mbarrier.complete_tx.shared.b64 [%0], %1;" :: "r"(addr), "r"(256));
    asm volatile("{ .reg .pred p; W: mbarrier.try_wait.parity.shared.b64 p, [%0], %1; @!p bra W; }"
                 :: "r"(addr), "r"(0));
    out[4 * t + 2] = data[(t + 1) % blockDim.x];
    // Phase 1: the odd threads drop out of later phases.
    if (t & 1) asm volatile("mbarrier.arrive_drop.shared.b64 _, [%0];" :: "r"(addr));
    else asm volatile("mbarrier.arrive.shared.b64 _, [%0];" :: "r"(addr));
    asm volatile("{ .reg .pred p; W2: mbarrier.try_wait.parity.shared.b64 p, [%0], %1; @!p bra W2; }"
                 :: "r"(addr), "r"(1));
    if (!(t & 1)) asm volatile("mbarrier.arrive.shared.b64 %0, [%1];" : "=l"(token) : "r"(addr));
    if (!(t & 1)) {
        asm volatile("mbarrier.pending_count.b64 %0, %1;" : "=r"(pend) : "l"(token));
        out[4 * t + 3] = pend;
    }
}
"""

pytestmark = pytest.mark.skipif(cccl_include_dir() is None, reason="the nvidia-cuda-cccl wheel (test extra) is not installed")


@pytest.mark.parametrize("seed", [0, 6])
def test_cuda_barrier_phases_order_shared_memory(ctx, seed):
    nb, bs, nr = 2, 128, 5
    x = np.random.default_rng(seed).integers(-50, 50, nb * nr * bs).astype(np.int32)
    with Module(compile_ptx(LIBCU)) as m, softgpu.seed(seed), Device() as d:
        px, po = d.put(x), d.zeros(nb * bs, np.int32)
        run(m.fn("rounds"), (nb,), (bs,), px, po, np.int32(nr))
        out = d.get(po, nb * bs, np.int32).reshape(nb, bs)
    xr = x.reshape(nb, nr, bs).astype(np.int64)
    want = sum(np.roll(xr[:, r, :], -1, axis=1) * (r + 1) for r in range(nr)) + nr * np.arange(bs)
    np.testing.assert_array_equal(out, want)


def test_raw_mbarrier_forms(ctx):
    bs = 64
    with Module(compile_ptx(RAW)) as m, Device() as d:
        po = d.zeros(4 * bs, np.int32)
        run(m.fn("raw"), (1,), (bs,), po)
        out = d.get(po, 4 * bs, np.int32).reshape(bs, 4)
    t = np.arange(bs)
    assert sorted(out[:, 0].tolist()) == list(range(1, bs + 1))  # each arrival saw the count before it
    np.testing.assert_array_equal(out[:, 1], 0)  # transaction bytes outstanding: phase not complete
    np.testing.assert_array_equal(out[:, 2], ((t + 1) % bs) ** 2)
    even = out[::2, 3]
    assert sorted(even.tolist()) == list(range(1, bs // 2 + 1))  # only the even half is expected now


def test_arrive_on_an_uninitialised_mbarrier_fails(ctx):
    src = r"""extern "C" __global__ void bad() {
        __shared__ unsigned long long bar;
        unsigned addr = (unsigned)__cvta_generic_to_shared(&bar);
        if (threadIdx.x == 0) bar = 0;
        __syncthreads();
        asm volatile("mbarrier.arrive.shared.b64 _, [%0];" :: "r"(addr));
    }"""
    with Module(compile_ptx(src)) as m:
        assert launch(m.fn("bad"), (1,), (32,)) == cu.CUresult.CUDA_ERROR_LAUNCH_FAILED
        assert "not initialised" in softgpu.last_report()
        cu.cuCtxSynchronize()
