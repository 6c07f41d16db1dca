"""The engine's launch-plan tests (forced paths, and the occupancy-sized plans of
tests/batchnorm/test_bn_occupancy_plans.py) and traffic-bar tests under the a100 (108 SMs) and h100 (132 SMs)
profiles, so the grids the heuristic sizes from the SM count and occupancy for those GPUs are the grids CI runs
(the profile is fixed per process: one pytest subprocess per profile). Two heavy cases whose plans do not depend
on the SM count (a forced 65535-CTA split; one huge channel, whose split is capped at 1024 either way) run only
under the default profile."""
import os

import pytest

from fresh import run_fresh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ["test_grid_y_limit", "test_honest_large_channel"]


@pytest.mark.parametrize("profile", ["a100", "h100"])
def test_plan_and_traffic_tests_under_profile(profile):
    files = [os.path.join(ROOT, "tests", "batchnorm", f)
             for f in ("test_bn_plans.py", "test_bn_occupancy_plans.py", "test_bn_traffic.py")]
    args = files + ["-q", "-p", "no:cacheprovider", "-k", " and ".join("not " + t for t in HEAVY)]
    proc = run_fresh("import sys, pytest; sys.exit(pytest.main(%r))" % args, CYBN_SOFTGPU_PROFILE=profile)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " failed" not in proc.stdout and "error" not in proc.stdout, tail


@pytest.mark.parametrize("profile, sms", [("small", 4), ("a100", 108), ("h100", 132)])
def test_split_follows_the_sm_count(profile, sms):
    """Two channels of 2^20 float32 (262144 16-byte units each, 1024 = 16 KiB per thread of a 256-thread
    group): two columns fill few of the device's CTA slots, so the split fills one wave of them,
    slots // 2 per channel, unless a thread would then walk less than 128 bytes (128 CTAs per channel)."""
    proc = run_fresh("""
        import numpy as np
        from cybn import batchnorm, softgpu
        p = batchnorm.plan((1, 2, 1 << 20), np.float32)
        print(softgpu.profile(), p["sm_count"], p["ctas_per_sm"], p["split"])
    """, CYBN_SOFTGPU_PROFILE=profile, CYBN_DEVICE="softgpu")
    assert proc.returncode == 0, proc.stderr
    name, sm_count, per_sm, split = proc.stdout.split()
    assert (name, int(sm_count)) == (profile, sms) and int(per_sm) >= 1
    assert int(split) == min(int(per_sm) * sms // 2, (1 << 20) * 4 // 256 // 128)


def test_h100_plans_at_the_hardware_occupancy():
    """Under h100 the occupancy comes from whole-program register counts, as on the GPU: the fp32 backward's 64
    registers give 4 CTAs of 256 threads per SM, so (256, 512, 28, 28)'s 512 channels run in one wave of 528
    slots (3 per SM, nvJitLink's relocatable 72, left 1.29 waves). (32, 512, 28, 28)'s fp32 forward trades its
    third CTA per SM for a cache that holds each thread's whole channel: x is read from memory once."""
    proc = run_fresh("""
        import numpy as np
        from cybn import batchnorm
        b = batchnorm.plan((256, 512, 28, 28), np.float32, kernel="backward")
        f = batchnorm.plan((32, 512, 28, 28), np.float32, kernel="forward_train")
        print(b["ctas_per_sm"], b["grid"][0] * b["grid"][1], b["sm_count"], b["split"], b["coop"])
        print(f["ctas_per_sm"], f["split"], f["cache_units"], f["block"][0], f["block"][1])
    """, CYBN_SOFTGPU_PROFILE="h100", CYBN_DEVICE="softgpu")
    assert proc.returncode == 0, proc.stderr
    back, fwd = [list(map(str.strip, line.split())) for line in proc.stdout.strip().splitlines()]
    per_sm, ctas, sms = map(int, back[:3])
    assert (per_sm, back[3], back[4]) == (4, "1", "False") and ctas == 512 <= per_sm * sms
    per_sm, split, cache, bx, by = map(int, fwd)
    units = 32 * 28 * 28 // 4  # 16-byte units of one channel
    assert (per_sm, split, by) == (2, 1, 1) and cache * bx >= units
