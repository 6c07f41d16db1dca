"""The cooperative single launch of the NCHW spatial training forward (cybn/batchnorm/coop.pxi): where the split
plan would take two launches and every CTA of its grid is resident, one cuLaunchCooperativeKernel of the split's
first kernel does the statistics, the grid-wide combination (fixed order), the normalisation and the epilogue. Against the float64
reference under memcheck, racecheck and initcheck and two schedule seeds, every dtype, with and without the
epilogue, in place, with its split fallback (forced, and where the grid cannot be co-resident)."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray, softgpu
from cybn.testing import bn_ref_epilogue as R

from bn_epilogue_cases import ALPHA, BF16, _close, step

SEEDS = (3, 11)
DTYPES = [np.float32, np.float16, np.float64] + ([BF16] if BF16 is not None else [])


def kernels_of(m):
    """(kernel, CTAs per channel) of each launch: a split grid (y > 1) alone is the cooperative launch."""
    return [(ln["kernel"].split("I")[0], ln["grid"][1]) for ln in m.launches]


def cooperative(names, split=3):
    return len(names) == 1 and "bn_fwd_train_spatial" in names[0][0] and names[0][1] == split


def forward(x, dtype, act=None, residual=False, in_place=False, split=3, group=0, coop=True):
    """One forward_train of host x; returns (outputs on the host, the reference, the launches' kernel names)."""
    rng = np.random.default_rng(7)
    dtype = np.dtype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    K = x.shape[1]
    alpha = ALPHA.get(act, 0.0)
    scale, bias = rng.uniform(0.5, 1.5, K).astype(pdt), rng.standard_normal(K).astype(pdt)
    rm, rv = rng.standard_normal(K).astype(pdt), rng.uniform(0.5, 2.0, K).astype(pdt)
    z = rng.standard_normal(x.shape).astype(dtype) if residual else None
    g = gpuarray.to_gpu
    gx, grm, grv = g(x), g(rm), g(rv)
    with batchnorm.plan_override(split=split, group=group), batchnorm.coop_override(off=not coop), \
            softgpu.measure() as m:
        y, sm, si = batchnorm.forward_train(gx, g(scale), g(bias), grm, grv, 1e-5, 0.1, out=gx if in_place else None,
                                            residual=None if z is None else g(z), activation=act,
                                            activation_alpha=alpha)
    want = R.forward_train(x.astype(np.float64), scale, bias, rm, rv, 1e-5, 0.1, act, alpha,
                           None if z is None else z.astype(np.float64), "spatial")
    for name, got, ref in zip(("y", "running_mean", "running_var", "save_mean", "save_invstd"),
                              (y, grm, grv, sm, si), want[:5]):
        _close(name, got, ref, dtype if name == "y" else pdt)
    if in_place:
        assert y.ptr == gx.ptr
    return y.get(), kernels_of(m), m.counters["memset"]["calls"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cooperative_forward_is_one_launch(dtype, seed):
    """The default software GPU profile (4 SMs, one float64 CTA each) holds every CTA of this grid at once."""
    x = (np.random.default_rng(seed).standard_normal((2, 1, 1024)) * 2 + 3).astype(dtype)
    with softgpu.seed(seed):
        y, names, _ = forward(x, dtype)
        y2, names2, memsets = forward(x, dtype)
    assert cooperative(names)
    assert names2 == names and memsets == 0  # the barrier counter re-armed itself
    np.testing.assert_array_equal(y2, y)  # deterministic: a fixed combination order


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("act,residual", [("relu", True), ("swish", False), ("elu", True)])
def test_cooperative_forward_with_the_epilogue(act, residual, seed):
    x = (np.random.default_rng(seed).standard_normal((3, 2, 500)) * 1.5).astype(np.float32)  # scalar path
    with softgpu.seed(seed):
        _, names, _ = forward(x, np.float32, act=act, residual=residual)
    assert cooperative(names)


def test_cooperative_forward_in_place():
    x = np.random.default_rng(5).standard_normal((2, 2, 2048)).astype(np.float32)
    _, names, _ = forward(x, np.float32, act="relu", residual=True, in_place=True)
    assert cooperative(names)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: np.dtype(d).name)
def test_forced_fallback_matches_the_cooperative_launch(dtype):
    x = (np.random.default_rng(2).standard_normal((2, 2, 1024)) + 1).astype(dtype)
    y, names, _ = forward(x, dtype)
    y_split, split_names, _ = forward(x, dtype, coop=False)
    assert cooperative(names) and len(split_names) == 2 and "bn_normalize" in split_names[1][0]
    rtol, atol = R.tolerances(dtype)
    np.testing.assert_allclose(y_split.astype(np.float64), y.astype(np.float64), rtol=rtol, atol=atol)


def test_a_grid_that_cannot_be_resident_keeps_the_split_plan():
    """More CTAs than the device holds at once: a cooperative launch would be refused (or deadlock), so the
    plan is the split one, 2 launches."""
    shape = (1, 1, 65536)
    with batchnorm.plan_override(split=4096, group=32), batchnorm.coop_override(off=False):
        p = batchnorm.plan(shape, np.float32, kernel="forward_train")
        assert p["grid"][1] == 4096 and p["grid"][1] > p["ctas_per_sm"] * p["sm_count"]
        assert p["cooperative"] is None
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    _, names, _ = forward(x, np.float32, split=4096, group=32)
    assert len(names) == 2


def test_a_mostly_uncached_share_keeps_the_split_plan():
    """Where the cache holds little of each thread's share the split's streaming second launch wins in the model,
    so the plan stays split even though the grid would be resident."""
    with batchnorm.plan_override(split=2), batchnorm.coop_override(off=False):
        p = batchnorm.plan((2, 1, 65536), np.float32, kernel="forward_train")
    assert p["split"] == 2 and p["grid"][1] <= p["ctas_per_sm"] * p["sm_count"]
    assert p["cooperative"] is None


def test_plan_reports_the_cooperative_launch():
    with batchnorm.plan_override(split=3):  # a forced split keeps its two launches unless told otherwise
        assert batchnorm.plan((2, 2, 1024), np.float32, kernel="forward_train")["cooperative"] is None
    with batchnorm.plan_override(split=3), batchnorm.coop_override(off=False):
        p = batchnorm.plan((2, 2, 1024), np.float32, kernel="forward_train")
        assert p["cooperative"] is not None and p["cooperative"]["grid"] == p["grid"]
        assert p["cooperative"]["cache_units"] > 0  # each CTA's share of x replays from shared memory
        with batchnorm.coop_override():
            assert batchnorm.plan((2, 2, 1024), np.float32, kernel="forward_train")["cooperative"] is None
        assert "cooperative" not in batchnorm.plan((2, 2, 1024), np.float32, kernel="backward")
        assert batchnorm.plan((2, 1024, 5), np.float32, kernel="forward_train", layout="NHWC")["cooperative"] is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_training_step_through_the_cooperative_forward(dtype, rng):
    """The whole step (forward_train cooperative, backward from its saved statistics and y, inference) with the
    epilogue, against the float64 reference."""
    with batchnorm.plan_override(split=3), batchnorm.coop_override(off=False):
        step(rng, (2, 1, 640), dtype, "leaky_relu", True)
