"""External corpus: CUB's block- and warp-level primitives (BlockReduce, BlockScan, BlockLoad/Store,
BlockRadixSort, BlockHistogram, WarpReduce, WarpScan) and libcu++ atomic_ref, compiled by NVRTC from the
nvidia-cuda-cccl wheel's headers, run under all checks (and a seeded schedule) and compared with numpy.
cuda::barrier is covered by test_ptx_mbarrier.py."""
import numpy as np
import pytest

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, cccl_include_dir, compile_ptx, run

pytestmark = pytest.mark.skipif(cccl_include_dir() is None, reason="the nvidia-cuda-cccl wheel (test extra) is not installed")

SOURCE = r"""
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_histogram.cuh>
#include <cub/block/block_load.cuh>
#include <cub/block/block_store.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <cub/warp/warp_scan.cuh>
#include <cuda/atomic>
#include <cuda/barrier>
constexpr int B = 128, I = 4;
extern "C" __global__ void reduce(const int* x, int* out) {
  using R = cub::BlockReduce<int, B>; __shared__ typename R::TempStorage t;
  int v = x[blockIdx.x * B + threadIdx.x]; int s = R(t).Sum(v); if (threadIdx.x == 0) out[blockIdx.x] = s; }
extern "C" __global__ void scan(const int* x, int* out) {
  using L = cub::BlockLoad<int, B, I, cub::BLOCK_LOAD_TRANSPOSE>; using S = cub::BlockScan<int, B>; using St = cub::BlockStore<int, B, I, cub::BLOCK_STORE_TRANSPOSE>;
  __shared__ union { typename L::TempStorage l; typename S::TempStorage s; typename St::TempStorage st; } t;
  int v[I]; L(t.l).Load(x + blockIdx.x * B * I, v); __syncthreads(); S(t.s).InclusiveSum(v, v); __syncthreads(); St(t.st).Store(out + blockIdx.x * B * I, v); }
extern "C" __global__ void sort(const unsigned* x, unsigned* out) {
  using S = cub::BlockRadixSort<unsigned, B, I>; __shared__ typename S::TempStorage t;
  unsigned k[I]; for (int i = 0; i < I; ++i) k[i] = x[blockIdx.x * B * I + threadIdx.x * I + i];
  S(t).Sort(k); for (int i = 0; i < I; ++i) out[blockIdx.x * B * I + threadIdx.x * I + i] = k[i]; }
extern "C" __global__ void hist(const unsigned char* x, unsigned* out) {
  using H = cub::BlockHistogram<unsigned char, B, I, 256>; __shared__ typename H::TempStorage t; __shared__ unsigned h[256];
  unsigned char v[I]; for (int i = 0; i < I; ++i) v[i] = x[blockIdx.x * B * I + threadIdx.x * I + i];
  H(t).Histogram(v, h); __syncthreads(); for (int i = threadIdx.x; i < 256; i += B) atomicAdd(&out[i], h[i]); }
extern "C" __global__ void warp(const int* x, int* out) {
  using WR = cub::WarpReduce<int>; using WS = cub::WarpScan<int>; __shared__ typename WR::TempStorage r[B/32]; __shared__ typename WS::TempStorage s[B/32];
  int w = threadIdx.x / 32, v = x[blockIdx.x * B + threadIdx.x]; int sum = WR(r[w]).Sum(v); int inc; WS(s[w]).InclusiveSum(v, inc);
  out[2 * (blockIdx.x * B + threadIdx.x)] = sum; out[2 * (blockIdx.x * B + threadIdx.x) + 1] = inc; }
extern "C" __global__ void atomics(int* c, unsigned long long* m) {
  cuda::atomic_ref<int, cuda::thread_scope_device> a(*c); a.fetch_add(1, cuda::memory_order_relaxed);
  cuda::atomic_ref<unsigned long long, cuda::thread_scope_device> b(*m); b.fetch_max(threadIdx.x + blockIdx.x * 1000ull); }
"""
B, I, NB = 128, 4, 3


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx(SOURCE)


@pytest.fixture(params=[0, 5])
def mod(request, ctx, ptx):
    m = Module(ptx)
    with softgpu.seed(request.param):
        yield m
    m.close()


def test_block_reduce(mod):
    x = np.random.default_rng(1).integers(-1000, 1000, NB * B).astype(np.int32)
    with Device() as d:
        po = d.zeros(NB, np.int32)
        run(mod.fn("reduce"), (NB,), (B,), d.put(x), po)
        np.testing.assert_array_equal(d.get(po, NB, np.int32), x.reshape(NB, B).sum(axis=1))


def test_block_load_scan_store(mod):
    x = np.random.default_rng(2).integers(-1000, 1000, NB * B * I).astype(np.int32)
    with Device() as d:
        po = d.zeros(NB * B * I, np.int32)
        run(mod.fn("scan"), (NB,), (B,), d.put(x), po)
        np.testing.assert_array_equal(d.get(po, NB * B * I, np.int32).reshape(NB, -1), np.cumsum(x.reshape(NB, -1), axis=1))


def test_block_radix_sort(mod):
    x = np.random.default_rng(3).integers(0, 1 << 32, NB * B * I, dtype=np.uint64).astype(np.uint32)
    with Device() as d:
        po = d.zeros(NB * B * I, np.uint32)
        run(mod.fn("sort"), (NB,), (B,), d.put(x), po)
        np.testing.assert_array_equal(d.get(po, NB * B * I, np.uint32).reshape(NB, -1), np.sort(x.reshape(NB, -1), axis=1))


def test_block_histogram(mod):
    x = np.random.default_rng(4).integers(0, 256, NB * B * I).astype(np.uint8)
    with Device() as d:
        po = d.zeros(256, np.uint32)
        run(mod.fn("hist"), (NB,), (B,), d.put(x), po)
        np.testing.assert_array_equal(d.get(po, 256, np.uint32), np.bincount(x, minlength=256))


def test_warp_reduce_and_scan(mod):
    x = np.random.default_rng(5).integers(-100, 100, NB * B).astype(np.int32)
    with Device() as d:
        po = d.zeros(2 * NB * B, np.int32)
        run(mod.fn("warp"), (NB,), (B,), d.put(x), po)
        out = d.get(po, 2 * NB * B, np.int32).reshape(-1, 32, 2)
    w = x.reshape(-1, 32)
    np.testing.assert_array_equal(out[:, 0, 0], w.sum(axis=1))  # lane 0 holds the warp's sum
    np.testing.assert_array_equal(out[:, :, 1], np.cumsum(w, axis=1))


def test_libcudacxx_atomic_ref(mod):
    with Device() as d:
        pc, pm = d.zeros(1, np.int32), d.zeros(1, np.uint64)
        run(mod.fn("atomics"), (NB,), (B,), pc, pm)
        assert d.get(pc, 1, np.int32)[0] == NB * B
        assert d.get(pm, 1, np.uint64)[0] == (NB - 1) * 1000 + B - 1
