"""The performance model's parts checked against what can be measured here: its bytes against the software
GPU's exact counters, its second launches against the engine's own plans, its CUBIN reader against ptxas'
report and against kernels whose loads in flight are known by construction, its occupancy and latency
curve against hand-worked values; and bench/gpu_model.py end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gpu_model  # bench/ (tests/bench/conftest.py puts it on sys.path)

from cybn.testing.traffic import PER_STAT_CTA, measure_call
from cybn import batchnorm, nvrtc
from cybn.testing import cubin_report, perfmodel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [
    ((4, 8, 16, 16), "spatial", {}),                      # fused, 16-byte units, x replayed from shared memory
    ((3, 5, 40), "spatial", {"cache": 0}),                # fused, x read twice
    ((4, 2, 64), "spatial", {"cache": 1}),                # fused, the cache holds part of x
    ((2, 3, 5, 7), "spatial", {}),                        # scalar units
    ((1, 3, 37), "spatial", {}),                          # N == 1 row vectors between scalar edges
    ((4, 3, 16, 8), "spatial", {"split": 4}),             # split: partials, last-CTA combine, second launch
    ((4, 3, 5, 7), "spatial", {"split": 3, "group": 64}),
    ((4, 5, 16, 16), "spatial", {"split": 4, "coop": True}),   # one cooperative launch, x replayed from the cache
    ((3, 2, 5, 7), "spatial", {"split": 2, "coop": True, "cache": 1}),  # cooperative, element loads, part cached
    # per-activation (N, F) rows: the row-major kernels of batchnorm_nhwc.cu
    ((300, 5), "per_activation", {"split": 6}),           # scalar features, split rows
    ((37, 70), "per_activation", {"cache": 0}),           # fused, x read twice
    ((40, 3, 2), "per_activation", {}),                   # F = 6: scalar features
    ((64, 64), "per_activation", {}),                     # 16-byte features, the narrowed CTA (more columns)
    ((96, 32), "per_activation", {"split": 3}),           # 16-byte features, split rows
    # channels last (NHWC, shape (N, H, W, C)): every plan class of the row-major kernels
    ((4, 8, 8, 16), "spatial", {}, "NHWC"),               # fused, 16-byte units, replayed from shared memory
    ((3, 5, 8, 12), "spatial", {"cache": 0}, "NHWC"),     # fused, x read twice
    ((4, 6, 8, 8), "spatial", {"cache": 1}, "NHWC"),      # fused, the cache holds part of x
    ((2, 3, 5, 7), "spatial", {}, "NHWC"),                # C = 7: element loads
    ((4, 16, 8, 8), "spatial", {"split": 4}, "NHWC"),     # split rows, second launch
    ((4, 5, 7, 12), "spatial", {"split": 3, "group": 64}, "NHWC"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{'-'.join(map(str, c[2].values()))}"
                         f"{'-' + c[3] if len(c) > 3 else ''}")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", ["forward_train", "backward", "forward_infer"])
def test_bytes_from_the_plan_match_the_counters(case, dtype, op):
    """The model's bytes (element streams from the plan's walk + a per-statistic allowance) equal the
    counters' within 64 B per statistic, CTA and launch, and its launch count is the engine's."""
    shape, mode, override = case[:3]
    layout = case[3] if len(case) > 3 else "NCHW"
    with batchnorm.plan_override(**override):
        plan = batchnorm.plan(shape, dtype, mode, op, layout=layout)
        per_element, launches = measure_call(shape, dtype, mode, op, layout=layout)
    model = perfmodel.launches(shape, dtype, mode, op, plan, layout)
    elements = int(np.prod(shape))
    K = (shape[-1] if layout == "NHWC" else shape[1]) if mode == "spatial" else elements // shape[0]
    measured = per_element * elements
    assert len(model) == launches
    modelled = sum(ln["bytes"] for ln in model)
    phases = launches + (1 if plan["coop"] else 0)  # a cooperative backward: as for two (cybn.testing.traffic)
    assert abs(modelled - measured) <= PER_STAT_CTA * K * plan["split"] * phases, (modelled, measured)


def test_the_row_major_comparison_sees_a_re_read():
    """Channels last and per-activation with the replay cache off: x is read twice, far above the allowance."""
    for shape, mode, layout, K in (((3, 5, 8, 12), "spatial", "NHWC", 12), ((37, 70), "per_activation", "NCHW", 70)):
        full = perfmodel.launches(shape, np.float32, mode, "forward_train",
                                  batchnorm.plan(shape, np.float32, mode, layout=layout), layout)
        with batchnorm.plan_override(cache=0):
            none = perfmodel.launches(shape, np.float32, mode, "forward_train",
                                      batchnorm.plan(shape, np.float32, mode, layout=layout), layout)
        assert none[0]["bytes"] - full[0]["bytes"] == pytest.approx(np.prod(shape) * 4)
        assert np.prod(shape) * 4 > PER_STAT_CTA * K


def test_the_comparison_sees_a_re_read():
    """With the replay cache off, x is read twice: the difference is far above the allowance above."""
    shape = (3, 5, 40)
    full = perfmodel.launches(shape, np.float32, "spatial", "forward_train", batchnorm.plan(shape))
    with batchnorm.plan_override(cache=0):
        none = perfmodel.launches(shape, np.float32, "spatial", "forward_train", batchnorm.plan(shape))
    assert none[0]["bytes"] - full[0]["bytes"] == pytest.approx(np.prod(shape) * 4)
    assert np.prod(shape) * 4 > PER_STAT_CTA * 5 * 3


@pytest.mark.parametrize("op", ["forward_train", "backward"])
def test_second_launch_follows_its_own_plan(op):
    """A split call's element-wise second launch is planned on its own (batchnorm.plan's "second"): the
    model charges that launch's CTAs and per-CTA overhead, not the reduction's."""
    shape = (2, 3, 4096)
    with batchnorm.plan_override(split=4):
        plan = batchnorm.plan(shape, np.float32, "spatial", op)
    second = dict(plan["second"], split=1, grid=(plan["grid"][0], 1, 1))
    one = perfmodel.launches(shape, np.float32, "spatial", op, dict(plan, second=second))
    four = perfmodel.launches(shape, np.float32, "spatial", op, plan)
    assert [ln["ctas"] for ln in one] == [3 * 4, 3] and [ln["ctas"] for ln in four] == [3 * 4, 3 * 4]
    assert four[1]["bytes"] - one[1]["bytes"] == perfmodel.OVERHEAD_PER_STAT_CTA * 3 * 3
    assert one[0] == four[0]


def test_occupancy_hand_worked():
    h100 = perfmodel.DEVICES["h100"]
    assert perfmodel.occupancy(256, 72, 1296, h100) == 3   # 72 regs: 2304/warp -> 7 warps per sub-partition
    assert perfmodel.occupancy(256, 64, 0, h100) == 4      # 64 regs: 8 warps per sub-partition
    assert perfmodel.occupancy(256, 32, 0, h100) == 8      # 2048 threads per SM
    assert perfmodel.occupancy(32, 16, 0, h100) == 32      # max CTAs per SM
    assert perfmodel.occupancy(256, 32, 48 * 1024, h100) == 4  # (48 + 1) KiB per CTA in 228 KiB


def test_latency_curve():
    dev = perfmodel.DEVICES["h100"]
    peak = dev.hbm_gbs * 1e9
    bws = [perfmodel.bandwidth(f, dev) for f in (1e3, 1e5, 1e6, 1e7, 1e9)]
    assert all(a < b for a, b in zip(bws, bws[1:])) and bws[-1] < peak
    assert bws[0] == pytest.approx(1e3 / (dev.latency_ns * 1e-9), rel=1e-3)  # light load: F / L0
    need = perfmodel.needed_inflight_per_sm(dev, 0.9) * dev.sms
    assert perfmodel.bandwidth(need, dev) == pytest.approx(0.9 * peak, rel=1e-6)
    # waves: twice the resident slots take twice as long as one full wave
    one = perfmodel.launch_seconds(1e8, 132 * 3, 256, 16, 3, dev)
    assert perfmodel.launch_seconds(2e8, 2 * 132 * 3, 256, 16, 3, dev) == pytest.approx(2 * one)
    # a half-empty device is slower than a full one for the same bytes
    assert perfmodel.launch_seconds(1e8, 66, 256, 16, 3, dev) > perfmodel.launch_seconds(1e8, 396, 256, 16, 3, dev)


def test_ptxas_report_parser():
    log = """ptxas info    : Function properties for _Z1kv
ptxas         .     0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 72 registers, used 1 barriers, 1296 bytes smem
"""
    assert cubin_report.ptxas_report(log) == {"_Z1kv": {"registers": 72, "spill_stores": 8, "spill_loads": 4,
                                                         "smem": 1296}}


_LOADS = r"""
extern "C" __global__ void loads(const float4* __restrict__ x, float* __restrict__ out, int n, int step) {
    float s = 0.0f;
#if INDEPENDENT
    for (int i = threadIdx.x; i < n; i += step) {  // four 16-byte loads, none waiting for another
        const float4 a = x[i], b = x[i + n], c = x[i + 2 * n], d = x[i + 3 * n];
        s += (a.x + a.y + a.z + a.w) * (b.x + b.y + b.z + b.w) + (c.x + c.y + c.z + c.w) * (d.x + d.y + d.z + d.w);
    }
#else
    for (int i = threadIdx.x, k = 0; k < n; ++k) {  // pointer chase: each load's address is the last load's value
        const float4 a = x[i];
        s += a.x + a.y + a.z;
        i = __float_as_int(a.w);
    }
#endif
    out[threadIdx.x] = s;
}
"""


@pytest.mark.parametrize("independent,at_least,at_most", [(0, 16, 16), (1, 64, 64)])
def test_inflight_count_on_known_loops(independent, at_least, at_most):
    """The SASS reader (nvdisasm from the test extra nvidia-cuda-nvdisasm) counts one 16-byte load in flight
    in a dependent loop and four in a loop of four independent loads; the PTX fallback agrees."""
    assert cubin_report.nvdisasm_path(), "nvdisasm missing: pip install -e '.[test]' (nvidia-cuda-nvdisasm)"
    opts = (f"-DINDEPENDENT={independent}", "--ptxas-options=-v")
    img = nvrtc.compile(_LOADS, "loads.cu", opts, target="cubin", arch="sm_90")
    sass = cubin_report.sass_inflight(img.image)["loads"]
    assert at_least <= sass["vec"] <= at_most, sass
    ptx = nvrtc.compile(_LOADS, "loads.cu", opts[:1], target="ptx", arch="compute_90")
    assert at_least <= cubin_report.ptx_inflight(ptx.image.rstrip(b"\0").decode())["loads"]["vec"] <= at_most


def _count(sass):
    """_max_outstanding of a hand-written loop body: one SASS instruction or label per line."""
    items = []
    for line in sass.strip().splitlines():
        line = line.strip()
        if line.endswith(":"):
            items.append(("label", line[:-1]))
        else:
            guard, line = (line.split(" ", 1)[0][1:], line.split(" ", 1)[1]) if line[0] == "@" else ("", line)
            op, _, args = line.partition(" ")
            items.append(("op", op, args, guard))
    return cubin_report._max_outstanding(items, lambda i: cubin_report._sass_load(i[1]) if i[0] == "op" else None,
                                         cubin_report._sass_dest_sources)


def test_inflight_count_of_if_else_and_overwrites():
    """A cached-or-global replay (if/else: the global load in one arm, a shared-memory load whose address
    register is the global load's destination in the other) keeps both global loads in flight; the same
    read outside an if/else ends the load; so does an overwrite of its register (write after write). The same
    with predicated instructions (@P1 LDG / @!P1 LDS), unless the predicate is set again between them."""
    def if_else(k, reg):  # global load in one arm, the shared-memory load through the same register in the other
        return (f"BRA `(.L_else{k})\nLDG.E.128 R{reg}, desc[UR4][R{reg}.64]\nBRA `(.L_join{k})\n"
                f".L_else{k}:\nLDS.128 R{reg}, [R{reg}]\n.L_join{k}:\n")
    arms = ".L_top:\n" + if_else(0, 20) + if_else(1, 24) + "FADD R30, R20, R24\nBRA `(.L_top)\n"
    assert _count(arms) == (32, True)
    for middle in ("LDS.128 R24, [R20]", "IMAD.MOV.U32 R22, RZ, RZ, R9"):  # a read of R20; a write of R22
        body = f".L_top:\nLDG.E.128 R20, desc[UR4][R8.64]\n{middle}\nLDG.E.128 R28, desc[UR4][R10.64]\n"
        assert _count(body + "FADD R30, R20, R28\nBRA `(.L_top)\n") == (16, True), middle
    guarded = """
        .L_top:
        @P1 LDG.E.128 R16, desc[UR4][R28.64]
        @!P1 LDS.128 R16, [R34]
        @P1 LDG.E.128 R20, desc[UR4][R30.64]
        @!P1 LDS.128 R20, [R34]
        FADD R40, R16, R20
        BRA `(.L_top)
    """
    assert _count(guarded) == (32, True)
    reset = guarded.replace("@!P1 LDS.128 R16", "ISETP.GE.AND P1, PT, R2, R3, PT\n@!P1 LDS.128 R16")
    assert _count(reset) == (16, True)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_engine_kernel_report(arch):
    """Every BatchNorm kernel is in the report with its ptxas registers (no spills: the build check's bar)
    and an in-flight figure for each of its paths."""
    report, method = cubin_report.kernel_report(arch)
    assert method.startswith("SASS")
    assert len(report) == len(batchnorm.kernel_expressions())
    for key, facts in report.items():
        assert 0 < facts["registers"] <= 255 and facts["spill_stores"] == facts["spill_loads"] == 0, key
        assert facts["inflight"]["scalar"] >= 2, key
        if key[2] == "spatial":
            assert facts["inflight"]["vec"] >= 16, key
    # the forward's batched walks (BN_FWD_BATCH): two 16-byte units of x in flight, on sm_80 too (its replay's
    # cached-or-global load is an if/else or a predicated pair: the count sees the two global loads together)
    for ctype in ("float", "__half"):
        assert report[("bn_fwd_train", ctype, "spatial")]["inflight"]["vec"] >= 32, ctype


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_row_major_kernel_report(arch):
    """The row-major kernels (channels last and per-activation) are in the report under family "nhwc", named
    by batchnorm.cu's base names, with no spills; on sm_90 each streaming loop of their 16-byte path keeps
    four 16-byte loads per array in flight (walk_rows' batches: x, and dy in the backward)."""
    report, method = cubin_report.kernel_report(arch, (None, 0), "nhwc")
    assert method.startswith("SASS")
    assert len(report) == len(batchnorm.nhwc_kernel_expressions())
    for key, facts in report.items():
        assert key[0] in cubin_report.KERNELS and key[2] == "nhwc", key
        assert 0 < facts["registers"] <= 255 and facts["spill_stores"] == facts["spill_loads"] == 0, key
        if arch == "sm_90":
            arrays = 2 if key[0].startswith("bn_bwd") else 1
            assert facts["inflight"]["vec"] >= 4 * 16 * arrays, key
    assert cubin_report.kernel_facts(arch, "float32", "per_activation") == \
        cubin_report.kernel_facts(arch, "float32", "spatial", "NHWC")


def test_gpu_model_script_runs_and_labels_its_figures():
    env = dict(os.environ, CYBN_DEVICE="softgpu")
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_model.py"), "--shape", "8,16,7,7",
                          "--shape", "64,12:per_activation", "--shape", "8,7,7,16:nhwc"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("MODEL, not a measurement")
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("shape"))
    assert "MODEL us" in lines[header] and "MODEL xlim" in lines[header]
    nd = len(gpu_model.engine_dtypes()[0])  # 3 shapes x the engine's dtypes x 3 ops
    rows = lines[header + 1:header + 1 + 3 * nd * 3]
    assert len(rows) == 9 * nd and all("float" in r for r in rows)
    for i, layout in enumerate(("NCHW", "rows", "NHWC")):  # the layout column, in the order given
        assert all(f" {layout} " in r for r in rows[3 * nd * i:3 * nd * (i + 1)]), layout
    tail = lines[header + 9 * nd + 1:]
    assert all(line.startswith("MODEL:") for line in tail[:5])
    for label in ("channels first: ", "channels last: ", "per-activation: "):  # a summary per layout
        assert any(line.startswith("MODEL: " + label) for line in tail), label
    # The engine offers layout="NHWC" (channels last): the script no longer lists it as missing.
    assert "channels_last (all shapes): not supported by the engine yet" not in lines


def test_ptx_fallback_when_nvdisasm_is_missing(monkeypatch):
    """Without nvdisasm the report counts on the PTX and says so: the same registers, never more in flight
    than the scheduled SASS (ptxas only hoists loads), and the same one load in the forward kernels."""
    sass, _ = cubin_report.kernel_report("sm_90")
    monkeypatch.setattr(cubin_report, "nvdisasm_path", lambda: None)
    report, method = cubin_report.kernel_report.__wrapped__("sm_90")
    assert method.startswith("PTX")
    assert report.keys() == sass.keys()
    for key, facts in report.items():
        assert facts["registers"] == sass[key]["registers"]
        for path in ("vec", "scalar"):
            if sass[key]["inflight"][path] is not None:
                assert 0 < facts["inflight"][path] <= sass[key]["inflight"][path], key
        if key[0] in ("bn_fwd_train", "bn_normalize"):
            assert facts["inflight"] == sass[key]["inflight"], key
