"""Compile, before a large test run starts, every kernel program its tests will ask the kernel cache for:
each registered program as the software GPU's PTX, and as sm_80/sm_90 CUBIN with ptxas' report (the
requests of the performance-model tests and of the build check, tests/nvrtc/test_cubin_buildcheck.py), in
parallel (NVRTC runs without the GIL). Left to the tests, each program is compiled by the first test that
needs it, one at a time. Nothing is asserted here: the tests still ask for what they need, and a program
missing from this list is compiled where it is first used, as before."""
import os
import time
from concurrent.futures import ThreadPoolExecutor

MIN_TESTS = 1000  # a run this large needs most programs; a handful of tests compiles only its own
REPORTED_ARCHS = ("sm_80", "sm_90")


def requests():
    """(source, options, name expressions, target, arch) for every program to build."""
    from cybn.jit import nvrtc_options, variants
    missing = variants.load_all()
    if missing:
        return []
    target, arch = nvrtc_options.SOFTGPU_TARGET
    out = []
    for source, options, names in variants.programs():
        out.append((source, options, names, target, arch))
        out += [(source, options + ("--ptxas-options=-v",), names, "cubin", a) for a in REPORTED_ARCHS]
    return out


def _build(request):
    """True if built; False if it failed (the tests that need the program report the failure themselves)."""
    from cybn.jit import cache
    source, options, names, target, arch = request
    try:
        text, name, directory = cache.resolve_source(source)
        if target == "cubin":  # as the build check and cybn.testing.cubin_report ask for it
            cache.compile_cached(text, name, options, names, target, arch, source_dir=directory)
        else:  # as the engine asks for it (cybn.jit.functions)
            cache.compile_kernel(source, (), options, target, arch)
    except Exception:
        return False
    return True


def prewarm(n_tests):
    """Build requests() on every CPU when the run has at least MIN_TESTS tests; returns a summary line."""
    if n_tests < MIN_TESTS or os.environ.get("CYBN_TEST_PREWARM", "1") == "0":
        return None
    todo = requests()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failed = list(pool.map(_build, todo)).count(False)
    return (f"kernel cache prewarmed: {len(todo) - failed} programs in {time.perf_counter() - t0:.0f} s"
            + (f"; {failed} failed to compile (left to the tests that use them)" if failed else ""))
