"""The MPI launch shared by the distributed tests: one mpiexec run of mpi_worker.py per rank count (2, 3, 4)
per session, whose per-rank results test_mpi_sync.py and test_sync_batchnorm.py check."""
import os
import pickle
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # dist_cases, shared with the MPI worker

from dist_cases import COUNTS  # noqa: E402
from mpi_launch import mpiexec  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session", params=sorted(COUNTS))
def ranks(request, tmp_path_factory):
    pytest.importorskip("mpi4py", reason="the test extra installs mpi4py and mpich: pip install -e '.[test]'")
    size = request.param
    out = tmp_path_factory.mktemp(f"mpi{size}")
    cmd = [mpiexec(), "-n", str(size), sys.executable, os.path.join(HERE, "mpi_worker.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    results = []
    for r in range(size):
        with open(out / f"rank{r}.pkl", "rb") as f:
            results.append(pickle.load(f))
    assert [res["rank"] for res in results] == list(range(size))
    return size, results
