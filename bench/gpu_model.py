"""MODEL of cybn's BatchNorm calls on a named GPU, beside the 1-read limit and PyTorch-native's kernels
modelled the same way. Nothing here is a GPU timing: no GPU is used, every figure is a model output.

    python bench/gpu_model.py                      # ResNet-50's BatchNorm layers (N = 32, 256) channels first
                                                   # and channels last, per-activation
    python bench/gpu_model.py --profile a100       # h100 (default), h200, a100
    python bench/gpu_model.py --shape 64,256,14,14 --shape 4096,1024:per_activation --shape 32,56,56,64:nhwc
    python bench/gpu_model.py --quick              # a few shapes
    python bench/gpu_model.py --markdown           # the table as Markdown (the README's)

Layouts: channels first (NCHW, batchnorm.cu's kernels), channels last (NHWC, shape (N, H, W, C): the
row-major kernels of batchnorm_nhwc.cu and their plans, cybn.batchnorm.plan(..., layout="NHWC")) and
per-activation (N, F) rows, which run the same row-major kernels (M = N rows of F features).

Per call it prints: the plan (cybn.batchnorm.plan; see below for the SM count it is made for), the bytes
the call moves (element streams computed exactly from the plan's walk, plus 48 B per statistic, CTA and
launch; tests/bench/test_gpu_model.py checks this against the software GPU's exact counters), the
kernels' registers and spills from an NVRTC CUBIN for the profile's architecture (ptxas -v), the bytes in
flight per thread (SASS loop structure, cybn.testing.cubin_report), CTAs per SM and waves, and the
modelled time, its fraction of HBM peak and its ratio to the 1-read limit (2 x element size per element
for forward-train and inference, 3 x for backward, over HBM peak), then PyTorch-native's modelled time.

Plans: the engine's own (cybn.batchnorm.plan) on the software GPU under CYBN_SOFTGPU_PROFILE=<profile>,
so grids come from that profile's SM count and occupancy calculator, as on the real GPU. The model itself (latency curve, occupancy, launch overhead,
every assumption) is documented in cybn/testing/perfmodel.py and the README.
"""
import argparse
import inspect
import os
import sys

import numpy as np

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.append(_ROOT)  # a source checkout that is not pip-installed

# ResNet-50 (torchvision v1.5): every BatchNorm layer's (C, H, W), with how many layers have it.
RESNET50 = [((64, 112, 112), 1), ((64, 56, 56), 6), ((256, 56, 56), 4), ((128, 56, 56), 1),
            ((128, 28, 28), 7), ((512, 28, 28), 5), ((256, 28, 28), 1), ((256, 14, 14), 11),
            ((1024, 14, 14), 7), ((512, 14, 14), 1), ((512, 7, 7), 5), ((2048, 7, 7), 4)]
PER_ACTIVATION = [(256, 4096), (4096, 1024)]
OPS = ("forward_train", "backward", "forward_infer")
QUICK = [((32, 64, 56, 56), "spatial", "NCHW"), ((256, 2048, 7, 7), "spatial", "NCHW"),
         ((32, 56, 56, 64), "spatial", "NHWC"), ((256, 4096), "per_activation", "NCHW")]


def default_shapes():
    """(shape, mode, layout): ResNet-50's layers channels first, then channels last (shape (N, H, W, C)),
    then the per-activation shapes."""
    out = [((n,) + chw, "spatial", "NCHW") for n in (32, 256) for chw, _ in RESNET50]
    out += [((n,) + chw[1:] + chw[:1], "spatial", "NHWC") for n in (32, 256) for chw, _ in RESNET50]
    return out + [(s, "per_activation", "NCHW") for s in PER_ACTIVATION]


def engine_dtypes():
    """The data types the engine takes (asked of the API, so a new one is listed when it lands), and the
    candidates it refuses."""
    from cybn import batchnorm
    cands = [np.dtype(np.float32), np.dtype(np.float16)]
    try:
        import ml_dtypes
        cands.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    ok = []
    for dt in cands:
        try:
            batchnorm.plan((2, 2, 2), dt)
            ok.append(dt)
        except (TypeError, ValueError):
            pass
    refused = [d.name for d in cands if d not in ok] + ([] if any(d.name == "bfloat16" for d in cands) else ["bfloat16"])
    return ok, refused


def engine_layouts():
    """Layouts the engine's functional API offers: channels-first always; others if it grows a parameter."""
    from cybn import batchnorm
    params = inspect.signature(batchnorm.forward_train).parameters
    if "layout" not in params and "memory_format" not in params:
        return ["channels_first"]
    from cybn import gpuarray  # a layout keyword alone is not support: ask the API with a tiny call
    x, s = gpuarray.zeros((2, 2, 2), np.float32), gpuarray.zeros((2,), np.float32)
    try:
        batchnorm.forward_infer(x, None, None, s, s, 1e-5, layout="NHWC")
    except NotImplementedError:
        return ["channels_first"]
    return ["channels_first", "channels_last"]


def select_plans(profile):
    """Start the software GPU under the profile; returns a description of where the plans come from."""
    from cybn import softgpu, backend
    from cybn.testing.perfmodel import DEVICES
    os.environ.setdefault("CYBN_DEVICE", "softgpu")
    os.environ.setdefault("CYBN_SOFTGPU_CHECKS", "none")
    os.environ.setdefault("CYBN_SOFTGPU_PROFILE", profile)
    backend.init()
    from cybn.device import Device
    sms = Device(0).sm_count
    if backend.name() != "softgpu" or not softgpu.active() or sms != DEVICES[profile].sms:
        raise SystemExit(f"gpu_model: needs the software GPU under CYBN_SOFTGPU_PROFILE={profile} "
                         f"(got {backend.name()} with {sms} SMs); unset CYBN_DEVICE and CYBN_SOFTGPU_PROFILE")
    return f"plans: the engine on the software GPU under CYBN_SOFTGPU_PROFILE={profile} ({sms} SMs)"


def model_rows(shapes, dtypes, profile):
    from cybn import batchnorm
    from cybn.testing import cubin_report, perfmodel
    dev = perfmodel.DEVICES[profile]
    rows = []
    for shape, mode, layout in shapes:
        for dt in dtypes:
            facts = cubin_report.kernel_facts(dev.arch, dt.name, mode, layout)
            for op in OPS:
                plan = batchnorm.plan(shape, dt, mode, op, layout=layout)
                m = perfmodel.model_call(shape, dt, mode, op, plan, facts, dev, layout)
                limit = perfmodel.ideal_seconds(shape, dt, op, dev)
                torch_t = perfmodel.model_torch(shape, dt, op, dev, layout)
                rows.append(dict(shape=shape, mode=mode, layout=_layout_name(mode, layout), dtype=dt.name, op=op,
                                 plan=plan, model=m, limit=limit, torch=torch_t, elements=int(np.prod(shape))))
    return rows


def _layout_name(mode, layout):
    return "rows" if mode == "per_activation" else layout


def _plan_text(r):
    p = r["plan"]
    return f"{p['grid'][0]}x{p['grid'][1]}/{p['block'][0]}x{p['block'][1]} v{p['vec']} c{p['cache_units']}"


def print_table(rows):
    print(f"{'shape':>20} {'layout':>6} {'dtype':>7} {'op':>13} {'plan grid/block vec cache':>26} {'CTA/SM':>6} {'waves':>6} "
          f"{'regs':>5} {'spill':>5} {'B/thr':>5} {'B/el':>6} {'MODEL us':>9} {'limit us':>8} {'MODEL xlim':>10} "
          f"{'MODEL %pk':>9} {'torch MODEL us':>14} {'MODEL cybn/torch':>16}")
    for r in rows:
        m = r["model"]
        first = m["launches"][0]
        regs = "/".join(str(ln["registers"]) for ln in m["launches"])
        print(f"{str(r['shape']):>20} {r['layout']:>6} {r['dtype']:>7} {r['op']:>13} {_plan_text(r):>26} "
              f"{'/'.join(str(ln['ctas_per_sm']) for ln in m['launches']):>6} {first['waves']:6.2f} {regs:>5} "
              f"{sum(ln['spills'] for ln in m['launches']):5d} "
              f"{'/'.join(str(ln['bytes_per_thread']) for ln in m['launches']):>5} "
              f"{m['bytes'] / r['elements']:6.2f} {m['seconds'] * 1e6:9.1f} {r['limit'] * 1e6:8.1f} "
              f"{m['seconds'] / r['limit']:10.2f} {100 * m['peak_fraction']:8.0f}% {r['torch'] * 1e6:14.1f} "
              f"{m['seconds'] / r['torch']:16.2f}")


def print_markdown(rows):
    print("| shape | layout | dtype | op | plan grid / block | CTAs/SM | regs | spill B | B/thread | B/el | MODEL us | limit us | "
          "MODEL x limit | MODEL % peak | PyTorch-native MODEL us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, p = r["model"], r["plan"]
        per = lambda key: "/".join(str(ln[key]) for ln in m["launches"])  # noqa: E731
        print(f"| {r['shape']} | {r['layout']} | {r['dtype']} | {r['op']} | {p['grid'][0]}x{p['grid'][1]} / {p['block'][0]}x{p['block'][1]} "
              f"| {per('ctas_per_sm')} | {per('registers')} | {per('spills')} | {per('bytes_per_thread')} | "
              f"{m['bytes'] / r['elements']:.2f} | {m['seconds'] * 1e6:.1f} | {r['limit'] * 1e6:.1f} | "
              f"{m['seconds'] / r['limit']:.2f} | {100 * m['peak_fraction']:.0f} | {r['torch'] * 1e6:.1f} |")


def summary(rows, label=""):
    """The summary lines of rows; label (e.g. "NHWC: ") names a subset."""
    lines = []
    ratios = [r["model"]["seconds"] / r["limit"] for r in rows]
    slower = [r for r in rows if r["model"]["seconds"] > r["torch"]]
    lines.append(f"MODEL: {label}{len(rows)} calls; time / 1-read limit from {min(ratios):.2f}x to {max(ratios):.2f}x "
                 f"(median {np.median(ratios):.2f}x); within 1.5x of the limit: {sum(x <= 1.5 for x in ratios)}")
    lines.append(f"MODEL: {label}cybn slower than PyTorch-native on {len(slower)} of {len(rows)} calls")
    for op in OPS:
        sel = [r for r in rows if r["op"] == op]
        if sel:
            t = sum(r["model"]["seconds"] for r in sel) / sum(r["limit"] for r in sel)
            tt = sum(r["torch"] for r in sel) / sum(r["limit"] for r in sel)
            lines.append(f"MODEL: {label}{op}: sum of times / sum of limits: cybn {t:.2f}x, PyTorch-native {tt:.2f}x")
    return lines


def parse_shape(text):
    """(shape, mode, layout) from N,C[,spatial...][:spatial|per_activation|nhwc]; nhwc: spatial mode,
    channels last, the shape given as N,[spatial...,]C."""
    dims, _, mode = text.partition(":")
    shape = tuple(int(v) for v in dims.split(","))
    mode = mode or ("spatial" if len(shape) > 2 else "per_activation")
    if len(shape) < 2 or mode not in ("spatial", "per_activation", "nhwc"):
        raise argparse.ArgumentTypeError(f"--shape wants N,C[,spatial...][:spatial|per_activation|nhwc], got {text!r}")
    return (shape, "spatial", "NHWC") if mode == "nhwc" else (shape, mode, "NCHW")


def main(argv=None):
    from cybn.testing import perfmodel
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(perfmodel.DEVICES), default="h100")
    ap.add_argument("--shape", type=parse_shape, action="append", help="N,C[,H,W...][:mode]; repeatable")
    ap.add_argument("--quick", action="store_true", help="three shapes")
    ap.add_argument("--markdown", action="store_true", help="the table as Markdown (for the README)")
    args = ap.parse_args(argv)
    where = select_plans(args.profile)
    from cybn.testing import cubin_report
    dev = perfmodel.DEVICES[args.profile]
    dtypes, refused = engine_dtypes()
    shapes = args.shape or (QUICK if args.quick else default_shapes())
    _, method = cubin_report.kernel_report(dev.arch)
    print(f"MODEL, not a measurement: {dev.name}, {dev.sms} SMs, HBM {dev.hbm_gbs:.0f} GB/s, L0 {dev.latency_ns:.0f} ns, "
          f"latency L(u) = L0/(1-u^{perfmodel.LATENCY_EXPONENT}), launch {perfmodel.LAUNCH_US} us, "
          f"memset {perfmodel.MEMSET_US} us, cooperative barrier {perfmodel.BARRIER_US} us; "
          f"registers from NVRTC {dev.arch} CUBIN (ptxas -v), "
          f"bytes in flight per thread from {method}")
    print(where)
    print(f"MODEL: {perfmodel.needed_inflight_per_sm(dev) / 1024:.0f} KiB in flight per SM reach 90 % of peak on "
          f"this curve")
    print("columns: CTA/SM, regs, B/thr per launch; B/el = bytes moved per element (computed from the plan, "
          "checked against the software GPU's counters by the tests)")
    rows = model_rows(shapes, dtypes, args.profile)
    (print_markdown if args.markdown else print_table)(rows)
    for line in summary(rows):
        print(line)
    for name, label in (("NCHW", "channels first: "), ("NHWC", "channels last: "), ("rows", "per-activation: ")):
        sel = [r for r in rows if r["layout"] == name]
        if sel and len(sel) < len(rows):
            for line in summary(sel, label):
                print(line)
    for name in refused:
        print(f"{name} (all shapes): not supported by the engine yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
