"""`python -m cybn`: the main job. Runs each step in STEPS in order, printing what it found, then one
summary line: `cybn: OK (...)` (exit 0) or `cybn: FAILED <step>: <error>` (exit 1).

`python -m cybn warmup [...]` compiles every registered kernel variant ahead of time (cybn.warmup);
`python -m cybn --help` and `python -m cybn warmup --help` describe both.

A step is a function taking a Report and returning a short summary fragment (or None); it raises to
fail. Add one with the @step decorator, in the order it should run."""
import os
import sys
import time
import traceback

import numpy as np

STEPS = []  # (name, function)


def step(name):
    def register(fn):
        STEPS.append((name, fn))
        return fn
    return register


class Report:
    """Indented lines under the current step's heading."""

    def line(self, text):
        print(f"  {text}", flush=True)


@step("device")
def device_report(report):
    from cybn import backend
    from cybn.driver import device
    drv = backend.init()
    dev = device.get_device()
    major, minor = dev.compute_capability
    report.line(f"driver: {'real CUDA driver (libcuda.so.1)' if drv == 'cuda' else 'cybn software GPU'}")
    report.line(f"device {dev.ordinal}: {dev.name}, compute capability {major}.{minor} ({dev.arch}), "
                f"{dev.total_memory / 2**30:.2f} GiB, {dev.sm_count} SMs")
    return f"{drv} {dev.arch}"


# cache.last_outcome() -> how a report line says it
_OUTCOMES = {"compiled": "compiled by NVRTC", "disk": "loaded from the disk cache", "memory": "already in memory"}


def _origin(before, after):
    """How the programs requested between two cache.stats() snapshots were served."""
    if after["compiles"] > before["compiles"]:
        return _OUTCOMES["compiled"]
    if after["disk_hits"] > before["disk_hits"]:
        return _OUTCOMES["disk"]
    return _OUTCOMES["memory"]


@step("compile")
def compile_kernels(report):
    """Every registered program (elementwise.cu, batchnorm.cu, ...): compiled by NVRTC or loaded from the disk
    cache, then loaded into the context; one line per program with where it came from and how long it took.
    The programs compile in parallel, one thread per CPU (NVRTC runs without the GIL), as warmup's do."""
    from concurrent.futures import ThreadPoolExecutor
    from cybn.jit import cache, variants
    from cybn.jit import functions as kernels
    variants.load_all()
    target, arch = kernels.target()
    programs = variants.programs()

    def build(program):
        source, options, _ = program
        t0 = time.perf_counter()
        cache.compile_kernel(source, (), options, target, arch)
        return _OUTCOMES[cache.last_outcome()], time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        built = list(pool.map(build, programs))
    origins = []
    for (source, options, names), (origin, secs) in zip(programs, built):
        t1 = time.perf_counter()
        img, _module = kernels.get_module(source, options)  # the image built above, loaded into the context
        secs += time.perf_counter() - t1
        missing = [k for k in names if k not in img.lowered]
        if missing:
            raise AssertionError(f"{source} lacks kernels {missing}")
        origins.append(origin)
        opts = f" [{' '.join(options)}]" if options else ""
        report.line(f"{source}{opts}: {len(names)} kernels for {target} {arch}, {origin}, {secs * 1000:.0f} ms")
    compiled = sum(o.startswith("compiled") for o in origins)
    cached = sum(o.startswith("loaded") for o in origins)
    return (f"{len(origins)} programs: {compiled} compiled, {cached} from the disk cache "
            f"in {time.perf_counter() - t0:.1f} s")


@step("gpuarray")
def gpuarray_check(report):
    from cybn.array import elementwise, gpuarray
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32)
    y = rng.standard_normal(1000).astype(np.float32)
    gx, gy = gpuarray.to_gpu(x), gpuarray.to_gpu(y)
    if not np.array_equal(gx.get(), x):
        raise AssertionError("to_gpu/get round trip changed the data")
    out = elementwise.axpby(gx, gy, 2.0, -0.5, out=gpuarray.empty_like(gx)).get()
    ref = (np.float32(2.0) * x + np.float32(-0.5) * y).astype(np.float32)
    if not np.array_equal(out, ref):
        raise AssertionError(f"axpby differs from numpy by up to {np.abs(out - ref).max()}")
    h = gx.astype(np.float16).get()
    if not np.array_equal(h, x.astype(np.float16)):
        raise AssertionError("float32 -> float16 cast differs from numpy")
    f = gpuarray.empty((3, 7), np.float64).fill(1.25).get()
    if not np.array_equal(f, np.full((3, 7), 1.25)):
        raise AssertionError("fill differs from numpy")
    got = (gx * 2 - gy / 4).reshape(25, 40)[3:7, ::3].T.get()
    ref = (x * np.float32(2) - y / np.float32(4)).reshape(25, 40)[3:7, ::3].T
    if not np.array_equal(got, ref):
        raise AssertionError("GPUArray arithmetic, slicing or transpose differs from numpy")
    report.line("to_gpu/get, axpby (float32), cast float32->float16, fill (float64), arithmetic, slicing and "
                "transpose (float32): match numpy exactly")
    return "elementwise ok"


@step("batchnorm")
def batchnorm_check(report):
    """BatchNorm2D forward (training) and backward on sample data against a float64 numpy reference."""
    from cybn import batchnorm, softgpu
    from cybn.array import gpuarray
    from cybn.jit import cache
    from cybn.modules import BatchNorm2D
    before, t0 = cache.stats(), time.perf_counter()
    batchnorm.prepare(np.float32, "spatial")  # the kernels BatchNorm2D launches, in this context
    report.line(f"batchnorm.cu float32 spatial kernels: {_origin(before, cache.stats())}, "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms")
    n, c, h, w = 4, 3, 5, 7
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, c, h, w)) * 3 + 10).astype(np.float32)
    dy = rng.standard_normal((n, c, h, w)).astype(np.float32)
    bn = BatchNorm2D(c)
    scale = bn.scale.get().astype(np.float64).reshape(1, c, 1, 1)
    with softgpu.measure() if softgpu.active() else _nothing() as m:
        y = bn(gpuarray.to_gpu(x)).get()
        dx = bn.backward(gpuarray.to_gpu(dy)).get()
    # The maths, in float64: batch statistics over (N, H, W) per channel.
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mu = x64.mean(axis=(0, 2, 3), keepdims=True)
    var = x64.var(axis=(0, 2, 3), keepdims=True)
    invstd = 1.0 / np.sqrt(var + bn.epsilon)
    xhat = (x64 - mu) * invstd
    y_ref = scale * xhat
    m_count = n * h * w
    dbias = dy64.sum(axis=(0, 2, 3), keepdims=True)
    dscale = (dy64 * xhat).sum(axis=(0, 2, 3), keepdims=True)
    dx_ref = scale * invstd * (dy64 - dbias / m_count - xhat * dscale / m_count)
    errors = {
        "y": np.abs(y - y_ref).max(), "dx": np.abs(dx - dx_ref).max(),
        "scalegrad": np.abs(bn.scalegrad.get().reshape(dscale.shape) - dscale).max(),
        "biasgrad": np.abs(bn.biasgrad.get().reshape(dbias.shape) - dbias).max(),
        "running mean": np.abs(bn.mean.get().reshape(mu.shape) - mu).max(),
        "running var": np.abs(bn.var.get().reshape(var.shape) - var * m_count / (m_count - 1)).max(),
    }
    bad = {k: v for k, v in errors.items() if not v <= 1e-4 * max(1.0, m_count ** 0.5)}
    if bad:
        raise AssertionError(f"BatchNorm2D differs from the float64 reference: {bad}")
    report.line(f"BatchNorm2D({c}) on {x.shape} float32: forward + backward match float64 numpy "
                f"(max abs error {max(errors.values()):.1e})")
    if m is not None:
        import re
        names = [(re.match(r"_Z\d+(\w+?)I", k) or re.match(r"(.*)", k)).group(1) for k in m.per_kernel]
        per = ", ".join(f"{name} x{v['launches']}" for name, v in zip(names, m.per_kernel.values()))
        report.line(f"software GPU counters: {m.launches_count} launches ({per}), "
                    f"{(m.load_bytes + m.store_bytes) / x.size:.1f} global B/element over forward + backward "
                    f"+ parameter-gradient accumulation (GPU wall-clock not measured)")
    return "batchnorm ok"


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run(steps=None):
    """Run the steps; returns the process exit code."""
    done = []
    t0 = time.perf_counter()
    report = Report()
    for name, fn in steps or STEPS:
        print(f"[{name}]", flush=True)
        try:
            summary = fn(report)
        except Exception as exc:
            traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"cybn: FAILED {name}: {type(exc).__name__}: {first}", flush=True)
            return 1
        done.append(summary or name)
    print(f"cybn: OK ({'; '.join(done)}; {time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


def _parser():
    import argparse
    from cybn import __version__
    p = argparse.ArgumentParser(
        prog="python -m cybn",
        description="With no command: cybn's main job. It reports the device (a real GPU, or cybn's software GPU "
                    "when there is none), compiles or loads every kernel program (saying which, and how long it "
                    "took), checks GPUArray copies and elementwise kernels against numpy, and runs a BatchNorm2D "
                    "forward and backward against a float64 numpy reference. Prints one line per check and ends "
                    "with 'cybn: OK (...)' (exit 0) or 'cybn: FAILED <step>: <error>' (exit 1).",
        epilog="Environment: CYBN_DEVICE=auto|cuda|softgpu chooses the driver; CYBN_CACHE_DIR / CYBN_CACHE=0 the "
               "kernel cache. 'python -m cybn warmup --help' describes warmup's options.")
    p.add_argument("--version", action="version", version=f"cybn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{warmup}")
    sub.add_parser("warmup", add_help=False,
                   help="compile every kernel variant into the disk cache ahead of time "
                        "(options: --arch sm_XY|compute_XY, --all-archs, --jobs N)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "warmup":  # warmup parses its own options (and its own --help)
        from cybn.jit.warmup import main as warmup_main
        return warmup_main(argv[1:])
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    return run()


if __name__ == "__main__":
    sys.exit(main())
