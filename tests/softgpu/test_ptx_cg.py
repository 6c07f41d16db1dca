"""cooperative_groups as the CUDA headers implement it: this_grid().sync() in a cooperative launch
(%envreg1:2 point at the grid's arrival counter), thread_block_tile of more than a warp (its
barriers and reduction scratch in %reserved_smem_offset_*), coalesced_threads() in a divergent
branch (built on __activemask()), each compared with numpy under the deterministic and a seeded
schedule. Needs the nvidia-cuda-cccl wheel (cooperative_groups includes <nv/target>)."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, cccl_include_dir, compile_ptx, launch, ok, run

pytestmark = pytest.mark.skipif(cccl_include_dir() is None, reason="the nvidia-cuda-cccl wheel (test extra) is not installed")

SOURCE = r"""
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
namespace cg = cooperative_groups;

// Sum of x over the whole grid, then every element minus the mean: two grid-wide syncs.
extern "C" __global__ void grid_center(const float* x, float* partial, float* out, double* total, int n) {
    cg::grid_group grid = cg::this_grid();
    cg::thread_block block = cg::this_thread_block();
    __shared__ float s[256];
    float v = 0.f;
    for (int i = grid.thread_rank(); i < n; i += grid.size()) v += x[i];
    s[block.thread_rank()] = v;
    block.sync();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (block.thread_rank() < o) s[block.thread_rank()] += s[block.thread_rank() + o];
        block.sync();
    }
    if (block.thread_rank() == 0) partial[blockIdx.x] = s[0];
    grid.sync();
    if (grid.thread_rank() == 0) {
        double t = 0;
        for (int b = 0; b < gridDim.x; ++b) t += partial[b];
        *total = t;
    }
    grid.sync();
    float mean = (float)(*total / n);
    for (int i = grid.thread_rank(); i < n; i += grid.size()) out[i] = x[i] - mean;
}

// Tiles of 64 and 128 threads: rank, group index, a tile-wide sum, and a barrier between phases.
template <unsigned T>
__device__ void tile_sums(cg::thread_block_tile<T, cg::thread_block> tile, const int* x, int* out, int stride) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int s = cg::reduce(tile, x[i], cg::plus<int>());
    tile.sync();
    out[stride * i] = s;
    out[stride * i + 1] = tile.thread_rank() + 1000 * tile.meta_group_rank();
}
extern "C" __global__ void tiles(const int* x, int* out) {
    cg::thread_block block = cg::this_thread_block();
    tile_sums(cg::tiled_partition<64>(block), x, out, 4);
    tile_sums(cg::tiled_partition<128>(block), x, out + 2, 4);
}

// In a divergent branch: the coalesced group is the lanes that took it.
extern "C" __global__ void coalesced(const int* x, int* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (x[i] > 0) {
        cg::coalesced_group g = cg::coalesced_threads();
        out[3 * i] = g.size();
        out[3 * i + 1] = g.thread_rank();
        out[3 * i + 2] = cg::reduce(g, x[i], cg::plus<int>());
    }
}
"""


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx(SOURCE)


@pytest.fixture
def mod(ctx, ptx):
    m = Module(ptx)
    yield m
    m.close()


@pytest.mark.parametrize("seed", [0, 3])
def test_grid_sync_reduction_under_cooperative_launch(mod, seed):
    n, bs = 5000, 256
    f = mod.fn("grid_center")
    per_sm = ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, bs, 0))
    sms = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0))
    nb = min(8, per_sm * sms)  # as many blocks as can be co-resident, up to 8
    assert nb >= 2
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    with softgpu.seed(seed), Device() as d:
        px, pp, po, pt = d.put(x), d.zeros(nb, np.float32), d.zeros(n, np.float32), d.zeros(1, np.float64)
        for _ in range(2):  # the workspace is fresh for every launch
            run(f, (nb,), (bs,), px, pp, po, pt, np.int32(n), cooperative=True)
        total, out = d.get(pt, 1, np.float64)[0], d.get(po, n, np.float32)
    np.testing.assert_allclose(total, x.astype(np.float64).sum(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out, x - np.float32(total / n), rtol=1e-6, atol=1e-6)


def test_grid_sync_in_an_ordinary_launch_traps(mod):
    with Device() as d:
        r = launch(mod.fn("grid_center"), (2,), (256,), d.zeros(10, np.float32), d.zeros(2, np.float32),
                   d.zeros(10, np.float32), d.zeros(1, np.float64), np.int32(10))
        assert r == cu.CUresult.CUDA_ERROR_LAUNCH_FAILED
        assert "trap" in softgpu.last_report()
        cu.cuCtxSynchronize()


@pytest.mark.parametrize("seed", [0, 9])
def test_multi_warp_tiles(mod, seed):
    nb, bs = 3, 256
    x = np.random.default_rng(seed).integers(-100, 100, nb * bs).astype(np.int32)
    with softgpu.seed(seed), Device() as d:
        px, po = d.put(x), d.zeros(4 * nb * bs, np.int32)
        run(mod.fn("tiles"), (nb,), (bs,), px, po)
        out = d.get(po, 4 * nb * bs, np.int32).reshape(-1, 4)
    i = np.arange(nb * bs)
    for k, t in ((0, 64), (2, 128)):
        np.testing.assert_array_equal(out[:, k], x.reshape(-1, t).sum(axis=1).repeat(t))
        np.testing.assert_array_equal(out[:, k + 1], (i % bs) % t + 1000 * ((i % bs) // t))


@pytest.mark.parametrize("seed", [0, 2])
def test_coalesced_threads_in_a_branch(mod, seed):
    nb, bs = 2, 96
    x = np.random.default_rng(seed + 1).integers(-3, 4, nb * bs).astype(np.int32)
    with softgpu.seed(seed), Device() as d:
        px, po = d.put(x), d.zeros(3 * nb * bs, np.int32)
        run(mod.fn("coalesced"), (nb,), (bs,), px, po)
        out = d.get(po, 3 * nb * bs, np.int32).reshape(-1, 3)
    sel = x > 0
    for w in range(0, nb * bs, 32):
        lanes = np.arange(w, w + 32)[sel[w:w + 32]]
        if seed == 0:  # the deterministic schedule converges the whole branch
            np.testing.assert_array_equal(out[lanes, 0], len(lanes))
            np.testing.assert_array_equal(out[lanes, 1], np.arange(len(lanes)))
            np.testing.assert_array_equal(out[lanes, 2], x[lanes].sum())
        else:  # any schedule: ranks 0..size-1 within each group, sums over the group's lanes
            assert np.all(out[lanes, 1] < out[lanes, 0])
            assert out[lanes, 0].max() <= len(lanes)
