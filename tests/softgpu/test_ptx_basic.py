"""PTX corpus on the software GPU: indexing, shared memory and barriers, warp shuffles and votes,
vector accesses, dynamic shared memory, calls, special registers and module variables. Every result
is compared with a numpy reference written from the maths."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, ok, run


@pytest.fixture
def mod(ctx):
    m = Module(cu_file="basic.cu")
    yield m
    m.close()


def test_grid_stride_loop_with_64_bit_indices(mod):
    n = 5000
    x = np.random.default_rng(0).standard_normal(n)
    with Device() as d:
        px, py = d.put(x), d.alloc(8 * n)
        run(mod.fn("grid_stride"), (3,), (128,), px, py, np.int64(n))
        np.testing.assert_array_equal(d.get(py, n, np.float64), x * 2.0 + np.arange(n, dtype=np.float64))


def test_shared_memory_block_reduction(mod):
    n = 10000
    x = np.random.default_rng(1).integers(-50, 50, n).astype(np.float32)  # exact sums in float32
    with Device() as d:
        px, po = d.put(x), d.alloc(4 * 4)
        with softgpu.measure() as m:
            run(mod.fn("block_sum"), (4,), (256,), px, po, np.int32(n))
        got = d.get(po, 4, np.float32)
    expect = [x[np.arange(n) % 1024 // 256 == b].astype(np.float64).sum() for b in range(4)]
    np.testing.assert_array_equal(got, expect)
    total = m.total
    assert total["global_load_bytes"] == 4 * n and total["global_store_bytes"] == 16
    assert total["shared_bytes"] > 0 and total["thread_instructions"] > n


def test_warp_shuffles_in_every_mode(mod):
    n = 64
    x = np.random.default_rng(2).integers(-1000, 1000, n).astype(np.int32)
    with Device() as d:
        px, po = d.put(x), d.alloc(4 * 6 * n)
        run(mod.fn("warp_shuffles"), (1,), (n,), px, po)
        out = d.get(po, 6 * n, np.int32).reshape(6, n)
    lane = np.arange(n) % 32
    w = x.astype(np.int64).reshape(-1, 32)
    down = np.zeros(n, np.int64)
    for t in range(n):  # shfl_down tree: lanes near the top add fewer partners
        vals = x[(t // 32) * 32:(t // 32) * 32 + 32].astype(np.int64).copy()
        for o in (16, 8, 4, 2, 1):
            vals = vals + np.array([vals[l + o] if l + o < 32 else vals[l] for l in range(32)])
        down[t] = vals[lane[t]]
    np.testing.assert_array_equal(out[0], down)
    np.testing.assert_array_equal(out[1], np.cumsum(w, axis=1).ravel())
    np.testing.assert_array_equal(out[2], np.repeat(w.sum(axis=1), 32))
    np.testing.assert_array_equal(out[3], np.repeat(w[:, 3], 32))
    seg = x.astype(np.int64).reshape(-1, 8)
    segdown = np.zeros_like(seg)
    for r in range(seg.shape[0]):
        vals = seg[r].copy()
        for o in (4, 2, 1):
            vals = vals + np.array([vals[l + o] if l + o < 8 else vals[l] for l in range(8)])
        segdown[r] = vals
    np.testing.assert_array_equal(out[4], segdown.ravel())
    up16 = np.array([x[t - 2] if (t % 16) >= 2 else x[t] for t in range(n)])
    np.testing.assert_array_equal(out[5], up16)


def test_votes_ballot_redux_match(mod):
    n = 64
    x = np.random.default_rng(3).integers(-50, 50, n).astype(np.int32)
    x[40:64] = np.abs(x[40:64]) + 1  # second warp's upper lanes all positive
    with Device() as d:
        px, po = d.put(x), d.alloc(4 * 10 * n)
        run(mod.fn("votes"), (1,), (n,), px, po)
        out = d.get(po, 10 * n, np.uint32).reshape(10, n)
    for w in range(2):
        v = x[32 * w:32 * w + 32].astype(np.int64)
        sl = slice(32 * w, 32 * w + 32)
        ballot = sum(1 << l for l in range(32) if v[l] > 0)
        assert (out[0, sl] == ballot).all()
        assert (out[1, sl] == 1).all()
        assert (out[2, sl] == int((v > 40).any())).all()
        assert (out[3, sl] == 1).all()
        assert (out[4, sl] == 0xffffffff).all()
        assert (out[5, sl] == (v.sum() & 0xffffffff)).all()
        assert (out[6, sl] == (v.min() & 0xffffffff)).all()
        assert (out[7, sl] == (v & 0xffffffff).max()).all()
        for l in range(32):
            assert out[8, 32 * w + l] == sum(1 << k for k in range(32) if (v[k] & 3) == (v[l] & 3))
            even = sum(1 << k for k in range(0, 32, 2) if v[k] > 0)
            assert out[9, 32 * w + l] == (even if l % 2 == 0 else 0)


def test_float4_loads_and_stores(mod):
    n = 100
    x = np.random.default_rng(4).standard_normal((n, 4)).astype(np.float32)
    with Device() as d:
        px, py = d.put(x), d.alloc(16 * n)
        with softgpu.measure() as m:
            run(mod.fn("float4_scale"), (2,), (64,), px, py, np.int32(n))
        y = d.get(py, 4 * n, np.float32).reshape(n, 4)
    x64 = x.astype(np.float64)
    expect = np.stack([x64[:, 0] * 2, x64[:, 1] + 1, x64[:, 2] - x64[:, 3], x64[:, 3] * x64[:, 0]], axis=1)
    np.testing.assert_array_equal(y, expect.astype(np.float32))
    assert m.load_bytes == 16 * n and m.store_bytes == 16 * n


def test_dynamic_shared_memory(mod):
    x = np.arange(3 * 96, dtype=np.float32)
    with Device() as d:
        px, py = d.put(x), d.alloc(x.nbytes)
        run(mod.fn("dyn_reverse"), (3,), (96,), px, py, smem=96 * 4)
        np.testing.assert_array_equal(d.get(py, x.size, np.float32), x.reshape(3, 96)[:, ::-1].ravel())


def test_noinline_recursive_calls_with_local_arrays(mod):
    n = 40
    with Device() as d:
        pa, pb = d.alloc(8 * n), d.alloc(4 * n)
        run(mod.fn("calls"), (1,), (n,), pa, pb, np.int32(n))
        a, b = d.get(pa, n, np.int64), d.get(pb, n, np.float32)
    import math
    np.testing.assert_array_equal(a, [math.factorial(max(i % 15, 1)) for i in range(n)])
    np.testing.assert_array_equal(b, [0.5 * (i & 7) for i in range(n)])


def test_special_registers(mod):
    grid, block = (2, 3, 1), (8, 2, 3)
    nt = 2 * 3 * 8 * 2 * 3
    with Device() as d:
        po = d.alloc(4 * 16 * nt)
        run(mod.fn("specials"), grid, block, po, smem=64)
        o = d.get(po, 16 * nt, np.uint32).reshape(nt, 16)
    g = 0
    for bz in range(1):
        for by in range(3):
            for bx in range(2):
                for tz in range(3):
                    for ty in range(2):
                        for tx in range(8):
                            tid = tx + 8 * (ty + 2 * tz)
                            row = o[(bx + 2 * by) * 48 + tid]
                            lane = tid % 32
                            assert list(row[:12]) == [tx, ty, tz, 8, 2, 3, bx, by, bz, 2, 3, 1]
                            assert row[12] == lane and row[13] == (1 << lane) - 1 and row[14] == 64 and row[15] == 1
                            g += 1
    assert g == nt


def test_module_constants_and_globals(mod):
    n = 50
    x = np.linspace(-2, 2, n).astype(np.float32)
    addr, size = mod.global_var("bias")
    assert size == 4
    ok(cu.cuMemcpyHtoD(addr, np.array([3], np.int32), 4))
    caddr, csize = mod.global_var("coeffs")
    assert csize == 16
    coeffs = np.empty(4, np.float32)
    ok(cu.cuMemcpyDtoH(coeffs, caddr, 16))
    np.testing.assert_array_equal(coeffs, [1.5, -2.0, 0.25, 8.0])
    with Device() as d:
        px, py = d.put(x), d.alloc(4 * n)
        run(mod.fn("poly"), (1,), (64,), px, py, np.int32(n))
        y = d.get(py, n, np.float32)
    v = x.astype(np.float64)
    # The kernel evaluates in float32 with fused multiply-adds: compare within float32 rounding.
    np.testing.assert_allclose(y, ((8 * v + 0.25) * v - 2) * v + 1.5 + 3, rtol=1e-6, atol=1e-5)
    haddr, _ = mod.global_var("hits")
    hits = np.empty(1, np.uint64)
    ok(cu.cuMemcpyDtoH(hits, haddr, 8))
    assert hits[0] == n


def test_same_result_under_different_seeds(mod):
    n = 3000
    x = np.random.default_rng(5).integers(-9, 9, n).astype(np.float32)
    results = []
    previous = softgpu.get_seed()
    try:
        for seed in (0, 12345, 987654321):
            softgpu.set_seed(seed)
            with Device() as d:
                px, po = d.put(x), d.alloc(16)
                run(mod.fn("block_sum"), (4,), (256,), px, po, np.int32(n))
                results.append(d.get(po, 4, np.float32))
    finally:
        softgpu.set_seed(previous)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert results[0].sum() == x.astype(np.float64).sum()
