"""Runs last among the engine tests: everything they allocated is back with the driver once the default
pool has returned its cached blocks."""
import gc

from cybn import softgpu
from cybn.memory import default_pool


def test_no_device_allocation_leaked(engine_allocation_baseline):
    gc.collect()
    default_pool().free_all()
    assert default_pool().held_bytes == 0
    assert softgpu.live_allocations() == engine_allocation_baseline
