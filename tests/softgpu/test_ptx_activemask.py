"""__activemask() returns the lanes converged on the same path: lanes on the other side of a branch
(or exited) are 0 bits. NVIDIA's warp-aggregated-atomics pattern (one atomicAdd per converged group,
by its leader, the slot broadcast with __shfl_sync over the same mask) then completes and hands
every selected element a distinct slot, under the deterministic and seeded schedules."""
import numpy as np
import pytest

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, run

SOURCE = r"""
__device__ int aggregated_increment(int* counter) {
    unsigned mask = __activemask();
    int lane = threadIdx.x & 31, leader = __ffs(mask) - 1, base;
    if (lane == leader) base = atomicAdd(counter, __popc(mask));
    base = __shfl_sync(mask, base, leader);
    return base + __popc(mask & ((1u << lane) - 1));
}
// Compacts the positive elements of x into out (in any order); masks[i] is what __activemask()
// returned in the branch thread i took (taken: the positives' side, else the other side).
extern "C" __global__ void compact(const int* x, int* out, int* counter, unsigned* masks, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (x[i] > 0) {
        masks[i] = __activemask();
        out[aggregated_increment(counter)] = x[i];
    } else {
        masks[i] = __activemask();
        masks[n + i] = 1;  // keeps this side a distinct path
    }
}
"""


def converged_masks(sel, n):
    """Per element: the bits of its warp's lanes that are on its side of the branch (numpy)."""
    masks = np.zeros(n, np.uint64)
    for w in range(0, n, 32):
        lanes = np.arange(w, min(w + 32, n))
        for side in (True, False):
            group = lanes[sel[lanes] == side]
            bits = int(sum(1 << int(i - w) for i in group))
            masks[group] = bits
    return masks.astype(np.uint32)


@pytest.fixture
def mod(ctx):
    m = Module(compile_ptx(SOURCE))
    yield m
    m.close()


@pytest.mark.parametrize("seed", [0, 1, 5, 123])
def test_warp_aggregated_atomic_in_a_divergent_branch(mod, seed):
    n = 200  # 7 warps, the last one partial
    x = np.random.default_rng(seed).integers(-5, 6, n).astype(np.int32)
    x[64:96] = 1  # one warp entirely on the taken side
    x[96:128] = -1  # one entirely on the other side
    sel = x > 0
    with softgpu.seed(seed), Device() as d:
        px, pout, pc = d.put(x), d.zeros(n, np.int32), d.zeros(1, np.int32)
        pm = d.put(np.zeros(2 * n, np.uint32))
        run(mod.fn("compact"), (2,), (128,), px, pout, pc, pm, np.int32(n))
        count = int(d.get(pc, 1, np.int32)[0])
        out = d.get(pout, n, np.int32)
        masks = d.get(pm, 2 * n, np.uint32)[:n]
    assert count == int(sel.sum())
    np.testing.assert_array_equal(np.sort(out[:count]), np.sort(x[sel]))  # every slot handed out once
    expected = converged_masks(sel, n)
    lane_bit = (1 << (np.arange(n) % 32)).astype(np.uint32)
    # Every schedule: a lane's mask holds itself and only lanes on its own side of the branch.
    assert np.all(masks & lane_bit)
    assert np.all(masks & ~expected == 0)
    if seed == 0:  # the deterministic schedule converges each side completely
        np.testing.assert_array_equal(masks, expected)
