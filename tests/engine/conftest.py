"""Engine tests run on the software GPU with all its checks on (tests/conftest.py loads it; this file
only makes sure of it when the engine tests run alone) and record the device allocations alive at the
start, so test_zz_leaks can prove the engine tests left none behind."""
import os

import pytest

os.environ.setdefault("CYBN_DEVICE", "softgpu")
os.environ.setdefault("CYBN_SOFTGPU_CHECKS", "all")


@pytest.fixture(scope="session", autouse=True)
def engine_allocation_baseline():
    from cybn import backend, softgpu
    backend.init()
    assert backend.name() == "softgpu", "the engine tests must run on the software GPU"
    # Earlier test directories leave blocks cached in the pool (and BatchNorm workspaces) that the
    # leak test's free_all() would release: start from the same released state.
    import gc
    import sys
    from cybn import memory
    gc.collect()
    if "cybn.batchnorm" in sys.modules:
        sys.modules["cybn.batchnorm"].free_workspaces()
    memory.default_pool().free_all()
    return softgpu.live_allocations()
