"""Out of memory on the software GPU: by a small CYBN_SOFTGPU_MEMORY (in a subprocess) and by the
injection API; the library stays usable afterwards. Also the environment's validation."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, code, ctx, device_alloc, from_device, ok, primary, to_device  # noqa: F401


def run_fresh(script, **env):
    """Run a Python script in a fresh process with the software GPU loaded; returns stdout lines."""
    prelude = "from cybn import softgpu; softgpu.load()\nfrom cuda.bindings import driver as cu\n"
    full_env = dict(os.environ, **env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(softgpu.__file__)))
    full_env["PYTHONPATH"] = os.pathsep.join([root, full_env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n"), proc.stderr


def test_memory_size_from_environment():
    out, _ = run_fresh("""
        print(cu.cuInit(0)[0] == 0)
        err, ctx = cu.cuDevicePrimaryCtxRetain(0); cu.cuCtxSetCurrent(ctx)
        print(cu.cuDeviceTotalMem(0)[1], cu.cuMemGetInfo()[1:])
        err, a = cu.cuMemAlloc(48 << 20); print(int(err))
        err, b = cu.cuMemAlloc(48 << 20); print(int(err))
        print(cu.cuMemGetInfo()[1])
        print(int(cu.cuMemFree(a)[0]))
        err, b = cu.cuMemAlloc(48 << 20); print(int(err))
        print(int(cu.cuMemFree(b)[0]))
    """, CYBN_SOFTGPU_MEMORY="64M")
    assert out[0] == "True"
    assert out[1] == "%d (%d, %d)" % (64 << 20, 64 << 20, 64 << 20)
    assert out[2] == "0"
    assert out[3] == str(int(R.CUDA_ERROR_OUT_OF_MEMORY))
    assert out[4] == str((64 << 20) - (48 << 20))
    assert out[5:8] == ["0", "0", "0"]


def test_driver_calls_before_cuinit_fail():
    out, _ = run_fresh("""
        print(int(cu.cuDeviceGetCount()[0]), int(cu.cuMemAlloc(16)[0]), int(cu.cuCtxGetCurrent()[0]))
    """)
    assert out[0] == " ".join([str(int(R.CUDA_ERROR_NOT_INITIALIZED))] * 3)


@pytest.mark.parametrize("var, value, words", [
    ("CYBN_SOFTGPU_MEMORY", "lots", "CYBN_SOFTGPU_MEMORY"),
    ("CYBN_SOFTGPU_CHECKS", "memcheck,speling", "speling"),
    ("CYBN_SOFTGPU_SEED", "x1", "CYBN_SOFTGPU_SEED"),
])
def test_bad_environment_refused_by_cuinit(var, value, words):
    out, err = run_fresh("print(int(cu.cuInit(0)[0]))", **{var: value})
    assert out[0] == str(int(R.CUDA_ERROR_INVALID_VALUE))
    assert "softgpu: " in err and words in err


def test_checks_from_environment():
    out, _ = run_fresh("print(sorted(k for k, v in softgpu.checks().items() if v))",
                       CYBN_SOFTGPU_CHECKS="initcheck,memcheck")
    assert out[0] == "['initcheck', 'memcheck']"


def test_injected_allocation_failure(ctx):
    live = softgpu.live_allocations()
    with softgpu.fail_alloc_after(2):
        a = device_alloc(64)
        assert code(cu.cuMemAlloc(64)) == R.CUDA_ERROR_OUT_OF_MEMORY
        b = device_alloc(64)  # one-shot: the next one works again
    with softgpu.fail_alloc_after(1):
        pass  # disabled on exit, before it fired
    c = device_alloc(64)
    for p in (a, b, c):
        ok(cu.cuMemFree(p))
    assert softgpu.live_allocations() == live
    # Still usable: a round trip works.
    p = to_device(np.arange(10, dtype=np.int64))
    np.testing.assert_array_equal(from_device(p, 10, np.int64), np.arange(10))
    ok(cu.cuMemFree(p))


def test_allocation_budget(ctx):
    _, live_bytes = softgpu.live_allocations()
    with softgpu.alloc_budget(live_bytes + 1000):
        a = device_alloc(600)
        assert code(cu.cuMemAlloc(600)) == R.CUDA_ERROR_OUT_OF_MEMORY
        b = device_alloc(400)
        ok(cu.cuMemFree(a))
        a = device_alloc(600)  # freed bytes count again
    c = device_alloc(10000)  # budget lifted
    for p in (a, b, c):
        ok(cu.cuMemFree(p))


def test_injection_arguments_validated():
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        softgpu.fail_alloc_after(0)
    with pytest.raises(ValueError, match="nbytes"):
        softgpu.alloc_budget(-5)
    with pytest.raises(ValueError, match="n must be"):
        softgpu.fail_module_loads(-1)
    with pytest.raises(TypeError, match="memcheck"):
        softgpu.set_checks(memcheck=1)
