"""Kernel compile benchmark: NVRTC cold-compile time of every registered kernel program, and the time a
fresh process needs to get them all from the disk cache. Host-side figures only (NVRTC runs on the CPU);
nothing here measures or claims GPU time.

    python bench/compile_bench.py [--arch compute_80|sm_86] [--repeat 5]

"Cold": a fresh process, an empty cache directory; per program, cybn.cache.compile_kernel (NVRTC +
writing the entry); the first one also pays for loading NVRTC, reported separately.
"Warm": a fresh process per repetition with the filled cache. The timer starts after interpreter
start-up, right before `import cybn.cache`, and stops when every program's CompiledImage is in hand:
it includes importing cybn.cache, reading each kernel file, the cache key (scanning and hashing every
included header, ours and the CUDA wheel's), and reading + verifying each entry. It excludes interpreter
start-up, importing the modules that register the variants (the program list is handed over as JSON),
and loading the images into a driver (cuModuleLoadData is the driver's cost, not the cache's)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLD = r"""
import json, sys, time
progs, target, arch = json.loads(sys.argv[1])
from cybn import cache
t = time.perf_counter()
from cybn import nvrtc
nvrtc.version()
load = time.perf_counter() - t
times = []
for src, opts, names in progs:
    t = time.perf_counter()
    cache.compile_kernel(src, names, tuple(opts), target, arch)
    times.append(time.perf_counter() - t)
print(json.dumps(dict(load=load, times=times, stats=cache.stats())))
"""

WARM = r"""
import json, sys, time
progs, target, arch = json.loads(sys.argv[1])
t0 = time.perf_counter()
from cybn import cache
t1 = time.perf_counter()
for src, opts, names in progs:
    cache.compile_kernel(src, names, tuple(opts), target, arch)
t2 = time.perf_counter()
print(json.dumps(dict(total=t2 - t0, imports=t1 - t0, load=t2 - t1, stats=cache.stats(),
                      nvrtc_loaded="cybn.jit.nvrtc" in sys.modules)))
"""


def child(code, arg, env):
    out = subprocess.run([sys.executable, "-c", code, json.dumps(arg)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="compute_80", help="compute_XY (PTX, default compute_80) or sm_XY (CUBIN)")
    p.add_argument("--repeat", type=int, default=5, help="warm runs (fresh process each); the median is shown")
    args = p.parse_args()
    target = "cubin" if args.arch.startswith("sm_") else "ptx"

    sys.path.insert(0, REPO)
    from cybn import variants
    missing = variants.load_all()
    progs = [(src, list(opts), list(names)) for src, opts, names in variants.programs()]
    if not progs:
        sys.exit("no kernel variants registered (are cybn.batchnorm / cybn.elementwise built?)")
    n_variants = sum(len(n) for _, _, n in progs)

    with tempfile.TemporaryDirectory(prefix="cybn-bench-cache-") as cache_dir:
        env = dict(os.environ, CYBN_CACHE_DIR=cache_dir, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("CYBN_CACHE", None)
        print(f"kernel programs: {len(progs)} ({n_variants} variants) for {target} {args.arch}"
              + (f"; not built, skipped: {', '.join(missing)}" if missing else ""))
        cold = child(COLD, (progs, target, args.arch), env)
        assert cold["stats"]["compiles"] == len(progs), cold["stats"]
        print(f"cold (empty cache, fresh process): importing cybn.nvrtc and loading NVRTC {cold['load'] * 1e3:.0f} ms, then")
        for (src, opts, names), secs in zip(progs, cold["times"]):
            print(f"  {src:<16} {len(names):3d} variants {' '.join(opts):<20} {secs * 1e3:8.1f} ms")
        print(f"  total NVRTC compile + cache write: {sum(cold['times']) * 1e3:.0f} ms")

        runs = [child(WARM, (progs, target, args.arch), env) for _ in range(max(1, args.repeat))]
        for r in runs:
            assert r["stats"]["compiles"] == 0 and r["stats"]["disk_hits"] == len(progs), r["stats"]
        med = lambda k: statistics.median(r[k] for r in runs) * 1e3  # noqa: E731
        print(f"warm (disk cache, fresh process, median of {len(runs)}): {med('total'):.1f} ms total "
              f"= import cybn.cache {med('imports'):.1f} ms + keys and entries {med('load'):.1f} ms "
              f"(NVRTC loaded: {runs[0]['nvrtc_loaded']}; goal < 50 ms)")


if __name__ == "__main__":
    main()
