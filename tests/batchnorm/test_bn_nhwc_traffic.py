"""Channels-last traffic and launches from the software GPU's exact counters (not timed): fp32 at most
8 B/element inference, 12 forward-train and 20 backward when split (two launches), the fused one-launch
paths at the ideal 8 and 12 where the replay cache holds every row (x, and x and dy, read once), fp16 and
bf16 at half, fp64 at double.
Allowed on top: bn_traffic.PER_STAT_CTA bytes per channel, CTA and launch (parameters, partials)."""
import numpy as np
import pytest

from cybn.testing.traffic import PER_STAT_CTA
from cybn import batchnorm, gpuarray, softgpu
from bn_epilogue_cases import BF16

BAR = {"forward_train": 12, "backward": 20, "forward_infer": 8}  # fp32 bytes per element
FUSED = {"forward_train": 8, "backward": 12}
DTYPES = [np.float32, np.float16, np.float64, pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    BF16 is None, reason="ml_dtypes (the test extra) not installed"))]


def _pdt(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _measure(shape, dtype, op, rng):
    C = shape[-1]
    x, dy = (gpuarray.to_gpu(rng.standard_normal(shape).astype(dtype)) for _ in range(2))
    pdt = _pdt(dtype)
    scale, bias, rm = (gpuarray.to_gpu(rng.standard_normal(C).astype(pdt)) for _ in range(3))
    rv = gpuarray.to_gpu(rng.uniform(0.5, 2, C).astype(pdt))
    out = gpuarray.empty(shape, dtype)
    a, b = gpuarray.empty((C,), pdt), gpuarray.empty((C,), pdt)
    batchnorm.prepare(dtype, layout="NHWC")  # compile/load outside the measurement
    with softgpu.measure() as m:
        if op == "forward_train":
            batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=out, save_mean=a, save_invstd=b,
                                    layout="NHWC")
        elif op == "backward":
            batchnorm.backward(x, dy, scale, rm, rv, out=out, scale_grad=a, bias_grad=b, layout="NHWC")
        else:
            batchnorm.forward_infer(x, scale, bias, rm, rv, 1e-5, out=out, layout="NHWC")
    return (m.load_bytes + m.store_bytes) / np.prod(shape), m.launches_count


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["forward_train", "backward", "forward_infer"])
@pytest.mark.parametrize("shape", [(8, 32, 32, 4), (8, 16, 16, 64), (4, 8, 8, 2048), (4, 16, 16, 7)], ids=str)
def test_channels_last_traffic(rng, shape, op, dtype):
    plan = batchnorm.plan(shape, dtype, layout="NHWC", kernel=op)
    split = plan["split"]
    per_element, launches = _measure(shape, dtype, op, rng)
    fused = split == 1 and op != "forward_infer"
    assert launches == (1 if fused or op == "forward_infer" else 2)
    # The fused path reads x (and dy) once when the replay cache holds every row of a thread; else twice,
    # within the split bars.
    cached = fused and plan["cache_units"] * plan["block"][1] >= np.prod(shape[:-1])
    bar = (FUSED[op] if cached else BAR[op]) * np.dtype(dtype).itemsize / 4
    extra = PER_STAT_CTA * np.dtype(_pdt(dtype)).itemsize / 4 * shape[-1] * split * launches / np.prod(shape)
    assert per_element <= bar + extra, f"{per_element:.3f} B/element, split {split}"


def test_split_shapes_are_split():
    """The traffic shapes above include split plans for both reductions (else the 12/20 bars test nothing)."""
    for op in ("forward_train", "backward"):
        assert batchnorm.plan((8, 32, 32, 4), layout="NHWC", kernel=op)["split"] > 1
        assert batchnorm.plan((4, 8, 8, 2048), layout="NHWC", kernel=op)["split"] == 1
