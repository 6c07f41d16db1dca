"""The watchdog: a launch that runs past CYBN_SOFTGPU_WATCHDOG thread-instructions fails with a report
instead of hanging. In a subprocess, because the limit is read when the library loads."""
from cuda.bindings import driver as cu

from ptxutil import run_python

SOURCE = r'''
extern "C" __global__ void spin(volatile int* flag) { while (*flag == 0) { } }
extern "C" __global__ void store(int* out) { out[threadIdx.x] = 7; }
'''


def run(script, **env_extra):
    return run_python(script, SOURCE, **env_extra)


def test_runaway_kernel_is_stopped_by_the_watchdog_and_the_library_stays_usable():
    proc = run("""
        import numpy as np
        from cybn import softgpu
        softgpu.load()
        from cuda.bindings import driver as cu
        import ptxutil as pu
        pu.ok(cu.cuInit(0)); ctx = pu.ok(cu.cuDevicePrimaryCtxRetain(0)); pu.ok(cu.cuCtxSetCurrent(ctx))
        with pu.Module(pu.compile_ptx(SOURCE)) as m, pu.Device() as dev:
            flag = dev.zeros(1, np.int32)
            r = pu.launch(m.fn("spin"), (1,), (32,), flag)
            report = softgpu.last_report()
            s = cu.cuCtxSynchronize()[0]
            out = dev.zeros(32, np.int32)
            r2 = pu.launch(m.fn("store"), (1,), (32,), out)
            print(int(r), int(s), int(r2), dev.get(out, 32, np.int32).sum(), "|", report.replace(chr(10), " "))
    """, CYBN_SOFTGPU_WATCHDOG="100000")
    assert proc.returncode == 0, proc.stderr
    codes, report = proc.stdout.split("|", 1)
    r, s, r2, total = (int(v) for v in codes.split())
    assert r == int(cu.CUresult.CUDA_ERROR_LAUNCH_FAILED)
    assert s == int(cu.CUresult.CUDA_ERROR_LAUNCH_FAILED)  # returned once more by the next synchronize
    assert "watchdog" in report.lower() and "spin" in report
    assert r2 == 0 and total == 7 * 32
