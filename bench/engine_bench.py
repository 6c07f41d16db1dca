"""Host overhead of a cybn kernel launch versus a bare cydriver.cuLaunchKernel from Cython.

    python bench/engine_bench.py [--launches N]

Both paths launch the same empty kernel (4 arguments, 1 block of 1 thread) on the same stream, so both
pay the same driver cost: on the software GPU that cost includes interpreting the (empty) kernel, on
a real GPU it is the driver's enqueue. Nothing here skips or fakes the driver's work; we report:

  bare   a Cython loop calling cydriver.cuLaunchKernel with prebuilt kernelParams (no Python per launch)
  cybn   a Python loop calling Function(grid, block, args): argument checking and packing, stream
         resolution, context check, GIL release, then the same cuLaunchKernel
  and their difference (cybn's own per-launch host overhead) and ratio (goal: cybn within 2x of bare).

These are host-side wall-clock figures for issuing launches, not GPU timings."""
import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

KERNEL = r'''
extern "C" __global__ void empty_kernel(float* a, const float* b, int n, float s) {}
'''

BARE_PYX = r'''
# distutils: language = c++
from cuda.bindings cimport cydriver

def bare_launch(size_t func, size_t stream, long n, size_t a, size_t b, int k, float s):
    """n launches of `func` with prebuilt parameters, straight through cydriver."""
    cdef void* params[4]
    params[0] = &a
    params[1] = &b
    params[2] = &k
    params[3] = &s
    cdef long i
    cdef cydriver.CUresult r
    with nogil:
        for i in range(n):
            r = cydriver.cuLaunchKernel(<cydriver.CUfunction>func, 1, 1, 1, 1, 1, 1, 0,
                                        <cydriver.CUstream>stream, params, NULL)
            if r != cydriver.CUDA_SUCCESS:
                break
    if r != cydriver.CUDA_SUCCESS:
        raise RuntimeError(f"cuLaunchKernel failed: {r}")
'''

SETUP_PY = r'''
from setuptools import setup, Extension
from Cython.Build import cythonize
import sys
inc = sys.argv.pop(1)
setup(ext_modules=cythonize([Extension("bench_bare", ["bench_bare.pyx"], include_dirs=[inc])],
                            language_level=3, quiet=True))
'''


def build_bare(tmp):
    """Compile the bare-launch helper into `tmp` and import it."""
    from cybn import paths
    with open(os.path.join(tmp, "bench_bare.pyx"), "w") as f:
        f.write(BARE_PYX)
    with open(os.path.join(tmp, "setup.py"), "w") as f:
        f.write(SETUP_PY)
    subprocess.run([sys.executable, "setup.py", paths.cuda_include_dirs()[0], "build_ext", "--inplace", "-q"],
                   cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    sys.path.insert(0, tmp)
    import bench_bare
    return bench_bare


def interleaved_best(paths, n, rounds):
    """Best seconds per launch of each path over `rounds` rounds, the paths taking turns within a round
    so a busy machine slows them alike (best: the run least disturbed by other processes)."""
    best = {name: float("inf") for name, _ in paths}
    for _ in range(rounds):
        for name, fn in paths:
            t0 = time.perf_counter()
            fn(n)
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launches", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import numpy as np
    import cybn
    from cybn import backend
    backend.init()
    f = cybn.get_function(KERNEL, "empty_kernel", "PPif")
    a, b = cybn.empty(16, np.float32), cybn.zeros(16, np.float32)
    stream = cybn.Stream()
    with tempfile.TemporaryDirectory() as tmp:
        bare = build_bare(tmp)
        n = args.launches

        def run_bare(k):
            bare.bare_launch(f.handle, stream.handle, k, a.ptr, b.ptr, 16, 0.5)
            stream.synchronize()

        def run_cybn(k):
            grid, block, argv = 1, 1, (a, b, 16, 0.5)
            for _ in range(k):
                f(grid, block, argv, stream=stream)  # keyword stream: the common way to write it
            stream.synchronize()

        def run_cybn_current_stream(k):
            argv = (a, b, 16, 0.5)
            with cybn.stream(stream):
                for _ in range(k):
                    f(1, 1, argv)
            stream.synchronize()

        run_bare(1000), run_cybn(1000)  # warm up both paths
        best = interleaved_best([("bare", run_bare), ("cybn", run_cybn), ("current", run_cybn_current_stream)],
                                n, args.repeats)
        t_bare, t_cybn, t_cur = best["bare"], best["cybn"], best["current"]

    print(f"driver: {backend.name()} ({cybn.Device().name}); {n} launches x {args.repeats} interleaved rounds, best; "
          f"host-side issue cost per launch, not GPU time")
    print(f"  bare cydriver.cuLaunchKernel loop (Cython):  {t_bare * 1e6:8.2f} us")
    print(f"  cybn Function call, stream=Stream:            {t_cybn * 1e6:8.2f} us   "
          f"(+{(t_cybn - t_bare) * 1e6:.2f} us, {t_cybn / t_bare:.2f}x)")
    print(f"  cybn Function call, current stream:           {t_cur * 1e6:8.2f} us   "
          f"(+{(t_cur - t_bare) * 1e6:.2f} us, {t_cur / t_bare:.2f}x)")
    print("  both paths pay the same driver launch cost (on the software GPU: interpreting the empty "
          "kernel); the difference is cybn's own overhead.")
    verdict = "within" if t_cybn <= 2 * t_bare else "NOT within"
    print(f"  goal (cybn within 2x of bare): {verdict} ({t_cybn / t_bare:.2f}x)")


if __name__ == "__main__":
    main()
