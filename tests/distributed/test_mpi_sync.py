"""SyncBatchNorm's communication under mpiexec (the mpich wheel of the test extra): 2, 3 and 4 ranks,
one software GPU each, uneven batches with ranks of 0 and 1 samples. One launch per rank count runs
every scenario (mpi_worker.py); these tests check what each rank saw against float64 numpy over the
concatenated batch, which the test builds itself from the same seeds."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dist_cases import CASES, rank_rows

pytest.importorskip("mpi4py", reason="the test extra installs mpi4py and mpich: pip install -e '.[test]'")

HERE = os.path.dirname(os.path.abspath(__file__))

from mpi_launch import mpiexec as _mpiexec  # noqa: E402


def _reference(size, case):
    x = np.concatenate([rank_rows(size, r, case) for r in range(size)])
    return x.shape[0], x.mean(axis=0), x.var(axis=0)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["host", "device"])
def test_moments_match_concatenated_batch(ranks, case, kind):
    size, results = ranks
    n_ref, m_ref, v_ref = _reference(size, case)
    for res in results:
        n, m, v = res[f"{kind}/{case}"]
        np.testing.assert_array_equal(n, n_ref)
        scale = np.abs(m_ref) + np.sqrt(v_ref)
        assert np.all(np.abs(m - m_ref) <= 1e-14 * scale), (res["rank"], m, m_ref)
        # Chan's merge sees each rank's mean rounded to float64 (eps * |mean|): relative to the spread that
        # is the conditioning of the variance at a large offset, eps * |mean| / std.
        rtol = 1e-13 * (1.0 + np.abs(m_ref) / np.sqrt(v_ref))
        assert np.all(np.abs(v - v_ref) <= rtol * v_ref), (res["rank"], v, v_ref)


def test_identical_on_every_rank_and_across_runs(ranks):
    _, results = ranks
    for case, *_ in CASES:
        first = np.stack(results[0][f"host/{case}"])
        for res in results:
            for key in ("host", "host2", "device"):
                assert np.stack(res[f"{key}/{case}"]).tobytes() == first.tobytes(), (res["rank"], key, case)


def test_device_allgather_and_rank_ordered_allreduce(ranks):
    size, results = ranks
    rows = np.stack([(np.arange(7, dtype=np.float32) + 0.1) * (r + 1) ** 3 for r in range(size)])
    total = rows[0].copy()
    for r in range(1, size):
        total = (total + rows[r]).astype(np.float32)
    assert abs(total.astype(np.float64) - rows.astype(np.float64).sum(0)).max() < 1e-3 * abs(total).max()
    for res in results:
        np.testing.assert_array_equal(res["allgather"], rows)
        assert res["allreduce"].dtype == np.float32
        np.testing.assert_array_equal(res["allreduce"], total)
        np.testing.assert_array_equal(res["allreduce_host"], total)


def test_backward_sums_in_rank_order(ranks):
    size, results = ranks
    parts = [rank_rows(size, r, "plain") for r in range(size)]
    rows = [np.stack([x.sum(0), (x * x).sum(0)]) for x in parts]
    total = rows[0].copy()
    for r in range(1, size):
        total += rows[r]
    x = np.concatenate(parts)
    np.testing.assert_allclose(total, np.stack([x.sum(0), (x * x).sum(0)]), rtol=1e-13, atol=1e-13)
    for res in results:
        assert res["sums"].dtype == np.float64
        np.testing.assert_array_equal(res["sums"], total)


def test_mismatch_raises_the_same_error_on_every_rank(ranks):
    size, results = ranks
    messages = {res["mismatch"] for res in results}
    assert len(messages) == 1 and None not in messages, messages
    msg = messages.pop()
    channels = ", ".join(f"rank {r}={5 if r < size - 1 else 6}" for r in range(size))
    assert f"C: {channels}" in msg, msg
    if size >= 3:
        assert "dtype: rank 0=float32, rank 1=float16" in msg, msg
    else:
        assert "dtype: rank" not in msg, msg
    n_ref, m_ref, _ = _reference(size, "plain")
    for res in results:  # the communicator goes on working after the refused call
        np.testing.assert_allclose(res["after_mismatch"][1], m_ref, rtol=1e-13)


def test_a_rank_that_never_joins_makes_the_others_time_out(ranks):
    size, results = ranks
    assert results[-1]["timeout"] == "skipped"
    for res in results[:-1]:
        assert res["timeout"] is not None, res["rank"]
        assert f"rank {res['rank']} of {size} waited 1 s" in res["timeout"], res["timeout"]
        assert 1.0 <= res["timeout_s"] < 30.0, res["timeout_s"]
        assert res["after_timeout"].startswith("DistributedError: MPICommunicator: this communicator cannot be "
                                               "used again"), res["after_timeout"]


def test_a_rank_that_never_calls_forward_train_makes_the_others_time_out(ranks):
    size, results = ranks
    assert "timeout_bn" not in results[-1]
    for res in results[:-1]:
        assert res["timeout_bn"] is not None and f"rank {res['rank']} of {size} waited 1 s" in res["timeout_bn"], res
        assert res["timeout_bn_unchanged"], res["rank"]  # the running statistics are as they were


def test_readme_example_runs_as_shown():
    example = os.path.join(HERE, "sync_example.py")
    with open(example) as f:
        source = f.read().rstrip("\n")
    with open(os.path.join(HERE, "..", "..", "README.md")) as f:
        assert source in f.read(), "README.md does not show tests/distributed/sync_example.py as tested"
    proc = subprocess.run([_mpiexec(), "-n", "3", sys.executable, example], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    seen = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, seen
    x = np.concatenate([np.random.default_rng(r).standard_normal((r, 4, 3)).astype(np.float32) for r in range(3)])
    x = x.astype(np.float64)
    # mpiexec merges the ranks' stdout, and one rank's line can land in the middle of another's
    # (no newline between them): find the records, not the lines.
    found = sorted(re.findall(r"rank (\d+): mean=(\[[^\]]*\]) var=(\[[^\]]*\]) dbias=(\[[^\]]*\])", proc.stdout))
    assert [int(r) for r, *_ in found] == [0, 1, 2], seen
    for r, mean_text, var_text, dbias_text in found:
        # factor 1: the running statistics are the union's batch mean and unbiased variance (9 values)
        mean, var, dbias = (np.array(eval(t)) for t in (mean_text, var_text, dbias_text))
        np.testing.assert_allclose(mean, x.mean((0, 2)), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(var, x.var((0, 2), ddof=1), rtol=1e-5)
        np.testing.assert_array_equal(dbias, [9.0] * 4)
