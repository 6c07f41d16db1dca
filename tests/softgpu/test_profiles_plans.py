"""The engine's launch-plan and traffic-bar tests under the a100 (108 SMs) and h100 (132 SMs)
profiles, so the grids the heuristic sizes from the SM count for those GPUs are the grids CI runs
(the profile is fixed per process: one pytest subprocess per profile). Two heavy plan cases whose
plans do not depend on the SM count (a forced 65535-CTA split; one huge channel, whose split is
capped at 1024 either way) run only under the default profile."""
import os

import pytest

from fresh import run_fresh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ["test_grid_y_limit", "test_honest_large_channel"]


@pytest.mark.parametrize("profile", ["a100", "h100"])
def test_plan_and_traffic_tests_under_profile(profile):
    files = [os.path.join(ROOT, "tests", "batchnorm", f) for f in ("test_bn_plans.py", "test_bn_traffic.py")]
    args = files + ["-q", "-p", "no:cacheprovider", "-k", " and ".join("not " + t for t in HEAVY)]
    proc = run_fresh("import sys, pytest; sys.exit(pytest.main(%r))" % args, CYBN_SOFTGPU_PROFILE=profile)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout and "error" not in proc.stdout, tail


@pytest.mark.parametrize("profile, split", [("small", 4), ("a100", 32), ("h100", 32)])
def test_split_follows_the_sm_count(profile, split):
    """Two channels of 2^20 float32 (262144 16-byte units each, 1024 per thread of a 256-thread
    group): the heuristic splits by 1024 / 256 = 4 to bound each thread's walk, then towards
    2 CTAs per SM: min(ceil(2 * SMs / 2 columns), 1024 // 32) = 4 on 4 SMs, 32 on 108 or 132."""
    proc = run_fresh("""
        import numpy as np
        from cybn import batchnorm, softgpu
        split = batchnorm.plan((1, 2, 1 << 20), np.float32)["split"]
        print(softgpu.profile(), split)
    """, CYBN_SOFTGPU_PROFILE=profile, CYBN_DEVICE="softgpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [profile, str(split)]
