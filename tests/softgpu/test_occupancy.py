"""Occupancy as NVIDIA's occupancy calculator computes it, per device profile, against cases worked out
by hand from the documented rules (CUDA Occupancy Calculator / cuda_occupancy.h):

  warps      w = ceil(threads / 32);                      blocks <= max warps per SM // w
  registers  per warp: regs * 32 rounded up to 256; the register file is 4 sub-partitions of
             registers_per_SM / 4, each holding floor(16384 / per-warp) warps on every profile here;
             blocks <= 4 * floor(16384 / per-warp) // w
             a block whose w * per-warp (or roundup(w, 4) * per-warp) exceeds 65536 cannot launch at all
  shared     (static + dynamic + reserve) rounded up to the unit; blocks <= shared per SM // that
             (reserve 1 KiB and unit 128 on sm_80/89/90; reserve 0 and unit 256 on sm_75)
  slots      blocks <= max blocks per SM

The kernel's registers are set with softgpu.set_function_registers (as if ptxas had allocated that
many), so every case below is pure arithmetic on documented numbers."""
import json
import os

import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, code, ctx, ok, primary  # noqa: F401  (fixtures)
from fresh import run_fresh

FA = cu.CUfunction_attribute
PTX = b"""
.version 8.0
.target sm_80
.address_size 64
.visible .entry k(.param .u64 p)
{
  .reg .b32 %r<5>;
  .reg .b64 %rd<4>;
  ld.param.u64 %rd1, [p];
  cvta.to.global.u64 %rd2, %rd1;
  mov.u32 %r1, %tid.x;
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %ntid.x;
  mad.lo.s32 %r4, %r2, %r3, %r1;
  mul.wide.u32 %rd3, %r4, 4;
  add.s64 %rd2, %rd2, %rd3;
  st.global.u32 [%rd2], %r4;
  ret;
}
\0"""

# (regs, threads, dynamic smem) -> resident blocks per SM, worked by hand per profile.
CASES = {
    "small": [  # sm_80: 64 warps, 32 blocks, 164 KiB (167936) per SM, 4 SMs
        # 40 regs: 1280 per warp; 16384 // 1280 = 12 per sub-partition -> 48 warps per SM.
        # The case: 48 // 2 = 24, 48 // 3 = 16, 48 // 5 = 9 (the unsplit file would give
        # 65536 // 1280 = 51 warps -> 25 / 17 / 10).
        (40, 64, 0, 24), (40, 96, 0, 16), (40, 160, 0, 9),
        # 32 regs: 1024 per warp -> 64 warps -> 8 blocks of 8 warps; warps 64 // 8 = 8;
        # shared 40000 + 1024 = 41024 -> 41088 (321 * 128); 167936 // 41088 = 4.  -> 4
        (32, 256, 40000, 4),
        # 255 regs: 8160 -> 8192 per warp; 16384 // 8192 = 2 -> 8 warps; 8 // 8 = 1; 8 * 8192 = 65536 fits.
        (255, 256, 0, 1),
        # 255 regs at 288 threads: 9 warps * 8192 = 73728 > 65536: no block fits.  -> 0
        (255, 288, 0, 0),
        # 16 regs: 512 per warp -> 32 per sub-partition (128 warps); 4 warps -> 32 blocks; warps 16;
        # shared 49152 + 1024 = 50176 (392 * 128); 167936 // 50176 = 3.  -> 3
        (16, 128, 49152, 3),
        # 16 regs, 32 threads, no shared: regs 128, warps 64, shared 167936 // 1024 = 164, slots 32.  -> 32
        (16, 32, 0, 32),
    ],
    "h100": [  # sm_90: 64 warps, 32 blocks, 228 KiB (233472) per SM
        (40, 64, 0, 24), (40, 160, 0, 9),
        # regs 8, warps 8; shared 233472 // 41088 = 5 (5 * 41088 = 205440).  -> 5
        (32, 256, 40000, 5),
        # 80 regs: 2560 per warp; 16384 // 2560 = 6 -> 24 warps; 24 // 8 = 3.  -> 3
        (80, 256, 0, 3),
    ],
    "l4": [  # sm_89: 1536 threads = 48 warps, 24 blocks, 100 KiB (102400) per SM
        # regs 48 // 2 = 24, warps 48 // 2 = 24, slots 24.  -> 24
        (40, 64, 0, 24),
        # regs 16, warps 16.  -> 16
        (40, 96, 0, 16),
        # regs 8, warps 48 // 8 = 6, shared 102400 // 41088 = 2.  -> 2
        (32, 256, 40000, 2),
        # regs 128 warps, warps 48, slots 24.  -> 24
        (16, 32, 0, 24),
    ],
    "t4": [  # sm_75: 1024 threads = 32 warps, 16 blocks, 64 KiB per SM, no reserve, 256-byte unit
        # regs 24, warps 32 // 2 = 16, slots 16.  -> 16
        (40, 64, 0, 16),
        # shared 40000 -> 40192 (157 * 256); 65536 // 40192 = 1.  -> 1
        (32, 256, 40000, 1),
        # 64 regs: 2048 per warp; 16384 // 2048 = 8 -> 32 warps; 32 // 4 = 8; warps 32 // 4 = 8.  -> 8
        (64, 128, 0, 8),
        # shared 65536 + 0 = 65536; 65536 // 65536 = 1; regs 16 -> 128 warps; warps 32.  -> 1
        (16, 32, 65536, 1),
    ],
}

# regs -> CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK (the same on every profile: 64K registers per block)
MAX_THREADS = [
    (32, 1024),  # 1024 per warp * 32 warps = 65536
    (64, 1024),  # 2048 * 32 = 65536
    (72, 896),   # 2304 per warp: 65536 // 2304 = 28 warps (a multiple of 4)
    (80, 768),   # 2560: 25 warps fit the file (64000) but not rounded up to 28 (71680): 24 warps
    (128, 512),  # 4096: 16 warps
    (255, 256),  # 8192: 8 warps
]

SCRIPT = """
import json, ctypes
from cybn import softgpu; softgpu.load()
from cuda.bindings import driver as cu
assert int(cu.cuInit(0)[0]) == 0
err, ctx = cu.cuDevicePrimaryCtxRetain(0); cu.cuCtxSetCurrent(ctx)
err, mod = cu.cuModuleLoadData(%r)
err, f = cu.cuModuleGetFunction(mod, b"k")
out = {"profile": softgpu.profile(), "cases": [], "max_threads": []}
for regs, threads, smem, _ in %r:
    softgpu.set_function_registers(f, regs)
    out["cases"].append(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, threads, smem)[1])
for regs, _ in %r:
    softgpu.set_function_registers(f, regs)
    out["max_threads"].append(cu.cuFuncGetAttribute(cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f)[1])
print(json.dumps(out))
"""


def run_profile(profile, cases, script=SCRIPT):
    proc = run_fresh(script % (PTX, cases, MAX_THREADS), CYBN_SOFTGPU_PROFILE=profile)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def fn(ctx):
    mod = ok(cu.cuModuleLoadData(PTX))
    yield ok(cu.cuModuleGetFunction(mod, b"k"))
    ok(cu.cuModuleUnload(mod))


@pytest.mark.parametrize("regs, threads, smem, blocks", CASES["small"])
def test_occupancy_default_profile(fn, regs, threads, smem, blocks):
    assert softgpu.profile() == "small"
    softgpu.set_function_registers(fn, regs)
    assert ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, threads, smem)) == blocks
    assert ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(fn, threads, smem, 0)) == blocks


@pytest.mark.parametrize("profile", ["h100", "l4", "t4"])
def test_occupancy_other_profiles(profile):
    out = run_profile(profile, CASES[profile])
    assert out["profile"] == profile
    assert out["cases"] == [c[3] for c in CASES[profile]]
    assert out["max_threads"] == [m for _, m in MAX_THREADS]


@pytest.mark.parametrize("regs, max_threads", MAX_THREADS)
def test_max_threads_per_block_from_registers(fn, regs, max_threads):
    softgpu.set_function_registers(fn, regs)
    assert ok(cu.cuFuncGetAttribute(FA.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn)) == max_threads


def launch(f, blocks, threads, cooperative=False, buf=0):
    import ctypes
    arg = ctypes.c_uint64(int(buf))
    params = (ctypes.c_void_p * 1)(ctypes.addressof(arg))
    call = cu.cuLaunchCooperativeKernel if cooperative else cu.cuLaunchKernel
    extra = () if cooperative else (0,)
    return code(call(f, blocks, 1, 1, threads, 1, 1, 0, 0, ctypes.addressof(params), *extra))


def test_launch_out_of_resources_when_registers_do_not_fit(fn):
    buf = ok(cu.cuMemAlloc(1024 * 4))
    try:
        softgpu.set_function_registers(fn, 80)  # at most 768 threads (see MAX_THREADS)
        assert launch(fn, 1, 768, buf=buf) == R.CUDA_SUCCESS
        before = softgpu.counters()["total"]
        assert launch(fn, 1, 800, buf=buf) == R.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
        assert "registers" in softgpu.last_report()
        from cybn.status import make_error  # what cybn raises for it carries the reason
        err = make_error(int(R.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES), "cuLaunchKernel")
        assert "800 threads of 80 registers each" in str(err) and "at most 768 threads" in err.detail
        assert softgpu.counters()["total"] == before  # nothing ran
        ok(cu.cuCtxSynchronize())
    finally:
        ok(cu.cuMemFree(buf))


def test_cooperative_limit_is_occupancy_times_sms(fn):
    buf = ok(cu.cuMemAlloc(97 * 64 * 4))
    try:
        softgpu.set_function_registers(fn, 40)
        # 24 blocks of 64 threads per SM (the first case above) on the default profile's 4 SMs.
        assert launch(fn, 96, 64, cooperative=True, buf=buf) == R.CUDA_SUCCESS
        assert launch(fn, 97, 64, cooperative=True, buf=buf) == R.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE
        ok(cu.cuCtxSynchronize())
    finally:
        ok(cu.cuMemFree(buf))


def test_potential_block_size(fn):
    # 80 regs: 128 threads -> 6 blocks, 256 -> 3, 384 -> 2, 768 -> 1: 768 resident threads each;
    # ties go to the larger block, 800+ cannot launch.  -> block 768, min grid 1 block * 4 SMs
    softgpu.set_function_registers(fn, 80)
    assert ok(cu.cuOccupancyMaxPotentialBlockSize(fn, None, 0, 0)) == (4, 768)
    assert ok(cu.cuOccupancyMaxPotentialBlockSizeWithFlags(fn, None, 0, 0, 0)) == (4, 768)
    # Limited to 256 threads: 256 -> 3 blocks.  -> (12, 256)
    assert ok(cu.cuOccupancyMaxPotentialBlockSize(fn, None, 0, 256)) == (12, 256)


def test_a100_cooperative_limit():
    """An A100 (108 SMs) co-schedules 24 * 108 = 2592 blocks of 64 threads at 40 registers; the old
    declared-register model refused such launches at a handful of blocks."""
    script = SCRIPT.replace('print(json.dumps(out))', """
import ctypes
softgpu.set_function_registers(f, 40)
arg = ctypes.c_uint64(0); params = (ctypes.c_void_p * 1)(ctypes.addressof(arg))
out["too_large"] = int(cu.cuLaunchCooperativeKernel(f, 2593, 1, 1, 64, 1, 1, 0, 0, ctypes.addressof(params))[0])
out["sms"] = cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0)[1]
print(json.dumps(out))""")
    out = run_profile("a100", [(40, 64, 0, 24)], script)
    assert out["sms"] == 108 and out["cases"] == [24]
    assert out["too_large"] == int(R.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE)


def blocks_by_hand(regs, threads, max_warps=64, max_blocks=32):
    """The register, warp and slot limits above (no shared memory), for cases read at run time."""
    warps = -(-threads // 32)
    per_warp = -(-regs * 32 // 256) * 256
    return min(max_blocks, max_warps // warps, 4 * (16384 // per_warp) // warps)


A100_GRID_SYNC = """
import sys, time
sys.path.insert(0, %r)
import numpy as np
from cybn import softgpu; softgpu.load()
from cuda.bindings import driver as cu
from ptxutil import Device, Module, run
assert int(cu.cuInit(0)[0]) == 0
err, ctx = cu.cuDevicePrimaryCtxRetain(0); cu.cuCtxSetCurrent(ctx)
mod = Module(cu_file="atomics.cu"); f = mod.fn("grid_sync_sum")
regs = cu.cuFuncGetAttribute(cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS, f)[1]
per_sm = cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, 64, 0)[1]
nb = per_sm * 108
with Device() as d:
    pv, ps, pa = d.zeros(nb + 1, np.int32), d.zeros(nb + 1, np.int32), d.zeros(1, np.uint32)
    run(f, (nb,), (64,), pv, ps, pa, cooperative=True)
    ok = bool((d.get(ps, nb, np.int32) == 10 * nb * (nb + 1) // 2).all())
    import ctypes
    args = [ctypes.c_uint64(int(p)) for p in (pv, ps, pa)]
    params = (ctypes.c_void_p * 3)(*[ctypes.addressof(a) for a in args])
    too_large = int(cu.cuLaunchCooperativeKernel(f, nb + 1, 1, 1, 64, 1, 1, 0, 0, ctypes.addressof(params))[0])
print(regs, per_sm, nb, ok, too_large, softgpu.function_registers(f)["declared"])
"""


def test_a100_cooperative_grid_of_a_kernel_with_many_virtual_registers():
    """grid_sync_sum declares 94 registers; ptxas allocates 28, so an A100 co-schedules 32 blocks of 64
    threads per SM, 3456 in all, and the grid barrier completes with every block resident (the
    declared-register model refused this launch beyond 2 blocks per SM)."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = run_fresh(A100_GRID_SYNC % here, CYBN_SOFTGPU_PROFILE="a100")
    assert proc.returncode == 0, proc.stderr
    regs, per_sm, nb, ok_sums, too_large, declared = proc.stdout.split()
    regs, per_sm, declared = int(regs), int(per_sm), int(declared)
    assert declared > 3 * regs
    assert per_sm == blocks_by_hand(regs, 64) and int(nb) == per_sm * 108
    assert ok_sums == "True"
    assert int(too_large) == int(R.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE)


def test_available_dynamic_shared_memory(fn):
    softgpu.set_function_registers(fn, 32)
    # 4 blocks per SM: 167936 // 4 = 41984 (328 * 128), less the 1 KiB reserve: 40960; and indeed
    # (40960 + 1024) * 4 = 167936 fits. The 48 KiB default attribute does not cap it.
    assert ok(cu.cuOccupancyAvailableDynamicSMemPerBlock(fn, 4, 256)) == 40960
    assert ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, 256, 40960)) == 4
    assert ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, 256, 40960 + 128)) == 3
    # 2 blocks: 83968 - 1024 = 82944, capped by the kernel's 48 KiB dynamic limit until it opts in.
    assert ok(cu.cuOccupancyAvailableDynamicSMemPerBlock(fn, 2, 256)) == 48 * 1024
    # 32 registers and 256 threads: 8 blocks per SM at most, so 9 cannot be had with any shared memory.
    assert ok(cu.cuOccupancyAvailableDynamicSMemPerBlock(fn, 9, 256)) == 0
