"""cybn.softgpu itself: loading rules, errors when not loaded, measure(), checks and seed setters."""
import ctypes.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ok


def run_python(script, **env):
    full_env = dict(os.environ, **env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(softgpu.__file__)))
    full_env["PYTHONPATH"] = os.pathsep.join([root, full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_load_is_idempotent_and_path_is_packaged():
    assert softgpu.load() is softgpu.load()
    expected = os.environ.get("CYBN_SOFTGPU_LIBRARY") or os.path.join("cybn", "_softgpu", "libcuda.so.1")
    assert softgpu.library_path().endswith(expected)


def test_functions_need_the_library_loaded():
    proc = run_python("""
        from cybn import softgpu
        assert not softgpu.active()
        for call in (softgpu.counters, softgpu.live_allocations, softgpu.last_report, softgpu.checks):
            try:
                call()
            except RuntimeError as e:
                assert "not loaded" in str(e), e
            else:
                raise SystemExit("no error from %s" % call.__name__)
        import sys
        assert "cuda.bindings" not in sys.modules  # importing cybn.softgpu does not pull it in
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_missing_library_is_a_clear_error(tmp_path):
    proc = run_python("""
        from cybn import softgpu
        try:
            softgpu.load()
        except FileNotFoundError as e:
            print(e)
    """, CYBN_SOFTGPU_LIBRARY=str(tmp_path / "nothing" / "libcuda.so.1"))
    assert proc.returncode == 0 and "software GPU library not found" in proc.stdout, proc.stderr


def test_refuses_when_another_libcuda_is_loaded(tmp_path):
    # Stand-in for a real driver: any shared library mapped under the name libcuda.so.1.
    other = ctypes.util.find_library("z") or ctypes.util.find_library("m")
    fake = tmp_path / "libcuda.so.1"
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        if os.path.exists(os.path.join(d, other)):
            shutil.copy(os.path.join(d, other), fake)
            break
    else:
        pytest.fail("no system library found to stand in for a real driver")
    proc = run_python("""
        import ctypes, sys
        ctypes.CDLL(%r, mode=ctypes.RTLD_GLOBAL)
        from cybn import softgpu
        try:
            softgpu.load()
        except RuntimeError as e:
            print(e)
    """ % str(fake))
    assert proc.returncode == 0 and "already loaded" in proc.stdout and str(fake) in proc.stdout, proc.stderr


def test_checks_setters_restore():
    before = softgpu.checks()
    # Tests run with all checks; streamcheck is on by default in async mode only.
    on = softgpu.async_mode()
    assert before == {"memcheck": True, "racecheck": True, "initcheck": True, "streamcheck": on}
    with softgpu.checks_set(memcheck=False, initcheck=False, streamcheck=not on):
        assert softgpu.checks() == {"memcheck": False, "racecheck": True, "initcheck": False, "streamcheck": not on}
    assert softgpu.checks() == before
    previous = softgpu.set_checks(racecheck=False)
    assert previous == before and not softgpu.checks()["racecheck"]
    softgpu.set_checks(**previous)
    assert softgpu.checks() == before


def test_seed_setter_and_context_manager():
    start = softgpu.get_seed()
    with softgpu.seed(12345):
        assert softgpu.get_seed() == 12345
    assert softgpu.get_seed() == start
    with pytest.raises(ValueError):
        softgpu.set_seed(-1)


def test_measure_diffs_and_reset():
    ok(cu.cuInit(0))
    c = ok(cu.cuDevicePrimaryCtxRetain(0))
    ok(cu.cuCtxPushCurrent(c))
    try:
        p = ok(cu.cuMemAlloc(4096))
        with softgpu.measure() as m:
            ok(cu.cuMemsetD8(p, 0, 4096))
            ok(cu.cuMemsetD8(p, 0, 100))
        assert m.counters["memset"] == {"bytes": 4196, "calls": 2}
        assert m.launches == [] and m.per_kernel == {}
        softgpu.reset_counters()
        counts = softgpu.counters()
        assert counts["memset"] == {"bytes": 0, "calls": 0} and counts["total"]["launches"] == 0
        assert counts["live_allocations"]["device_count"] == softgpu.live_allocations()[0]
        ok(cu.cuMemFree(p))
    finally:
        ok(cu.cuCtxPopCurrent())
        ok(cu.cuDevicePrimaryCtxRelease(0))
