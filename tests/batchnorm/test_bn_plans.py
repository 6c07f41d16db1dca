"""The launch heuristic's paths forced on small data (split channels with the last-CTA combine, group
sizes, no replay cache, the grid.y limit), the large per-activation batch, and determinism under
randomised software-GPU schedules."""
import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import TOL, batch_stats, check_forward_train, exact_mean, gpu, params, run_forward_train
from cybn import batchnorm, gpuarray, softgpu


@pytest.mark.parametrize("shape,mode,override", [
    ((4, 3, 16, 8), "spatial", {"split": 4}),                # 16-byte units, split
    ((4, 3, 5, 7), "spatial", {"split": 3, "group": 64}),    # scalar units, split
    ((2, 2, 33), "spatial", {"split": 40}),                  # more CTAs than units: empty CTAs
    ((3, 5, 40), "spatial", {"cache": 0}),                   # fused, re-reading x
    ((4, 2, 64), "spatial", {"cache": 1}),                   # fused, cache holds part of x
    # one 512-thread group per channel (1024 threads of bn_fwd_train_spatial<float>, 88 registers as
    # ptxas allocates for sm_80, exceed the 64K register file: real GPUs refuse that launch)
    ((3, 9, 12), "spatial", {"group": 512}),
    ((300, 5), "per_activation", {"split": 6}),
    ((40, 3, 2), "per_activation", {"split": 2, "group": 4}),
    ((37, 70), "per_activation", {"cache": 0}),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_forced_plans(rng, shape, mode, override, dtype):
    with batchnorm.plan_override(**override):
        check_forward_train(rng, shape, mode, dtype)


@pytest.mark.parametrize("shape", [(1, 3, 37), (1, 2, 24), (1, 5, 203), (1, 1, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("override", [{}, {"split": 3, "group": 32}, {"cache": 0}])
def test_single_row_channels_head_body_tail(rng, shape, dtype, override):
    """N == 1 with S not a multiple of the vector width: each channel's row starts at a different
    alignment; the middle goes in 16-byte units, the head and tail element by element. Also from a
    misaligned view of the data (offset by one element), forward, backward and inference."""
    with batchnorm.plan_override(**override):
        check_forward_train(rng, shape, "spatial", dtype)
        x = rng.standard_normal((shape[0], shape[1], shape[2] + 1)).astype(dtype)
        scale, bias, rm, rv = params(rng, shape[1])
        base = gpu(np.concatenate([np.zeros(1, dtype), x.ravel()]))
        out = gpu(np.zeros(x.size + 1, dtype))
        gx = gpuarray.GPUArray.from_pointer(base.ptr + x.itemsize, x.shape, dtype, base)
        gy = gpuarray.GPUArray.from_pointer(out.ptr + x.itemsize, x.shape, dtype, out)
        rowvec = x.shape[2] >= 2 * 16 // x.itemsize  # shorter rows stay element-wise
        assert batchnorm.plan(x.shape, dtype, aligned=False)["vec"] == (2 if rowvec else 0)
        batchnorm.forward_train(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, 0.1, out=gy)
        want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
        np.testing.assert_allclose(gy.get().astype(np.float64), want[0], **TOL[np.dtype(dtype)])
        batchnorm.forward_infer(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, out=gy)
        np.testing.assert_allclose(gy.get().astype(np.float64), ref.forward_infer(x, scale, bias, rm, rv, 1e-5),
                                   **TOL[np.dtype(dtype)])
        dy = rng.standard_normal(x.shape).astype(dtype)
        mean, invstd = batch_stats(x, "spatial", 1e-5)
        dybase = gpu(np.concatenate([np.zeros(1, dtype), dy.ravel()]))
        gdy = gpuarray.GPUArray.from_pointer(dybase.ptr + x.itemsize, x.shape, dtype, dybase)
        dx, ds, db = batchnorm.backward(gx, gdy, gpu(scale), gpu(mean), gpu(invstd), out=gy)
        wdx, wds, wdb = ref.backward(x, dy, scale, exact_mean(x), invstd)
        np.testing.assert_allclose(gy.get().astype(np.float64), wdx, **TOL[np.dtype(dtype)])
        np.testing.assert_allclose(ds.get(), wds, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(db.get(), wdb, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(out.get()[:1], np.zeros(1, dtype))  # nothing written before the view


def test_plan_reports_the_override():
    with batchnorm.plan_override(group=64, split=5, cache=0):
        p = batchnorm.plan((2, 3, 8), np.float32)
    assert p["block"][0] == 64 and p["grid"][1] == 5 and p["split"] == 5
    p = batchnorm.plan((2, 3, 8), np.float32)
    assert p["split"] == 1 and p["cache_units"] >= 1 and p["shared_bytes"] > 0
    assert batchnorm.plan((2, 3, 8), np.float32)["vec"] == 1
    assert batchnorm.plan((2, 3, 9), np.float32)["vec"] == 0
    assert batchnorm.plan((1, 3, 9), np.float32)["vec"] == 2
    assert batchnorm.plan((1, 3, 8), np.float32, aligned=False)["vec"] == 2


def test_grid_y_limit(rng):
    """A split at the gridDim.y limit (65535 CTAs per channel, most of them empty) is still correct;
    the heuristic itself never asks for more than 1024."""
    with batchnorm.plan_override(split=65535, group=32):
        assert batchnorm.plan((1, 1, 20), np.float32)["grid"][1] == 65535
        check_forward_train(rng, (1, 1, 20), "spatial")
    assert batchnorm.plan((1, 1, 1 << 30), np.float32)["split"] <= 1024


def test_large_per_activation_batch(rng):
    """(131072, 3) per-activation: the heuristic itself splits the batch over CTAs (partials + last-CTA
    combine + a second launch)."""
    shape = (131072, 3)
    assert batchnorm.plan(shape, np.float32, "per_activation")["split"] > 1
    check_forward_train(rng, shape, "per_activation", factor=0.5)


def test_many_channels_grid_x(rng):
    """More channels than one CTA column per 65535: the channel axis lives on gridDim.x."""
    with batchnorm.plan_override(group=1024):  # one channel per CTA
        p = batchnorm.plan((1, 70000, 1), np.float32)
    assert p["grid"][0] == 70000 and p["block"][:2] == (1024, 1)
    check_forward_train(rng, (2, 3000, 1), "spatial")


def test_schedules_deterministic(rng):
    """Two randomised schedules give bit-identical statistics and outputs (fixed combination order)."""
    x = rng.standard_normal((4, 3, 9, 10)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    scale, bias, rm, rv = params(rng, 3)
    results = []
    for seed in (1, 2):
        with softgpu.seed(seed), batchnorm.plan_override(split=5, group=64):
            g_rm, g_rv = gpu(rm), gpu(rv)
            y, sm, si = batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), g_rm, g_rv, 1e-5, 0.3)
            dx, ds, db = batchnorm.backward(gpu(x), gpu(dy), gpu(scale), sm, si)
            results.append([a.get() for a in (y, sm, si, g_rm, g_rv, dx, ds, db)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.3)
    np.testing.assert_allclose(results[0][0], want[0], rtol=1e-4, atol=1e-4)


def test_honest_large_channel(rng):
    """One channel of 65536 * 256 + 13 values (past 65535 blocks of 256; odd: 16-byte units between a
    scalar head and tail) with the heuristic's own plan: split over CTAs, partials combined by the
    last one, then the normalisation launch. A few seconds."""
    shape = (1, 1, 65536 * 256 + 13)
    p = batchnorm.plan(shape, np.float32)
    assert 1 < p["split"] <= 1024 and p["vec"] == 2
    x = rng.standard_normal(shape, dtype=np.float32)
    y, rm, rv, sm, si = run_forward_train(x, np.full(1, 2, np.float32), np.full(1, 0.5, np.float32),
                                          np.zeros(1, np.float32), np.ones(1, np.float32), 1e-5, 1.0, "spatial")
    xd = x.astype(np.float64)
    mean, var = xd.mean(), xd.var()
    np.testing.assert_allclose(sm, [mean], atol=1e-6)
    np.testing.assert_allclose(rv, [var * xd.size / (xd.size - 1)], rtol=1e-5)
    np.testing.assert_allclose(y, 2 * (xd - mean) / np.sqrt(var + 1e-5) + 0.5, atol=1e-5)


def test_streams_have_their_own_workspace(rng):
    """Split launches on two non-blocking streams (each with its own counters and partials) and on
    `with cybn.stream(s)`: the same results as the reference."""
    import cybn
    from cybn.stream import Stream
    x = rng.standard_normal((3, 2, 40)).astype(np.float32)
    scale, bias, rm, rv = params(rng, 2)
    want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.5)
    s1, s2 = Stream(), Stream()
    with batchnorm.plan_override(split=4):
        outs = [batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, 0.5, stream=s)
                for s in (s1, s2)]
        with cybn.stream(s2):
            outs.append(batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5, 0.5))
    s1.synchronize()
    s2.synchronize()
    for y, sm, si in outs:
        np.testing.assert_allclose(y.get(), want[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sm.get(), want[3], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode,small,big", [
    ("spatial", (4, 1, 16), (4, 600, 4)),           # 75 grid columns: counters past byte 256
    ("per_activation", (6, 1), (4, 65 * 32)),       # 65 grid columns
])
def test_workspace_reused_by_a_shape_with_more_columns(rng, mode, small, big):
    """A split call leaves its partials right after its (zeroed) counters; a later split call on the
    same stream's workspace whose counters reach over them must not count from them."""
    from cybn.stream import Stream
    s = Stream()  # a fresh workspace: the small call's partials are where the big call's counters go
    with batchnorm.plan_override(split=2):
        for shape in (small, big):
            _, _, K, _ = ref.layout(shape, mode)
            x = rng.standard_normal(shape).astype(np.float32)
            dy = rng.standard_normal(shape).astype(np.float32)
            scale, bias, rm, rv = params(rng, K)
            g_rm, g_rv = gpu(rm), gpu(rv)
            y, sm, si = batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), g_rm, g_rv, 1e-5, 0.5,
                                                mode=mode, stream=s)
            dx, dscale, dbias = batchnorm.backward(gpu(x), gpu(dy), gpu(scale), sm, si, mode=mode, stream=s)
            s.synchronize()
            wy, wrm, wrv, wmean, winvstd = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.5, mode)
            np.testing.assert_allclose(y.get(), wy, **TOL[np.dtype(np.float32)])
            np.testing.assert_allclose(sm.get(), wmean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(g_rv.get(), wrv, rtol=1e-4, atol=1e-5)
            wdx, wdscale, wdbias = ref.backward(x, dy, scale, wmean, winvstd, mode)
            np.testing.assert_allclose(dbias.get(), wdbias, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(dscale.get(), wdscale, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(dx.get(), wdx, rtol=1e-4, atol=1e-4)


def test_threads_on_one_stream_have_their_own_workspace(rng):
    """Two threads on the same (legacy default) stream: each split call enqueues two launches that share
    its workspace's partials and (shift, mean), so a shared workspace let the launches of two calls
    interleave (A1 B1 A2 B2) and A normalised with B's mean. Each thread gets its own workspace (one more
    device allocation in the second thread), and both threads' results stay right under contention."""
    import threading
    shape = (4, 3, 64)
    xs = [(rng.standard_normal(shape) * (1 + i) + 10 * i).astype(np.float32) for i in range(2)]
    wants = [ref.forward_train(x, None, None, np.zeros(3), np.ones(3), 1e-5, 0.5)[0] for x in xs]
    batchnorm.prepare(np.float32)

    def call(i):
        x, y = gpu(xs[i]), gpuarray.empty(shape, np.float32)
        sm, si, rm = (gpuarray.empty((3,), np.float32) for _ in range(3))
        rv = gpu(np.ones(3, np.float32))
        rm.fill(0)
        before = softgpu.live_allocations()[0]
        batchnorm.forward_train(x, None, None, rm, rv, 1e-5, 0.5, out=y, save_mean=sm, save_invstd=si)
        return softgpu.live_allocations()[0] - before, y.get()

    errors, new_buffers = [[], []], []
    with batchnorm.plan_override(split=4):
        call(0)  # this thread's workspace exists from here on
        worker = threading.Thread(target=lambda: new_buffers.append(call(1)[0]))
        worker.start()
        worker.join()

        def loop(i):
            for _ in range(25):
                errors[i].append(float(np.abs(call(i)[1] - wants[i]).max()))
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert new_buffers == [1]
    assert max(errors[0] + errors[1]) < 1e-4
