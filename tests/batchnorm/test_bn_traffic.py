"""Regression bars on global-memory traffic and launches, via the software GPU's counters (not timed).

Bars (fp32: 12 B/element forward-train, 20 backward, 8 inference; scaled by the element size for
fp16) apply to the element streams; the per-channel parameter and statistics traffic is O(C) and is
allowed on top as 1.5% (these shapes have >= 1500 values per statistic)."""
import numpy as np
import pytest

from bn_traffic import BAR, MAX_LAUNCHES, measure_call

SLACK = 1.015


@pytest.mark.parametrize("shape,mode", [((8, 16, 14, 14), "spatial"), ((2, 2, 64, 48), "spatial"),
                                        ((2048, 24), "per_activation")])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", ["forward_train", "backward", "forward_infer"])
def test_traffic_bars(shape, mode, dtype, op):
    per_element, launches = measure_call(shape, dtype, mode, op)
    itemsize = np.dtype(dtype).itemsize
    assert launches <= MAX_LAUNCHES[op]
    assert per_element <= BAR[op] * itemsize * SLACK, f"{per_element:.3f} B/element"


def test_fused_forward_reads_x_once():
    """A channel that fits the replay cache: forward-train at the ideal 8 B/element (fp32)."""
    per_element, launches = measure_call((4, 8, 16, 16))
    assert launches == 1 and per_element <= 8 * SLACK, per_element
