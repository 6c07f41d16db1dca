"""Channels-last SyncBatchNorm (forward_train / backward with comm= and layout="NHWC") under mpiexec: 2 and 3
ranks with uneven batches (a rank of 1 sample; with 3 ranks one of 0), C = 65, a fused plan, a larger spatial
size split over the rows, relu with a residual (dz), float32 and float16, several steps, against float64
numpy BatchNorm over the concatenated batch (sync_nhwc_cases.py), computed here from the same seeds."""
import numpy as np
import pytest

from mpi_launch import run_ranks
from sync_nhwc_cases import COUNTS, DTYPES, SCENARIOS, STEPS, params, rank_data, reference
from test_sync_batchnorm import _close  # relative to the largest magnitude, as the NCHW SyncBatchNorm test

# Relative to each quantity's largest magnitude: one rounding of the output dtype plus float32 statistics
# (float16: 2^-11 per stored element of x, dy, z, y and dx), as test_sync_batchnorm.py.
TOL = {"float32": 2e-5, "float16": 4e-3}


@pytest.fixture(scope="module", params=sorted(COUNTS))
def nhwc_ranks(request, tmp_path_factory):
    pytest.importorskip("mpi4py", reason="the test extra installs mpi4py and mpich: pip install -e '.[test]'")
    size = request.param
    out = tmp_path_factory.mktemp(f"mpi_nhwc{size}")
    results = run_ranks(size, "mpi_worker_nhwc.py", out, timeout=300)
    return size, results


def _expected(size, dtype, scenario):
    _, _, act, _ = SCENARIOS[scenario]
    scale, bias, rm, rv = (a.astype(np.float64) for a in params())
    out = []
    for step in range(STEPS):
        parts = [rank_data(size, r, dtype, scenario, step) for r in range(size)]
        x, dy = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        z = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        y, rm, rv, dx, dz, ds, db = reference(x, dy, z, act, scale, bias, rm, rv)
        out.append(dict(y=y, rm=rm, rv=rv, dx=dx, dz=dz, ds=ds, db=db))
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_sync_matches_the_concatenated_batch(nhwc_ranks, dtype, scenario):
    size, results = nhwc_ranks
    want = _expected(size, dtype, scenario)
    residual = SCENARIOS[scenario][3]
    bounds = np.cumsum((0,) + COUNTS[size])
    for res in results:
        r = res["rank"]
        lo, hi = bounds[r], bounds[r + 1]
        for step, (got, w) in enumerate(zip(res[f"{scenario}/{dtype}"], want)):
            where = f"rank {r} step {step} {dtype} {scenario}"
            assert got["y"].dtype == np.dtype(dtype) and got["dx"].dtype == np.dtype(dtype), where
            names = ("y", "dx") + (("dz",) if residual else ())
            for key in names:
                _close(got[key], w[key][lo:hi], TOL[dtype], f"{key}, {where}")
            _close(got["rm"], w["rm"], 1e-6, f"running_mean, {where}")
            _close(got["rv"], w["rv"], 1e-6, f"running_var, {where}")
            _close(got["ds"], w["ds"], TOL[dtype], f"dscale, {where}")
            _close(got["db"], w["db"], TOL[dtype], f"dbias, {where}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_sync_is_deterministic_and_identical_on_every_rank(nhwc_ranks, dtype):
    _, results = nhwc_ranks
    for scenario in SCENARIOS:
        first = results[0][f"{scenario}/{dtype}"]
        for res in results:
            for run in (f"{scenario}/{dtype}", f"{scenario}/{dtype}/again"):
                for a, b in zip(res[run], first):
                    for key in ("rm", "rv", "ds", "db"):  # global quantities: bitwise the same everywhere
                        assert a[key].tobytes() == b[key].tobytes(), (res["rank"], run, key)
            for a, b in zip(res[f"{scenario}/{dtype}"], res[f"{scenario}/{dtype}/again"]):
                assert a["y"].tobytes() == b["y"].tobytes() and a["dx"].tobytes() == b["dx"].tobytes(), res["rank"]
