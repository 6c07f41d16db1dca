"""Where the MPI launcher is (the distributed tests' fixture and the README example test)."""
import os
import shutil
import sys


def mpiexec():
    # The venv's own (the mpich wheel's) first: a system MPI's launcher may not match mpi4py's library.
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = local if os.path.exists(local) else shutil.which("mpiexec")
    assert found, "mpiexec not found: the test extra's mpich wheel installs it (pip install -e '.[test]')"
    return found
