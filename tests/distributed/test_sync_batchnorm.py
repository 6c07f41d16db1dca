"""SyncBatchNorm (cybn.batchnorm.forward_train / backward with comm=) under mpiexec: 2, 3 and 4 ranks with
uneven batches (a rank of 1 sample; from 3 ranks one of 0), several training steps, float32 and float16,
against float64 numpy BatchNorm over the concatenated batch (y, running statistics, dx, dscale, dbias)."""
import numpy as np
import pytest

from sync_bn_cases import COUNTS, DTYPES, STEPS, params, rank_data, reference

# Tolerances relative to each quantity's largest magnitude: one rounding of the output dtype plus the
# float32 statistics (float16: 2^-11 per stored element of x, dy, y and dx).
TOL = {"float32": 2e-5, "float16": 4e-3}


def _expected(size, dtype):
    scale, bias, rm, rv = (a.astype(np.float64) for a in params())
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
            _close(got["y"], y[lo:hi], tol, f"y, {where}")
            _close(got["dx"], dx[lo:hi], tol, f"dx, {where}")
            _close(got["rm"], rm, 1e-6, f"running_mean, {where}")
            _close(got["rv"], rv, 1e-6, f"running_var, {where}")
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
