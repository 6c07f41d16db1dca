"""Regression bars on global-memory traffic and launches, via the software GPU's counters (not timed).

Bars: fp32 12 B/element forward-train, 20 backward, 8 inference (scaled by the element size for fp16),
at most 2, 2 and 1 launches. They bound the element streams; the O(statistics x CTAs) parameter and
statistics traffic is allowed on top (cybn.testing.traffic.PER_STAT_CTA bytes per statistic, CTA and launch)."""
import numpy as np
import pytest

from cybn import batchnorm
from cybn.testing.traffic import MAX_LAUNCHES, allowance, measure_call


@pytest.mark.parametrize("shape,mode", [((8, 16, 14, 14), "spatial"), ((2, 2, 64, 48), "spatial"),
                                        ((2048, 24), "per_activation")])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", ["forward_train", "backward", "backward_acc", "forward_infer"])
def test_traffic_bars(shape, mode, dtype, op):
    per_element, launches = measure_call(shape, dtype, mode, op)
    assert launches <= MAX_LAUNCHES[op]
    assert per_element <= allowance(shape, mode, dtype, op, launches), f"{per_element:.3f} B/element"


def test_fused_forward_reads_x_once():
    """Channels that fit the replay cache: forward-train reads x once, at the ideal 8 B/element (fp32)
    plus the parameters; and backward reads x and dy once (12 B/element), fused or, where the profile's SMs
    outnumber the channels, as one cooperative launch (its partials allowed as cybn.testing.traffic says)."""
    shape = (4, 8, 16, 16)
    per_element, launches = measure_call(shape)
    assert launches == 1 and per_element <= 8 + 64 * 8 / np.prod(shape), per_element
    per_element, launches = measure_call(shape, op="backward")
    p = batchnorm.plan(shape, np.float32, kernel="backward")
    assert launches == 1 and (p["split"] == 1 or p["coop"])
    assert per_element <= (allowance(shape, op="backward") - 8 if p["coop"] else 12 + 64 * 8 / np.prod(shape)), per_element
