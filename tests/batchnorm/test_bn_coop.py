"""The cooperative single launch of the backward (BN_COOP, cybn/batchnorm/plan.pxi's _coop_candidate): a split
NCHW backward whose grid is co-resident runs as one cooperative launch; the CTAs of a column meet at a barrier on
its counter, each combines the column's partials in the fixed order and writes dx for its own slice, x and dy
replayed from its shared-memory cache. Checked against the float64 reference (memcheck, racecheck and initcheck
on) under two schedule seeds: the 16-byte, element and SPAN walks, fp32 and fp16, the fused epilogue; one launch
and no memset on a kept workspace; its gradients bit for bit the split's (the same combination); the barrier
re-arms the counters for the split calls after it; and the fallbacks: a grid larger than one wave, the frozen
backward, the forward-train and coop=False stay plain splits."""
import numpy as np
import pytest

from cybn import batchnorm, softgpu
from cybn.testing import reference as ref

from bn_epilogue_cases import step
from bn_helpers import STAT_TOL, TOL, gpu, params

SEEDS = (5, 13)
# (shape, split): 16-byte units; element loads (S odd); SPAN (7x7 fp32: S % 4 != 0, C * S whole units)
CASES = [((4, 5, 16, 16), 4), ((3, 2, 5, 7), 2), ((2, 4, 7, 7), 3)]


def run(x, dy, split, coop):
    """forward_train then backward of x under plan_override(split, coop): the backward's plan, the outputs
    (host) and each call's (launches, memsets)."""
    rng = np.random.default_rng(x.size + split)
    K = x.shape[1]
    scale, bias, rm, rv = params(rng, K)
    g_rm, g_rv, gx = gpu(rm), gpu(rv), gpu(x)
    counts = []
    with batchnorm.plan_override(split=split, coop=coop):
        assert not batchnorm.plan(x.shape, x.dtype, kernel="forward_train")["coop"]  # two launches (plan.pxi)
        plan = batchnorm.plan(x.shape, x.dtype, kernel="backward")
        with softgpu.measure() as m:
            y, sm, si = batchnorm.forward_train(gx, gpu(scale), gpu(bias), g_rm, g_rv, 1e-5, 0.1)
        counts.append((m.launches_count, m.counters["memset"]["calls"]))
        with softgpu.measure() as m:
            dx, ds, db = batchnorm.backward(gpu(x), gpu(dy), gpu(scale), sm, si)
        counts.append((m.launches_count, m.counters["memset"]["calls"]))
    out = dict(y=y.get(), mean=sm.get(), invstd=si.get(), rm=g_rm.get(), rv=g_rv.get(), dx=dx.get(), ds=ds.get(),
               db=db.get(), scale=scale, bias=bias, rm0=rm, rv0=rv)
    return plan, counts, out


def check(x, dy, o):
    wy, wrm, wrv, wmean, winvstd = ref.forward_train(x, o["scale"], o["bias"], o["rm0"], o["rv0"], 1e-5, 0.1,
                                                     "spatial")
    np.testing.assert_allclose(o["y"].astype(np.float64), wy, **TOL[x.dtype])
    for k, w in (("mean", wmean), ("invstd", winvstd), ("rm", wrm), ("rv", wrv)):
        np.testing.assert_allclose(o[k], w, **STAT_TOL, err_msg=k)
    wdx, wds, wdb = ref.backward(x, dy, o["scale"], wmean, winvstd, "spatial")
    tol = dict(rtol=1e-3, atol=1e-3) if x.dtype == np.float32 else dict(rtol=1e-2, atol=1e-2)
    for k, w in (("dx", wdx), ("ds", wds), ("db", wdb)):
        np.testing.assert_allclose(o[k].astype(np.float64), w, **tol, err_msg=k)


def data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal(shape) * 2 + 3.0).astype(dtype), rng.standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,split", CASES, ids=["vec", "elements", "span"])
def test_cooperative_call_matches_the_reference_in_one_launch(fresh, shape, split, dtype, seed):
    x, dy = data(shape, dtype, seed)
    with softgpu.seed(seed):
        run(x, dy, split, False)  # the workspace: allocated and armed by a plain split call first
        plan, counts, o = run(x, dy, split, True)
    assert plan["coop"] and plan["split"] == split and "second" not in plan
    assert plan["vec"] == {(4, 5, 16, 16): 1, (3, 2, 5, 7): 0, (2, 4, 7, 7): 3 if dtype == np.float32 else 0}[shape]
    assert counts == [(2, 0), (1, 0)]
    check(x, dy, o)


@pytest.mark.parametrize("seed", SEEDS)
def test_cooperative_statistics_are_the_splits_bit_for_bit(fresh, seed):
    """Every CTA merges the same partials in the same order as the split's last CTA: the same bits (dx is
    written from the same constants by another kernel, so it is checked against the reference)."""
    x, dy = data((4, 5, 16, 16), np.float32, seed)
    with softgpu.seed(seed):
        _, _, split = run(x, dy, 4, False)
        _, _, coop = run(x, dy, 4, True)
    for k in ("mean", "invstd", "rm", "rv", "ds", "db"):
        np.testing.assert_array_equal(coop[k], split[k], err_msg=k)
    check(x, dy, coop)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_barrier_re_arms_the_counters(fresh, seed):
    """A cooperative call leaves its counters at 0: the split call after it needs no memset and is right."""
    x, dy = data((4, 5, 16, 16), np.float32, seed)
    with softgpu.seed(seed):
        _, first, _ = run(x, dy, 4, True)
        _, after, o = run(x, dy, 4, False)
    assert first == [(2, 1), (1, 0)]  # a fresh workspace: one memset before the first call
    assert after == [(2, 0), (2, 0)]
    check(x, dy, o)


@pytest.mark.parametrize("act,residual", [("relu", True), ("swish", False)])
def test_cooperative_epilogue(fresh, rng, act, residual):
    """The fused activation / residual through the cooperative backward (dx and dz); the frozen backward
    (backward_infer) in the same step drops the barrier and stays right."""
    with batchnorm.plan_override(split=4, coop=True):
        assert batchnorm.plan((4, 5, 16, 16), np.float32, kernel="backward", epilogue=True)["coop"]
        step(rng, (4, 5, 16, 16), np.float32, act, residual)


def test_a_grid_beyond_one_wave_is_a_plain_split(fresh):
    """coop=True cannot make a grid co-resident: more CTAs than resident slots stay a two-launch split."""
    x, dy = data((2, 6, 64, 64), np.float32, 2)
    probe = batchnorm.plan(x.shape, x.dtype, kernel="backward")
    split = probe["ctas_per_sm"] * probe["sm_count"] // 6 + 1  # 6 columns x split > one wave
    plan, counts, o = run(x, dy, split, True)
    assert not plan["coop"] and "second" in plan
    assert [c[0] for c in counts] == [2, 2]
    check(x, dy, o)


def test_frozen_backward_drops_the_barrier(fresh):
    """backward_infer (frozen statistics) writes dx in its one pass: a plain split launch, dx right."""
    x, dy = data((4, 5, 16, 16), np.float32, 4)
    rng = np.random.default_rng(0)
    scale, bias, rm, rv = params(rng, 5)
    with batchnorm.plan_override(split=4, coop=True):
        with softgpu.measure() as m:
            dx, ds, db = batchnorm.backward_infer(gpu(x), gpu(dy), gpu(scale), gpu(rm), gpu(rv), 1e-5)
    assert m.launches_count == 1
    invstd = 1 / np.sqrt(rv.astype(np.float64) + 1e-5)
    want = dy.astype(np.float64) * (scale * invstd)[None, :, None, None]
    np.testing.assert_allclose(dx.get().astype(np.float64), want, rtol=1e-5, atol=1e-5)


def test_coop_false_and_forced_splits(fresh):
    """coop=False never plans one, nor does a forced split without coop=True; coop takes only None or a bool."""
    with batchnorm.plan_override(split=4, coop=False):
        assert not batchnorm.plan((4, 5, 16, 16), np.float32, kernel="backward")["coop"]
    with batchnorm.plan_override(split=4):  # a forced split alone keeps the tests' two launches
        assert not batchnorm.plan((4, 5, 16, 16), np.float32, kernel="backward")["coop"]
    with batchnorm.plan_override(split=4, coop=True):
        assert batchnorm.plan((4, 5, 16, 16), np.float32, kernel="backward")["coop"]
    with pytest.raises(ValueError, match="coop must be None, True or False"):
        batchnorm.plan_override(coop=1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,dtype", [((256, 1, 49), np.float32), ((128, 1, 196), np.float16)])
def test_the_model_takes_it_where_columns_leave_sms_idle(fresh, shape, dtype, seed):
    """Without an override: a backward of one channel, which the fused plan would run on 1 of the default
    profile's 4 SMs (at most half of them: the rule), is spread over every SM in one cooperative launch (the
    plan's estimate: more bytes in flight for one barrier), and is right."""
    p = batchnorm.plan(shape, dtype, kernel="backward")
    assert p["coop"] and p["grid"][0] * p["split"] >= p["sm_count"] and p["cache_units"] > 0
    x, dy = data(shape, dtype, seed)
    with softgpu.seed(seed):
        plan, counts, o = run(x, dy, 0, None)
    assert plan == p and counts[1][0] == 1
    check(x, dy, o)


def test_a_refused_cooperative_launch_runs_as_the_split(fresh):
    """Where the driver sees fewer co-resident CTAs than the plan (here: the software GPU told that the kernel
    takes 255 registers, after the plan's occupancy facts were read), cuLaunchCooperativeKernel refuses as too
    large and enqueues nothing; the call goes on as the split of the same grid, right, with nothing lost."""
    from cybn.jit import functions
    x, dy = data((4, 5, 16, 16), np.float32, 6)
    with batchnorm.plan_override(split=4, coop=True):
        assert batchnorm.plan(x.shape, x.dtype, kernel="backward")["coop"]  # prepares: occupancy facts read
    i = batchnorm._KERNEL_NAMES.index("bn_bwd")
    f = functions.get_function("batchnorm.cu", "bn_bwd_spatial<float>", batchnorm._SIGNATURES[i],
                               options=batchnorm.compile_options(), name_expressions=batchnorm.kernel_expressions())
    regs = softgpu.function_registers(f.handle)["registers"]
    softgpu.set_function_registers(f.handle, 255)
    try:
        plan, counts, o = run(x, dy, 4, True)
    finally:
        softgpu.set_function_registers(f.handle, regs)
    assert plan["coop"] and counts[1][0] == 2  # the two launches of the split
    check(x, dy, o)
