"""The MPI launch shared by the distributed tests: one mpiexec run of mpi_worker.py per rank count (2, 3, 4)
per session, whose per-rank results test_mpi_sync.py and test_sync_batchnorm.py check."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # dist_cases, shared with the MPI worker

from dist_cases import COUNTS  # noqa: E402
from mpi_launch import run_ranks  # noqa: E402


@pytest.fixture(scope="session", params=sorted(COUNTS))
def ranks(request, tmp_path_factory):
    pytest.importorskip("mpi4py", reason="the test extra installs mpi4py and mpich: pip install -e '.[test]'")
    size = request.param
    out = tmp_path_factory.mktemp(f"mpi{size}")
    results = run_ranks(size, "mpi_worker.py", out, timeout=180)
    return size, results
