"""Plans sized by occupancy. For ResNet-50's BatchNorm shapes at N = 32 and 256 and two per-activation
shapes, every launch of every call (a split call's second, element-wise launch too) is checked against
properties computed here from the driver's occupancy calculator and the device's SM count, not against
the engine's own figures:
- CTAs per SM: the calculator's for the launch's block size and shared memory (static + the replay
  cache), and the cache never costs occupancy (the same count as without it);
- SMs used: all of them whenever the launch holds at least SMs CTAs' worth of work (a CTA's worth:
  every thread walking 2 x MIN_WALK = 256 bytes per array, the least a split leaves a thread);
- whole waves: a split grid fills its last wave to within one column of CTAs, unless the threads'
  walks are already as short as a split may make them; a cooperative backward's grid is within one wave
  (its CTAs co-resident) and reaches every SM unless another CTA per column would not fit that wave.
The profile decides the device: the default one here, a100 and h100 in tests/softgpu/test_profiles_plans.py."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import batchnorm, kernels

MIN_WALK = 128  # bytes per thread per array below which a split never goes (cybn/batchnorm/plan.pxi)
RESNET50 = [(64, 112, 112), (64, 56, 56), (256, 56, 56), (128, 56, 56), (128, 28, 28), (512, 28, 28),
            (256, 28, 28), (256, 14, 14), (1024, 14, 14), (512, 14, 14), (512, 7, 7), (2048, 7, 7)]
SHAPES = [((n,) + chw, "spatial") for n in (32, 256) for chw in RESNET50]
SHAPES += [((256, 4096), "per_activation"), ((4096, 1024), "per_activation")]
OPS = {"forward_train": ("bn_fwd_train", "bn_normalize"), "backward": ("bn_bwd", "bn_bwd_dx"),
       "forward_infer": ("bn_normalize", None)}


def _function(name, dtype, mode, span=False):
    """The kernel a launch runs: batchnorm.cu's NCHW spatial ones (a SPAN plan, vec 3: the SPAN program's);
    per-activation calls ((N, F) rows) run batchnorm_nhwc.cu's row-major kernels."""
    i = batchnorm._KERNEL_NAMES.index(name)
    ctype = "float" if dtype == np.float32 else "__half"
    if span:
        return kernels.get_function("batchnorm.cu", f"{name}_spatial<{ctype}, 0, true>", batchnorm._SIGNATURES[i],
                                    options=batchnorm.span_compile_options(0),
                                    name_expressions=batchnorm.span_kernel_expressions(0))
    if mode == "spatial":
        return kernels.get_function("batchnorm.cu", f"{name}_spatial<{ctype}>", batchnorm._SIGNATURES[i],
                                    options=batchnorm.compile_options(), name_expressions=batchnorm.kernel_expressions())
    return kernels.get_function("batchnorm_nhwc.cu", f"{name.replace('bn_', 'bn_nhwc_', 1)}<{ctype}, 0>",
                                batchnorm._SIGNATURES[i], options=batchnorm.compile_options(),
                                name_expressions=batchnorm.nhwc_kernel_expressions())


def _calculator(f, threads, dynamic_smem):
    err, n = cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(cu.CUfunction(f.handle), threads, dynamic_smem)
    assert err == cu.CUresult.CUDA_SUCCESS
    return n


def _walk_bytes(shape, dtype, mode, p):
    """Bytes per thread per array of a launch: its statistic's elements over the threads walking them."""
    z = np.dtype(dtype).itemsize
    per_stat = shape[0] * (int(np.prod(shape[2:])) if mode == "spatial" else 1) * z
    return per_stat / (p["block"][0 if mode == "spatial" else 1] * p["split"])


def _launches(shape, dtype, mode, op):
    p = batchnorm.plan(shape, dtype, mode, op)
    first, second = OPS[op]
    out = [(first, p)]
    if p["split"] > 1 and second and not p["coop"]:  # a cooperative backward is one launch
        assert "second" in p
        out.append((second, p["second"]))
    return out


@pytest.mark.parametrize("shape,mode", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", list(OPS))
def test_plans_fill_the_device(shape, mode, dtype, op):
    for name, p in _launches(shape, dtype, mode, op):
        f = _function(name, dtype, mode, p["vec"] == 3)
        threads = p["block"][0] * p["block"][1]
        sms = p["sm_count"]
        per_sm = _calculator(f, threads, p["shared_bytes"])
        assert per_sm >= 1 and p["ctas_per_sm"] == per_sm, (name, p)
        full = _calculator(f, threads, 0)
        if per_sm < full:  # only a one-launch reduction trades one CTA per SM for a larger replay cache
            assert per_sm == full - 1 and p["cache_units"] > 0 and (p["split"] == 1 or p["coop"]), (name, p)
            assert op in ("forward_train", "backward") and name == OPS[op][0], (name, p)
        else:
            assert per_sm == full, (name, p)
        ctas, cols = p["grid"][0] * p["grid"][1], p["grid"][0]
        slots = per_sm * sms
        z = np.dtype(dtype).itemsize
        cta_worth = threads * 2 * MIN_WALK
        if int(np.prod(shape)) * z >= sms * cta_worth:
            assert ctas >= sms, (name, p)
        if p["coop"]:  # one cooperative launch: co-resident (one wave at most), on every SM where that fits
            assert "second" not in p and cols < ctas <= slots and (ctas >= sms or ctas + cols > slots), (name, p)
        elif p["split"] > 1:
            waves = -(-ctas // slots)
            assert ctas > waves * slots - cols or _walk_bytes(shape, dtype, mode, p) < 2 * MIN_WALK, (name, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_element_wise_launches_are_planned_on_their_own(dtype):
    """A split reduction's second launch has its own grid: it stays within one wave (never a tail) and
    inference, which reduces nothing, is planned the same way (the streaming kernel's rule)."""
    for shape, mode in SHAPES:
        p = batchnorm.plan(shape, dtype, mode, "forward_train")
        if p["split"] > 1:
            q = p["second"]
            assert q == batchnorm.plan(shape, dtype, mode, "forward_infer"), shape
            slots = q["ctas_per_sm"] * q["sm_count"]
            assert q["grid"][0] * q["grid"][1] <= max(slots, q["grid"][0]), (shape, q)


def test_plan_rejects_an_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        batchnorm.plan((2, 3, 8), np.float32, kernel="bogus")


@pytest.mark.parametrize("shape", [(256, 4096), (4096, 1024)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", list(OPS))
def test_per_activation_plans_fill_the_device(shape, dtype, op):
    """The per-activation shapes (row-major kernels, 16-byte feature vectors) fill the device under every
    profile (a100 and h100 through tests/softgpu/test_profiles_plans.py), stricter than the general rule
    above: every launch, whatever the tensor's size, holds at least one CTA per SM, at the calculator's CTAs
    per SM, and a split grid fills its last wave to within one column of CTAs unless its threads' walks
    are already as short as a split may make them."""
    for name, p in _launches(shape, dtype, "per_activation", op):
        threads = p["block"][0] * p["block"][1]
        per_sm = _calculator(_function(name, dtype, "per_activation"), threads, p["shared_bytes"])
        slots = per_sm * p["sm_count"]
        ctas, cols = p["grid"][0] * p["grid"][1], p["grid"][0]
        assert p["vec"] == 1 and p["ctas_per_sm"] == per_sm, (name, p)
        assert ctas >= p["sm_count"], (name, p)
        waves = -(-ctas // slots)
        if p["split"] > 1:
            walk = shape[0] * 16 / (p["block"][1] * p["split"])  # bytes per thread: its rows x 16
            assert ctas > waves * slots - cols or walk < 2 * MIN_WALK, (name, p)


@pytest.mark.parametrize("shape", [(256, 4096), (64, 64)], ids=str)
def test_short_wide_rows_run_fused_on_narrowed_ctas(shape):
    """Short wide (N, F) rows: when 32-thread-wide CTAs would leave SMs without a column and a thread would
    walk too few rows to split, the CTA's feature span narrows (at least 32 contiguous bytes per row) until
    the columns cover the SMs, and the call stays one fused launch replaying x from the cache (one read of
    x). (256, 4096) narrows on a100/h100 (tests/softgpu/test_profiles_plans.py), (64, 64) on the default
    4-SM profile too."""
    p = batchnorm.plan(shape, np.float32, "per_activation")
    units = shape[1] // 4
    assert p["split"] == 1 and p["block"][0] * 16 >= 32
    if units // min(32, units) < p["sm_count"]:
        assert p["block"][0] < min(32, units) and p["grid"][0] == units // p["block"][0], p
        assert p["cache_units"] * p["block"][1] >= shape[0], p  # every row of every thread cached
