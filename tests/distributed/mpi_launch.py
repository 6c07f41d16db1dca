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


def run_ranks(size, worker, out, timeout):
    """Start `size` ranks of the worker script (beside this file) under mpiexec, each writing out/rank<r>.pkl;
    the per-rank results in rank order."""
    import pickle
    import subprocess
    cmd = [mpiexec(), "-n", str(size), sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), worker),
           str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    results = []
    for r in range(size):
        with open(out / f"rank{r}.pkl", "rb") as f:
            results.append(pickle.load(f))
    assert [res["rank"] for res in results] == list(range(size))
    return results
