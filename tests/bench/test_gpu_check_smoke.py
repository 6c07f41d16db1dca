"""bench/gpu_check.py end to end on the software GPU (--smoke): it prints the device, checks every entry
point / mode / dtype against the float64 reference, labels every timing as meaningless here, and exits
non-zero when a comparison fails (proved by injecting a wrong reference)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gpu_model  # bench/ (tests/bench/conftest.py puts it on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.py")


def run(*args):
    env = dict(os.environ, CYBN_DEVICE="softgpu")
    return subprocess.run([sys.executable, SCRIPT, "--smoke", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def smoke():
    return run()


def test_smoke_run_passes_and_labels_timings(smoke):
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    lines = smoke.stdout.splitlines()
    assert lines[0].startswith("device: cybn software GPU")
    # 3 shapes x the engine's dtypes x 4 entry points x (affine, non-affine)
    nd = len(gpu_model.engine_dtypes()[0])
    assert f"correctness: {24 * nd} of {24 * nd} calls match the float64 reference" in lines
    timed = [line for line in lines if line.strip().startswith("(")]  # the timing table's rows
    assert len(timed) == 2 * nd * 3  # (copy, cybn) x dtypes x 3 ops
    assert sorted({line.split()[6] for line in timed}) == ["copy", "cybn"]
    assert all(line.endswith("[software GPU: meaningless as a GPU timing]") for line in timed)
    assert lines[-1] == "gpu_check: correctness passed"


def test_a_wrong_reference_fails_the_run():
    out = run("--inject-wrong-reference", "0.05")
    assert out.returncode == 1, out.stdout
    n = 24 * len(gpu_model.engine_dtypes()[0])
    assert f"gpu_check: {n} correctness failure(s)" in out.stdout
    assert sum(line.startswith("FAIL ") for line in out.stdout.splitlines()) == n


def test_check_case_compares_every_output(rng=np.random.default_rng(3)):
    """In process: a correct call passes; a reference off by a small amount in the main output fails."""
    import gpu_check
    for op in gpu_check.entry_points():
        assert gpu_check.check_case(rng, (2, 3, 4, 5), "spatial", np.dtype(np.float32), op, True) == []
        bad = gpu_check.check_case(rng, (2, 3, 4, 5), "spatial", np.dtype(np.float32), op, True, wrong=1e-3)
        assert bad and bad[0].startswith(("y:", "dx:")), (op, bad)


def test_median_of_event_timings_and_profiles():
    import gpu_check
    times = iter([3.0, 1.0, 2.0, 9.0])
    calls = []

    class Ev:
        def record(self):
            pass

        def synchronize(self):
            pass

        def elapsed_ms(self, end):
            return next(times)
    assert gpu_check._median_ms(lambda: calls.append(1), 3, 2, lambda: (Ev(), Ev())) == 2.0
    assert len(calls) == 5  # warm-up + repetitions
    assert gpu_check.profile_for("NVIDIA H100 80GB HBM3") == ("h100", False)
    assert gpu_check.profile_for("NVIDIA H200") == ("h200", False)
    assert gpu_check.profile_for("NVIDIA A100-SXM4-80GB") == ("a100", False)
    assert gpu_check.profile_for("cybn software GPU") == ("h100", True)
