"""Atomics on the software GPU (global, shared, float, CAS loops) and a grid-wide barrier under
cuLaunchCooperativeKernel, compared with numpy references."""
import numpy as np
import pytest

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, run


@pytest.fixture
def mod(ctx):
    m = Module(cu_file="atomics.cu")
    yield m
    m.close()


def test_global_atomics(mod):
    n = 128
    x = np.random.default_rng(0).integers(-1000, 1000, n).astype(np.int32)
    init = np.array([0, 2**31 - 1, -2**31, -1, 0, 0, 0, 0, 0], np.int32)
    with Device() as d:
        px, pi = d.put(x), d.put(init)
        pf, pd, pu = d.zeros(1, np.float32), d.zeros(1, np.float64), d.zeros(1, np.uint64)
        pm = d.put(np.array([-1e30], np.float32))
        with softgpu.measure() as m:
            run(mod.fn("global_atomics"), (2,), (64,), px, pi, pf, pd, pu, pm)
        i32 = d.get(pi, 9, np.int32)
        f32, f64 = d.get(pf, 1, np.float32)[0], d.get(pd, 1, np.float64)[0]
        u64, fmax = d.get(pu, 1, np.uint64)[0], d.get(pm, 1, np.float32)[0]
    xs = x.astype(np.int64)
    assert i32[0] == xs.sum() and i32[1] == xs.min() and i32[2] == xs.max()
    assert i32[3] == 0 and i32[4] == -1
    assert i32[5] == np.bitwise_xor.reduce(x)
    assert i32[6] == 5
    assert i32[7] == n % 16 and i32[8] == (-n) % 10
    assert f32 == xs.sum()  # integers: exact in any order
    assert f64 == xs.sum() * 0.5
    assert u64 == (xs + 1000).sum()
    assert fmax == np.float32(xs.max() * 0.25)
    # 12 unconditional atomics per thread, plus the CAS loop's (at least one each until the max settles).
    assert m.total["atomics"] >= 12 * n


def test_shared_atomics_histogram(mod):
    n = 5000
    x = np.random.default_rng(1).integers(0, 1 << 20, n).astype(np.int32)
    with Device() as d:
        px, pc = d.put(x), d.zeros(16, np.uint32)
        run(mod.fn("shared_histogram"), (3,), (128,), px, pc, np.int32(n))
        np.testing.assert_array_equal(d.get(pc, 16, np.uint32), np.bincount(x & 15, minlength=16))


@pytest.mark.parametrize("seed", [0, 7])
def test_grid_barrier_under_cooperative_launch(mod, seed):
    nb = 6
    previous = softgpu.get_seed()
    softgpu.set_seed(seed)
    try:
        with Device() as d:
            pv, ps, pa = d.zeros(nb, np.int32), d.zeros(nb, np.int32), d.zeros(1, np.uint32)
            run(mod.fn("grid_sync_sum"), (nb,), (64,), pv, ps, pa, cooperative=True)
            np.testing.assert_array_equal(d.get(ps, nb, np.int32), [10 * nb * (nb + 1) // 2] * nb)
    finally:
        softgpu.set_seed(previous)
