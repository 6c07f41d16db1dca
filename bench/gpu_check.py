"""One-run GPU check: correctness on the device, then timings of cybn, PyTorch (cuDNN on and off) and a
device-to-device copy of the same bytes, beside the model's prediction (bench/gpu_model.py).

    CYBN_DEVICE=cuda python bench/gpu_check.py            # on a GPU machine: < 5 minutes
    python bench/gpu_check.py --smoke                     # tiny shapes, few repetitions (CI: software GPU)

Needs the CUDA driver, cuda-python, numpy and the NVRTC wheel; PyTorch optional (timed when it has CUDA);
no network. Builds nothing but NVRTC compiles of cybn's kernels (through its kernel cache).

1. Correctness: every BatchNorm entry point the functional API offers (forward_train, forward_infer,
   backward, backward_infer), every mode (batchnorm.Mode), every dtype the engine accepts and every
   layout it offers (asked of the API, so new ones join automatically), affine and non-affine, on a dozen
   shapes covering each plan class (16-byte units, scalar, row vectors, split channels, per-activation),
   compared with the float64 numpy reference (cybn.testing.reference). Any mismatch: exit 1.
2. Timings: CUDA events around each call, warm-up, the median of repetitions. GB/s = the call's 1-read
   bytes (2 x element size per element for forward-train and inference, 3 x for backward) / time; the copy
   moves the same bytes (it reads and writes half of them). Each row also prints the MODEL time of the
   call on the nearest profile, so the model can be calibrated.
On the software GPU every timing is labelled "software GPU: meaningless as a GPU timing".
"""
import argparse
import os
import statistics
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.join(_HERE, "..")
sys.path.insert(0, _HERE)
sys.path.append(_ROOT)

MEANINGLESS = "software GPU: meaningless as a GPU timing"
CHECK_SHAPES = [((2, 3, 5, 7), "spatial"), ((4, 8, 16, 16), "spatial"), ((1, 5, 203), "spatial"),
                ((8, 64, 14, 14), "spatial"), ((16, 16, 7, 7), "spatial"), ((2, 4, 128, 128), "spatial"),
                ((3, 2, 9, 9, 9), "spatial"), ((37, 70), "per_activation"), ((512, 96), "per_activation"),
                ((8192, 6), "per_activation"), ((6, 5, 4), "per_activation"), ((1, 17), "per_activation")]
SMOKE_CHECK = [((2, 3, 5, 7), "spatial"), ((2, 4, 16, 8), "spatial"), ((9, 12), "per_activation")]
TIME_SHAPES = [((32, 64, 56, 56), "spatial"), ((32, 256, 14, 14), "spatial"), ((32, 2048, 7, 7), "spatial"),
               ((256, 64, 112, 112), "spatial"), ((256, 512, 28, 28), "spatial"), ((256, 1024, 14, 14), "spatial"),
               ((256, 4096), "per_activation"), ((4096, 1024), "per_activation")]
SMOKE_TIME = [((2, 8, 8, 8), "spatial")]
TOL = {"float32": dict(rtol=1e-4, atol=1e-4), "float16": dict(rtol=2e-3, atol=4e-3),
       "bfloat16": dict(rtol=1.6e-2, atol=3.2e-2), "float64": dict(rtol=1e-10, atol=1e-10)}  # bf16: 8x fp16's (3 fewer bits)
STAT_TOL = dict(rtol=1e-4, atol=1e-4)


def entry_points():
    from cybn import batchnorm
    return [op for op in ("forward_train", "forward_infer", "backward", "backward_infer") if hasattr(batchnorm, op)]


def modes():
    from cybn import batchnorm
    return [m.value for m in batchnorm.Mode]


def _inputs(rng, shape, mode, dtype):
    from cybn.testing import reference as ref
    _, _, K, _ = ref.layout(shape, mode)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    p = dict(scale=rng.uniform(0.5, 1.5, K).astype(np.float32), bias=rng.standard_normal(K).astype(np.float32),
             rm=(0.1 * rng.standard_normal(K)).astype(np.float32), rv=rng.uniform(0.5, 2.0, K).astype(np.float32))
    return x, dy, p


def check_case(rng, shape, mode, dtype, op, affine, wrong=0.0):
    """Run one call on the device and compare it with the float64 reference; returns a list of problems.
    wrong: added to the reference's main output (tests inject it to prove the comparison bites)."""
    from cybn.testing import reference as ref
    from cybn import batchnorm, gpuarray
    g = gpuarray.to_gpu
    x, dy, p = _inputs(rng, shape, mode, dtype)
    scale, bias = (p["scale"], p["bias"]) if affine else (None, None)
    gs, gb = (g(scale), g(bias)) if affine else (None, None)
    eps, factor = 1e-5, 0.3
    if op == "forward_train":
        rm, rv = g(p["rm"]), g(p["rv"])
        y, sm, si = batchnorm.forward_train(g(x), gs, gb, rm, rv, eps, factor, mode=mode)
        want = ref.forward_train(x, scale, bias, p["rm"], p["rv"], eps, factor, mode)
        got = [y.get(), rm.get(), rv.get(), sm.get(), si.get()]
        names = ["y", "running_mean", "running_var", "save_mean", "save_invstd"]
    elif op == "forward_infer":
        got = [batchnorm.forward_infer(g(x), gs, gb, g(p["rm"]), g(p["rv"]), eps, mode=mode).get()]
        want, names = [ref.forward_infer(x, scale, bias, p["rm"], p["rv"], eps, mode)], ["y"]
    else:
        if op == "backward":
            _, _, _, mean, invstd = ref.forward_train(x, None, None, p["rm"], p["rv"], eps, factor, mode)
            mean, invstd = mean.astype(np.float32), invstd.astype(np.float32)
            out = batchnorm.backward(g(x), g(dy), gs, g(mean), g(invstd), mode=mode)
            want = ref.backward(x, dy, scale, mean, invstd, mode)
        else:
            out = batchnorm.backward_infer(g(x), g(dy), gs, g(p["rm"]), g(p["rv"]), eps, mode=mode)
            want = ref.backward_infer(x, dy, scale, p["rm"], p["rv"], eps, mode)
        got, names = [a.get() for a in out], ["dx", "scale_grad", "bias_grad"]
    want = [np.asarray(w, np.float64) for w in want]
    want[0] = want[0] + wrong
    problems = []
    for name, a, w in zip(names, got, want):
        a = np.asarray(a, np.float64).reshape(w.shape)
        tol = TOL[np.dtype(dtype).name] if a.shape == x.shape else STAT_TOL
        if name in ("scale_grad", "bias_grad"):  # sums over M values: scale the tolerance with them
            tol = dict(rtol=1e-3 if np.dtype(dtype) == np.float16 else 1e-4, atol=1e-3 * max(1, x.size // w.size) ** 0.5)
        if not np.all(np.isfinite(a)) or not np.allclose(a, w, **tol):
            err = float(np.max(np.abs(a - w))) if np.all(np.isfinite(a)) else float("nan")
            problems.append(f"{name}: max |error| {err:.3g}")
    return problems


def correctness(shapes, dtypes, wrong):
    rng = np.random.default_rng(20261201)
    failures = total = 0
    for shape, mode in shapes:
        if mode not in modes():
            continue
        for dt in dtypes:
            for op in entry_points():
                for affine in (True, False):
                    total += 1
                    problems = check_case(rng, shape, mode, dt, op, affine, wrong)
                    if problems:
                        failures += 1
                        print(f"FAIL {op} {shape} {mode} {dt.name} {'affine' if affine else 'non-affine'}: "
                              + "; ".join(problems))
    print(f"correctness: {total - failures} of {total} calls match the float64 reference"
          + ("" if not failures else f"; {failures} FAILED"))
    return failures


# ---------------------------------------------------------------- timing
def _median_ms(fn, reps, warmup, events):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = events()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_ms(end))
    return statistics.median(times)


def _cybn_events():
    from cybn import Event
    return Event(), Event()


def cybn_call(shape, mode, dtype, op):
    """A closure running one cybn call on preallocated device arrays."""
    from cybn import batchnorm, gpuarray
    rng = np.random.default_rng(1)
    x, dy, p = _inputs(rng, shape, mode, dtype)
    g = gpuarray.to_gpu
    gx, gdy, out = g(x), g(dy), gpuarray.empty(shape, dtype)
    s, b, rm, rv = g(p["scale"]), g(p["bias"]), g(p["rm"]), g(p["rv"])
    K = p["scale"].size
    a1, a2 = gpuarray.empty((K,), np.float32), gpuarray.empty((K,), np.float32)
    if op == "forward_train":
        return lambda: batchnorm.forward_train(gx, s, b, rm, rv, 1e-5, 0.1, out=out, save_mean=a1, save_invstd=a2,
                                               mode=mode)
    if op == "forward_infer":
        return lambda: batchnorm.forward_infer(gx, s, b, rm, rv, 1e-5, out=out, mode=mode)
    return lambda: batchnorm.backward(gx, gdy, s, rm, rv, out=out, scale_grad=a1, bias_grad=a2, mode=mode)


def copy_call(nbytes):
    from cuda.bindings import driver
    from cybn import current_stream, gpuarray
    src, dst = gpuarray.zeros((nbytes,), np.uint8), gpuarray.empty((nbytes,), np.uint8)
    stream = current_stream().handle  # the stream cybn's calls and Event.record() use

    def run():
        (err,) = driver.cuMemcpyDtoDAsync(dst.ptr, src.ptr, nbytes, stream)
        if int(err):
            raise RuntimeError(f"cuMemcpyDtoDAsync failed: {err}")
    return run


def torch_calls(shape, dtype, op):
    """{label: closure} of torch.nn.functional.batch_norm on CUDA tensors, cuDNN on and off; {} without
    a CUDA-enabled torch."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    import torch.nn.functional as F
    tdt = {"float32": torch.float32, "float16": torch.float16}.get(np.dtype(dtype).name)
    if tdt is None:
        return {}
    C = shape[1] if len(shape) > 2 else shape[1]
    x = torch.randn(*shape, device="cuda", dtype=tdt, requires_grad=op == "backward")
    w = torch.ones(C, device="cuda", requires_grad=op == "backward")
    b = torch.zeros(C, device="cuda", requires_grad=op == "backward")
    rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
    dy = torch.randn_like(x)
    calls = {}
    for label, cudnn in (("torch cuDNN", True), ("torch native", False)):
        def make(cudnn=cudnn):
            def fwd(train):
                with torch.backends.cudnn.flags(enabled=cudnn):
                    return F.batch_norm(x, rm, rv, w, b, training=train, momentum=0.1, eps=1e-5)
            if op == "forward_train":
                return lambda: fwd(True)
            if op == "forward_infer":
                return lambda: fwd(False)
            y = fwd(True)
            return lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)
        calls[label] = make()
    return calls


class _TorchEvent:
    """torch.cuda.Event with cybn.Event's elapsed_ms (torch calls it elapsed_time)."""

    def __init__(self):
        import torch
        self.event = torch.cuda.Event(enable_timing=True)

    def record(self):
        self.event.record()

    def synchronize(self):
        self.event.synchronize()

    def elapsed_ms(self, end):
        return self.event.elapsed_time(end.event)


def _torch_events():
    return _TorchEvent(), _TorchEvent()


def profile_for(device_name):
    name = device_name.upper()
    for key in ("H200", "H100", "A100"):
        if key in name:
            return key.lower(), False
    return "h100", True


def timings(shapes, dtypes, reps, warmup, software, profile):
    import gpu_model
    from cybn import batchnorm
    from cybn.device import Device
    sms = Device(0).sm_count
    from cybn.testing import cubin_report, perfmodel
    dev = perfmodel.DEVICES[profile]
    label = f"  [{MEANINGLESS}]" if software else ""
    print(f"MODEL column: {dev.name} numbers, bytes in flight per thread from {cubin_report.kernel_report(dev.arch)[1]}"
          + (f", on this device's own plans ({sms} SMs, not {dev.sms})" if sms != dev.sms else ""))
    print(f"{'shape':>20} {'dtype':>7} {'op':>13} {'impl':>13} {'time us':>9} {'GB/s':>8} {'x copy':>7} "
          f"{'MODEL us (' + profile + ')':>16}")
    for shape, mode in shapes:
        for dt in dtypes:
            facts = cubin_report.kernel_facts(dev.arch, dt.name, mode)
            for op in gpu_model.OPS:
                ideal = perfmodel.IDEAL[op] * dt.itemsize * int(np.prod(shape))
                plan = batchnorm.plan(shape, dt, mode, op)
                predicted = {"cybn": perfmodel.model_call(shape, dt, mode, op, plan, facts, dev)["seconds"],
                             "torch native": perfmodel.model_torch(shape, dt, op, dev)}
                copy_ms = _median_ms(copy_call(ideal // 2), reps, warmup, _cybn_events)
                rows = [("copy", copy_ms, None)]
                rows.append(("cybn", _median_ms(cybn_call(shape, mode, dt, op), reps, warmup, _cybn_events),
                             predicted["cybn"]))
                if not software:
                    for name, fn in torch_calls(shape, dt, op).items():
                        rows.append((name, _median_ms(fn, reps, warmup, _torch_events), predicted.get(name)))
                for name, ms, model in rows:
                    gbs = ideal / (ms * 1e-3) / 1e9 if ms > 0 else float("inf")
                    ratio = copy_ms / ms if ms > 0 else float("inf")
                    m = f"{model * 1e6:16.1f}" if model is not None else f"{'-':>16}"
                    print(f"{str(shape):>20} {dt.name:>7} {op:>13} {name:>13} {ms * 1e3:9.1f} {gbs:8.1f} "
                          f"{ratio:7.2f} {m}{label}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="one-run GPU check: correctness, then timings beside the model")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--inject-wrong-reference", type=float, default=0.0, metavar="DELTA",
                    help="add DELTA to every reference output (to prove the correctness section can fail)")
    args = ap.parse_args(argv)
    from cybn import backend
    backend.init()
    import gpu_model
    from cybn.device import Device
    d = Device(0)
    software = backend.name() == "softgpu"
    print(f"device: {d.name} ({'software GPU' if software else 'CUDA driver'}), compute capability "
          f"{d.compute_capability[0]}.{d.compute_capability[1]}, {d.sm_count} SMs")
    dtypes, refused = gpu_model.engine_dtypes()
    print(f"engine offers: entry points {', '.join(entry_points())}; modes {', '.join(modes())}; dtypes "
          f"{', '.join(t.name for t in dtypes)}; layouts {', '.join(gpu_model.engine_layouts())}"
          + (f"; not offered: {', '.join(refused)}" if refused else ""))
    failures = correctness(SMOKE_CHECK if args.smoke else CHECK_SHAPES, dtypes, args.inject_wrong_reference)
    profile, guessed = profile_for(d.name)
    print(f"timings: CUDA events, median of {args.reps or (2 if args.smoke else 20)} after warm-up; MODEL column: "
          f"bench/gpu_model.py's prediction on profile {profile}" + (" (device not in the model's table)" if guessed else ""))
    if software:
        print(f"every timing below: {MEANINGLESS}")
    timings(SMOKE_TIME if args.smoke else TIME_SHAPES, dtypes, args.reps or (2 if args.smoke else 20),
            1 if args.smoke else 5, software, profile)
    if failures:
        print(f"gpu_check: {failures} correctness failure(s)")
        return 1
    print("gpu_check: correctness passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
