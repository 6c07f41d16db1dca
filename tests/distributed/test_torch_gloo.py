"""SyncBatchNorm over torch.distributed with the gloo backend (TorchCommunicator), when torch is installed:
2 ranks as plain processes (file:// rendezvous), uneven batches (1 and 6 samples), three training steps against
float64 numpy over the concatenated batch, and the mismatched-C error on every rank."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sync_bn_cases import COUNTS, STEPS, params, rank_data, reference

HERE = os.path.dirname(os.path.abspath(__file__))


def test_sync_batchnorm_over_gloo(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch.distributed path needs torch (CPU build is enough)")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    size = 2
    init = tmp_path / "rendezvous"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "torch_worker.py"), str(r), str(size), str(init),
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL) for r in range(size)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    results = []
    for r in range(size):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            results.append(pickle.load(f))
    scale, bias, rm, rv = (a.astype(np.float64) for a in params())
    bounds = np.cumsum((0,) + COUNTS[size])
    for step in range(STEPS):
        parts = [rank_data(size, r, "float32", step) for r in range(size)]
        x, dy = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        y, rm, rv, dx, ds, db = reference(x, dy, scale, bias, rm, rv)
        for res in results:
            r = res["rank"]
            got = res["steps"][step]
            lo, hi = bounds[r], bounds[r + 1]
            for key, want in (("y", y[lo:hi]), ("dx", dx[lo:hi]), ("ds", ds), ("db", db), ("rm", rm), ("rv", rv)):
                err = np.abs(got[key].astype(np.float64) - want).max()
                assert err <= 2e-5 * max(1.0, np.abs(want).max()), (r, step, key, err)
    messages = {res["mismatch"] for res in results}
    assert len(messages) == 1 and None not in messages, messages
    assert "C: rank 0=3, rank 1=4" in messages.pop()
