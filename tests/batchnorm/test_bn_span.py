"""The SPAN path (issue 13, item 3): spatial sizes whose rows are not whole 16-byte units (7x7, fp16 14x14,
odd S) walk 16-byte units of each CTA's span of channels x S elements; a channel owns the units that start
in its elements and hands the next channel's share of its rows' last unit to that channel's reduction.
Every kernel (forward-train fused and split, normalise, backward fused and split, dx, frozen backward,
the fused epilogue) against the float64 reference, under two randomised schedules with bit-identical
results; its plans; and its traffic: each element read once, nothing more than the element path."""
import numpy as np
import pytest

from bn_epilogue_cases import BF16, step
from bn_helpers import TOL, batch_stats, exact_mean, gpu, params
from cybn import batchnorm, gpuarray, softgpu
from cybn.testing import reference as ref
from cybn.testing.traffic import measure_call

# (shape, dtype): 7x7 fp32 (a channel's rows 196 B: units shared every 4 channels), 7x7 fp16 (8), fp16 14x14
# (2), an odd 5x5 fp32 with C a multiple of 4, 3x3 double (q = 2), bf16 7x7.
CASES = [((4, 8, 7, 7), np.float32), ((3, 16, 7, 7), np.float16), ((4, 6, 14, 14), np.float16),
         ((2, 12, 5, 5), np.float32), ((3, 4, 3, 3), np.float64)]
if BF16 is not None:
    CASES.append(((2, 8, 7, 7), BF16))
# plan_override arguments: the default (fused, cached), uncached replay, a split into 3 CTAs per channel,
# and 64 threads per channel (several units per thread, rows' last units spread over threads).
PLANS = [dict(), dict(cache=0), dict(split=3), dict(group=64, cache=1)]


def _id(case):
    shape, dtype = case
    return f"{'x'.join(map(str, shape))}-{np.dtype(dtype).name}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_span_plans(case):
    shape, dtype = case
    V = 16 // np.dtype(dtype).itemsize
    S = int(np.prod(shape[2:]))
    for kernel in ("forward_train", "backward", "forward_infer", "backward_dx"):
        p = batchnorm.plan(shape, dtype, kernel=kernel)
        assert p["vec"] == 3, (kernel, p)
        assert (p["block"][1] * S) % V == 0, p  # each CTA's span is whole 16-byte units
    assert batchnorm.plan(shape, dtype, aligned=False)["vec"] == 0


def test_span_not_taken():
    # C * S not whole units (row starts misaligned), S below a unit, S a multiple of V (plain VEC), N == 1 (ROWVEC)
    assert batchnorm.plan((2, 3, 7, 7), np.float32)["vec"] == 0
    assert batchnorm.plan((2, 8, 1, 3), np.float32)["vec"] == 0
    assert batchnorm.plan((2, 8, 4, 4), np.float32)["vec"] == 1
    assert batchnorm.plan((1, 8, 7, 7), np.float32)["vec"] == 2
    # the span quantum: 256 threads of 32-thread groups hold 8 channels; one 256-thread group gets 4 (fp32 7x7)
    big = batchnorm.plan((256, 512, 7, 7), np.float32, kernel="forward_infer")
    assert big["vec"] == 3 and big["block"][1] % 4 == 0 and big["block"][0] * big["block"][1] <= 1024
    assert batchnorm.plan((256, 512, 7, 7), np.float16, kernel="forward_infer")["block"][1] % 8 == 0
    assert batchnorm.plan((256, 256, 14, 14), np.float16, kernel="forward_infer")["block"][1] % 2 == 0


# The plan's latency-bandwidth estimate (cybn/batchnorm/plan.pxi), restated from its documented maths.
INFLIGHT_NEED = 32768  # bytes in flight per SM that keep HBM busy
LAUNCH_BYTES = 4 << 20  # a launch's fixed cost, in bytes at full bandwidth
STREAM_IN_FLIGHT = 4  # loads per array an element-wise launch keeps in flight (a reduction: 1)


def _reread_bytes(shape, dtype, p):
    """Bytes per channel and array a fused reduction plan reads beyond one pass (from the maths of the walk):
    its units past the cache."""
    n, s, e = shape[0], shape[2] * shape[3], np.dtype(dtype).itemsize
    units, unit = (-(-n * s // (16 // e)), 16) if p["vec"] == 3 else (n * s, e)
    return max(0, -(-units // p["block"][0]) - p["cache_units"]) * p["block"][0] * unit


def _fraction(p, per_thread):
    """Little's law: resident threads per SM (occupancy, or the grid's share of a wave) times the bytes each
    has in flight, over the need; at most 1."""
    ctas = p["grid"][0] * p["grid"][1]
    resident = min(max(p["ctas_per_sm"], 1), ctas / p["sm_count"])
    return min(1.0, resident * p["block"][0] * p["block"][1] * per_thread / INFLIGHT_NEED)


def _modelled_cost(shape, dtype, op, p):
    """Bytes over the bandwidth fraction each launch sustains, plus a fixed cost per launch: fused, x (and dy)
    once plus the re-read past the cache, and y (dx) written; split, the reduction's pass and the
    element-wise second launch's (its own plan: p["second"]) pass and write."""
    e = np.dtype(dtype).itemsize
    arrays = 2 if op == "backward" else 1
    unit = 16 if p["vec"] else e
    one = float(np.prod(shape)) * e
    reduce = _fraction(p, arrays * unit)
    if p["split"] > 1:
        q = p["second"]
        stream = _fraction(q, arrays * (16 if q["vec"] else e) * STREAM_IN_FLIGHT)
        return arrays * one / reduce + (arrays + 1) * one / stream + 2 * LAUNCH_BYTES
    reread = _reread_bytes(shape, dtype, p) * shape[1]
    return (arrays * (one + reread) + one) / reduce + LAUNCH_BYTES


def test_span_reduction_takes_the_faster_of_span_and_element_plans():
    """A SPAN CTA holds several channels (its cache holds less of each, its grid has fewer columns) but keeps
    16-byte loads in flight, the element path one scalar: a SPAN plan is kept only where the estimate says it is
    no slower than the element plan, else the element plan is taken unchanged. The device (SM count,
    occupancy, opt-in shared memory) is the software GPU's (tests/softgpu/test_profiles_plans.py: a100, h100)."""
    chosen = set()
    shapes = [(n, c, h, h) for n in (2, 32, 256) for c, h in ((64, 7), (512, 7), (2048, 7), (256, 14), (1024, 14))]
    shapes += [(64, 8, 7, 7), (64, 8, 9, 9)]  # few channels: SPAN's CTAs would cover fewer SMs
    for shape in shapes:
        for dtype in (np.float32, np.float16):
            e = np.dtype(dtype).itemsize
            if (shape[2] * shape[3] * e) % 16 == 0 or (shape[1] * shape[2] * shape[3] * e) % 16:
                continue  # whole 16-byte rows (the plain vector path), or channels not ending on a unit
            for op in ("forward_train", "backward"):
                p = batchnorm.plan(shape, dtype, kernel=op)
                alt = batchnorm.plan(shape, dtype, kernel=op, span=False)
                assert alt["vec"] == 0, alt
                assert p["vec"] in (0, 3), p
                chosen.add(p["vec"])
                if p["vec"] == 3:
                    assert _modelled_cost(shape, dtype, op, p) <= _modelled_cost(shape, dtype, op, alt), (shape, p, alt)
                else:
                    assert p == alt, (shape, dtype, op, p, alt)
    assert chosen == {0, 3}, chosen


def test_span_traffic_below_the_uncached_walk():
    """The default (cached) plan of a small SPAN shape moves fewer bytes, by the software GPU's counters,
    than the same walk with its replay cache turned off."""
    for op in ("forward_train", "backward"):
        per_element, _ = measure_call((32, 64, 7, 7), np.float32, op=op)
        with batchnorm.plan_override(cache=0):  # the span path, uncached, for contrast: it must read more
            uncached, _ = measure_call((32, 64, 7, 7), np.float32, op=op)
        assert per_element < uncached


def _plain_run(x, dy, scale, bias, rm, rv, in_place=False):
    out = {}
    gx = gpu(x)
    y, sm, si = batchnorm.forward_train(gx, gpu(scale), gpu(bias), grm := gpu(rm), grv := gpu(rv), 1e-5, 0.1,
                                        out=gx if in_place else None)
    out.update(y=y.get(), sm=sm.get(), si=si.get(), rm=grm.get(), rv=grv.get())
    gx = gpu(x)
    out["infer"] = batchnorm.forward_infer(gx, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5,
                                           out=gx if in_place else None).get()
    mean, invstd = batch_stats(x, "spatial", 1e-5) if x.dtype != np.float64 else (None, None)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    if mean is None:
        _, _, _, mean, invstd = ref.forward_train(x, None, None, 0.0, 0.0, 1e-5, 0.0)
    gdy = gpu(dy)
    dx, ds, db = batchnorm.backward(gpu(x), gdy, gpu(scale.astype(pdt)), gpu(mean.astype(pdt)),
                                    gpu(invstd.astype(pdt)), out=gdy if in_place else None)
    out.update(dx=dx.get(), ds=ds.get(), db=db.get(), invstd=invstd)
    return out


@pytest.mark.parametrize("case", [c for c in CASES if np.dtype(c[1]).itemsize == 4 or c[1] == np.float16], ids=_id)
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "inplace"])
def test_span_against_reference_two_schedules(rng, case, plan, in_place):
    shape, dtype = case
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = params(rng, shape[1])
    runs = []
    for seed in (1, 2):
        with softgpu.seed(seed), batchnorm.plan_override(**plan):
            assert batchnorm.plan(shape, dtype)["vec"] == 3
            runs.append(_plain_run(x, dy, scale, bias, rm, rv, in_place))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
    got, tol = runs[0], TOL[np.dtype(dtype)]
    want = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
    np.testing.assert_allclose(got["y"].astype(np.float64), want[0], **tol, err_msg="y")
    for k, w in zip(("rm", "rv", "sm", "si"), want[1:]):
        np.testing.assert_allclose(got[k], w, rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(got["infer"].astype(np.float64), ref.forward_infer(x, scale, bias, rm, rv, 1e-5),
                               **tol, err_msg="infer")
    wdx, wds, wdb = ref.backward(x, dy, scale, exact_mean(x), got["invstd"])
    np.testing.assert_allclose(got["dx"].astype(np.float64), wdx, **tol, err_msg="dx")
    M = x.size // shape[1]
    gtol = dict(rtol=1e-4, atol=1e-4 * (1 if np.dtype(dtype).itemsize == 4 else np.sqrt(M)))
    np.testing.assert_allclose(got["ds"], wds, **gtol, err_msg="dscale")
    np.testing.assert_allclose(got["db"], wdb, **gtol, err_msg="dbias")


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("plan", [dict(), dict(split=2), dict(cache=0)], ids=["fused", "split", "uncached"])
@pytest.mark.parametrize("act,residual", [(None, False), ("relu", True), ("swish", False), ("tanh", True)])
def test_span_all_calls_with_epilogue(rng, case, plan, act, residual):
    """forward_train, backward (from y or recomputed v), forward_infer and backward_infer (frozen
    statistics: dx in the reduction pass), every output against bn_ref_epilogue's float64, two schedules."""
    shape, dtype = case
    for seed in (1, 2):
        with softgpu.seed(seed), batchnorm.plan_override(**plan):
            assert batchnorm.plan(shape, dtype, epilogue=True)["vec"] == 3
            step(np.random.default_rng(seed), shape, dtype, act, residual, offset=4.0)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] in (np.float32, np.float16)], ids=_id)
@pytest.mark.parametrize("op", ["forward_train", "backward", "forward_infer"])
def test_span_traffic_reads_each_element_once(case, op):
    """The units a channel shares with the next are read once: bytes per element at or below the
    element path's (every element read and written once) plus the parameters."""
    shape, dtype = case
    z = np.dtype(dtype).itemsize
    per_element, launches = measure_call(shape, dtype, op=op)
    streams = {"forward_train": 2, "backward": 3, "forward_infer": 2}[op]
    split = batchnorm.plan(shape, dtype, kernel=op)["split"]
    assert split == 1 and launches == 1
    assert per_element <= streams * z + 64 * shape[1] / np.prod(shape), per_element


def test_span_fewer_instructions_than_elements(rng):
    """The same normalisation on a misaligned view (element path) executes more thread instructions than
    on the aligned tensor (16-byte units): the units are really loaded whole."""
    shape, dtype = (4, 8, 7, 7), np.float32
    n = int(np.prod(shape))
    host = rng.standard_normal(n + 1).astype(dtype)
    scale, bias, rm, rv = params(rng, shape[1])
    batchnorm.prepare(dtype, "spatial")
    counts, ys = [], []
    for lo in (0, 1):
        buf = gpuarray.to_gpu(host)
        x = buf[lo:lo + n].reshape(shape)
        with softgpu.measure() as m:
            y = batchnorm.forward_infer(x, gpu(scale), gpu(bias), gpu(rm), gpu(rv), 1e-5)
        counts.append(m.instructions)
        ys.append(y.get())
        np.testing.assert_allclose(ys[-1], ref.forward_infer(host[lo:lo + n].reshape(shape), scale, bias, rm, rv,
                                                             1e-5), **TOL[np.dtype(dtype)])
    assert counts[0] * 1.5 < counts[1], counts
