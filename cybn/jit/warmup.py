"""`python -m cybn warmup`: compile every registered kernel variant into the disk cache ahead of time, so
the first real launch loads it instead of waiting for NVRTC.

    python -m cybn warmup                  # for the current device (the software GPU: PTX compute_80)
    python -m cybn warmup --arch sm_86     # CUBIN for sm_86 (compute_XY: PTX); repeatable
    python -m cybn warmup --all-archs      # PTX compute_80 + CUBIN for every arch NVRTC supports

Progress goes to stderr (a \\r-updated bar on a terminal, plain lines otherwise); one line per variant
goes to stdout. Exit status 1 if any program failed to compile."""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .. import paths
from . import cache, nvrtc_options, variants
from ..errors import CompileError


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m cybn warmup",
        description="Compile every registered kernel variant (elementwise.cu, batchnorm.cu) into cybn's disk cache "
                    "ahead of time, so the first launch loads it instead of waiting for NVRTC. One line per variant "
                    "on stdout; progress on stderr (a bar on a terminal, plain lines otherwise). Exit status 1 if "
                    "any program failed to compile.",
        epilog="Cache directory: CYBN_CACHE_DIR, else $XDG_CACHE_HOME/cybn, else ~/.cache/cybn.")
    p.add_argument("--arch", action="append", default=[],
                   help="sm_XY (CUBIN) or compute_XY (PTX); repeatable; default: the current device's")
    p.add_argument("--all-archs", action="store_true", help="PTX compute_80 and CUBIN for every arch NVRTC supports")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: CPU count)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    for a in args.arch:
        if not nvrtc_options._ARCH.match(a):
            p.error(f"--arch {a!r}: expected sm_XY or compute_XY")
    return args


def _targets(args):
    """The (target, arch) pairs to build."""
    if args.all_archs:
        from . import nvrtc
        return [nvrtc_options.SOFTGPU_TARGET] + [("cubin", f"sm_{a}") for a in nvrtc.supported_archs()]
    if args.arch:
        return [("cubin" if a.startswith("sm_") else "ptx", a) for a in dict.fromkeys(args.arch)]
    from .. import backend
    backend.init()
    if backend.name() == "softgpu":
        return [nvrtc_options.SOFTGPU_TARGET]
    from ..driver.device import get_device
    return [nvrtc_options.target_for(get_device().compute_capability)]


class _Progress:
    """Progress on stderr: a one-line bar redrawn with \\r on a terminal; one plain line per program
    otherwise (logs and pipes get no carriage returns)."""

    def __init__(self, total, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())

    def step(self, label):
        self.done += 1
        if not self.tty:
            self.stream.write(f"warmup {self.done}/{self.total} {label}\n")
            self.stream.flush()
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        line = f"\rwarmup [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label}"
        self.stream.write(line[:120].ljust(80))
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _build(job):
    """Compile one program; returns (job, outcome, seconds, error)."""
    (target, arch), (source, options, _names) = job
    t0 = time.perf_counter()
    try:
        cache.compile_kernel(source, (), options, target, arch)
    except CompileError as exc:
        return job, "FAILED", time.perf_counter() - t0, exc
    outcome = "compiled" if cache.last_outcome() == "compiled" else "cached"
    return job, outcome, time.perf_counter() - t0, None


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    missing = variants.load_all()
    if missing:
        print(f"warmup: not built yet, skipped: {', '.join(missing)}", file=sys.stderr)
    programs = variants.programs()
    if not programs:
        print("warmup: no kernel variants are registered; nothing to compile", file=sys.stderr)
        return 0
    targets = _targets(args)
    jobs = [(t, p) for t in targets for p in programs]
    n_variants = sum(len(p[2]) for p in programs) * len(targets)
    print(f"warmup: {n_variants} variants in {len(jobs)} programs for {', '.join(a for _, a in targets)}; "
          f"cache: {paths.cache_dir() if cache.enabled() else 'disabled (CYBN_CACHE=0)'}", file=sys.stderr)
    bar = _Progress(len(jobs))
    results = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # NVRTC compiles with the GIL released
        for job, outcome, secs, err in pool.map(_build, jobs):
            (_, arch), (source, _, _) = job
            bar.step(f"{source} {arch} {outcome}")
            results.append((job, outcome, secs, err))
    bar.close()
    failed = 0
    for ((target, arch), (source, options, names)), outcome, secs, err in results:
        opts = " ".join(options)
        for name in names:
            print(f"{arch:<12} {target:<5} {source} {name}{'  [' + opts + ']' if opts else ''}: {outcome} ({secs:.2f} s)")
        if err is not None:
            failed += 1
            print(str(err), file=sys.stderr)
    counts = {o: sum(1 for r in results if r[1] == o) for o in ("compiled", "cached", "FAILED")}
    print(f"warmup: {counts['compiled']} programs compiled, {counts['cached']} from cache, {counts['FAILED']} failed "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
