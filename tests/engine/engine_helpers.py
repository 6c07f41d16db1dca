"""Shared helpers for the engine tests."""
import numpy as np

from cybn import softgpu


def launches():
    """Total kernel launches the software GPU has run so far."""
    return softgpu.counters()["total"]["launches"]


def f16_ref(a):
    """numpy's float16 rounding of a float64/float32 array: the independent reference for half results."""
    return np.asarray(a).astype(np.float16)
