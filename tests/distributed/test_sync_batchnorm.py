"""SyncBatchNorm (cybn.batchnorm.forward_train / backward with comm=) under mpiexec: 2, 3 and 4 ranks with
uneven batches (a rank of 1 sample; from 3 ranks one of 0), several training steps, float32 and float16,
against float64 numpy BatchNorm over the concatenated batch (y, running statistics, dx, dscale, dbias)."""
import numpy as np
import pytest

from cybn.testing import bn_ref_epilogue as epi
from sync_bn_cases import (COUNTS, DTYPES, EPI_DTYPES, EPILOGUES, EPS, FACTOR, STEPS, epilogue_data, params,
                           rank_data, reference)

# Tolerances relative to each quantity's largest magnitude: one rounding of the output dtype plus the
# float32 statistics (float16: 2^-11 per stored element of x, dy, y and dx; bfloat16: 2^-8); float64 data
# has float64 statistics throughout. RUN_TOL: the running statistics (the parameter type, rounded once).
TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2, "float64": 1e-12}
RUN_TOL = {"float32": 1e-6, "float16": 1e-6, "bfloat16": 1e-6, "float64": 1e-13}


def _expected(size, dtype):
    scale, bias, rm, rv = (a.astype(np.float64) for a in params(dtype))
    out = []
    for step in range(STEPS):
        parts = [rank_data(size, r, dtype, step) for r in range(size)]
        x = np.concatenate([p[0] for p in parts])
        dy = np.concatenate([p[1] for p in parts])
        y, rm, rv, dx, ds, db = reference(x, dy, scale, bias, rm, rv)
        out.append((y, rm, rv, dx, ds, db))
    return out


def _close(got, want, tol, what):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= tol * max(1.0, np.abs(want).max() if want.size else 0.0), (what, err, tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sync_batchnorm_matches_the_concatenated_batch(ranks, dtype):
    size, results = ranks
    want = _expected(size, dtype)
    tol = TOL[dtype]
    bounds = np.cumsum((0,) + COUNTS[size])
    for res in results:
        r = res["rank"]
        lo, hi = bounds[r], bounds[r + 1]
        for step, (got, (y, rm, rv, dx, ds, db)) in enumerate(zip(res[f"sbn/{dtype}"], want)):
            where = f"rank {r} step {step} {dtype}"
            assert got["y"].dtype == np.dtype(dtype) and got["dx"].dtype == np.dtype(dtype), where
            assert got["rm"].dtype == (np.float64 if dtype == "float64" else np.float32), where
            _close(got["y"], y[lo:hi], tol, f"y, {where}")
            _close(got["dx"], dx[lo:hi], tol, f"dx, {where}")
            _close(got["rm"], rm, RUN_TOL[dtype], f"running_mean, {where}")
            _close(got["rv"], rv, RUN_TOL[dtype], f"running_var, {where}")
            # the parameter gradients are sums over the whole batch: the inputs' rounding, summed
            _close(got["ds"], ds, tol, f"dscale, {where}")
            _close(got["db"], db, tol, f"dbias, {where}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sync_batchnorm_is_deterministic_and_identical_on_every_rank(ranks, dtype):
    _, results = ranks
    first = results[0][f"sbn/{dtype}"]
    for res in results:
        for run in ("sbn", "sbn2"):
            for step, (a, b) in enumerate(zip(res[f"{run}/{dtype}"], first)):
                for key in ("rm", "rv", "ds", "db"):  # global quantities: bitwise the same everywhere
                    assert a[key].tobytes() == b[key].tobytes(), (res["rank"], run, step, key)
        for a, b in zip(res[f"sbn/{dtype}"], res[f"sbn2/{dtype}"]):
            assert a["y"].tobytes() == b["y"].tobytes() and a["dx"].tobytes() == b["dx"].tobytes(), res["rank"]


@pytest.mark.parametrize("face", ["puzzlelib", "paddle", "paddle_converted"])
def test_faces_match_the_concatenated_batch(ranks, face):
    size, results = ranks
    parts = [rank_data(size, r, "float32", 0) for r in range(size)]
    x, dy = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    ones, zeros = np.ones(x.shape[1]), np.zeros(x.shape[1])
    if face == "puzzlelib":  # scale 1, bias 0, running 0 / 1, factor 1 at the first step, unbiased
        want = reference(x, dy, ones, zeros, zeros, ones, factor=1.0)
    else:                    # Paddle: momentum 0.5 -> factor 0.5, the biased batch variance
        want = reference(x, dy, ones, zeros, zeros, ones, factor=0.5, unbiased=False)
    y, rm, rv, dx, ds, db = want
    bounds = np.cumsum((0,) + COUNTS[size])
    for res in results:
        r = res["rank"]
        got = res[f"face/{face}"]
        lo, hi = bounds[r], bounds[r + 1]
        _close(got["y"].reshape(-1, *x.shape[1:]), y[lo:hi], TOL["float32"], f"{face} y rank {r}")
        _close(got["dx"].reshape(-1, *x.shape[1:]), dx[lo:hi], TOL["float32"], f"{face} dx rank {r}")
        for key, w in (("rm", rm), ("rv", rv), ("ds", ds), ("db", db)):
            _close(got[key], w, TOL["float32"], f"{face} {key} rank {r}")
        if face == "paddle_converted":
            assert res["face/paddle_converted_type"] == "SyncBatchNorm"


@pytest.mark.parametrize("dtype", EPI_DTYPES)
@pytest.mark.parametrize("case", range(len(EPILOGUES)))
def test_fused_epilogue_matches_the_concatenated_batch(ranks, dtype, case):
    # y = act(bn(x) + z) over the union's statistics; the backward through act (from y, or recomputing the
    # pre-activation from x, the statistics, bias and z), dz = dy * act'(v), against float64 numpy.
    size, results = ranks
    act, with_z, _ = EPILOGUES[case]
    parts = [rank_data(size, r, dtype, 0) for r in range(size)]
    x, dy = (np.concatenate([p[i] for p in parts]).astype(np.float64) for i in (0, 1))
    z = np.concatenate([epilogue_data(size, r, dtype, case) for r in range(size)]).astype(np.float64) if with_z else None
    scale, bias, rm, rv = (a.astype(np.float64) for a in params(dtype))
    y, rm, rv, mean, invstd, v = epi.forward_train(x, scale, bias, rm, rv, EPS, FACTOR, act, 0.0, z)
    dx, dz, ds, db = epi.backward(x, dy, scale, mean, invstd, v, act, 0.0)
    tol = TOL[dtype] * 10  # the activation's derivative at float32/float64 v, one more rounding
    bounds = np.cumsum((0,) + COUNTS[size])
    for res in results:
        r = res["rank"]
        got, lo, hi = res[f"epi/{dtype}/{case}"], bounds[r], bounds[r + 1]
        where = f"{act} residual={with_z} {dtype} rank {r}"
        _close(got["y"], y[lo:hi], tol, f"y, {where}")
        _close(got["dx"], dx[lo:hi], tol, f"dx, {where}")
        if with_z:
            _close(got["dz"], dz[lo:hi], tol, f"dz, {where}")
        else:
            assert "dz" not in got
        for key, want in (("rm", rm), ("rv", rv), ("ds", ds), ("db", db)):
            _close(got[key], want, tol, f"{key}, {where}")


REFUSED = {  # scenario -> (the field the message names on every rank, or None for a rank's own refusal)
    "activation": "activation: rank", "alpha": "activation_alpha: rank", "residual": "residual: rank",
    "dtype": "dtype: rank", "channels": "C: rank", "backward": "activation: rank", "bad_name": None}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_calls_raise_on_every_rank_and_change_nothing(ranks, name):
    # One rank (the one with the fewest samples: 0 from 3 ranks on) differs from the others. The header
    # exchange makes every rank raise, with one message for a mismatch; a rank that refuses its own
    # arguments raises its own error and the others a DistributedError naming it. No running statistic moved.
    size, results = ranks
    zero = COUNTS[size].index(min(COUNTS[size]))
    got = [res[f"refused/{name}"] for res in results]
    assert all(g["unchanged"] for g in got), got
    assert all(g["error"] is not None for g in got), got
    field = REFUSED[name]
    if field is not None:
        assert len({g["error"] for g in got}) == 1, got
        msg = got[0]["error"]
        assert msg.startswith("RankMismatchError: SyncBatchNorm: the ranks disagree"), msg
        assert field in msg and f"rank {zero}=" in msg, msg
    else:
        assert got[zero]["error"].startswith("ValueError: unknown activation 'bogus'"), got[zero]
        for r, g in enumerate(got):
            if r != zero:
                assert g["error"] == (f"DistributedError: SyncBatchNorm: rank(s) {zero} of {size} refused the call's "
                                      f"arguments (the error raised there says why); no rank has changed anything"), g
    for res in results:  # the communicator goes on working after the refused calls
        assert len(res["after_refused"]) == 1
