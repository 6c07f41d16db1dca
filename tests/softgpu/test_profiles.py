"""Device profiles (CYBN_SOFTGPU_PROFILE): each reports the attributes of the GPU it models, in a fresh
process (the profile is fixed when the library first reads its environment). Reference values:
the CUDA C++ Programming Guide's per-compute-capability table (threads, blocks, registers, shared
memory per SM and per block, the 1 KiB per-block reserve from sm_80) and NVIDIA's product data
(SMs, L2, memory clock and bus width; the data sheets' bandwidth is 2 * clock * bus / 8)."""
import json
import os

import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ok, primary  # noqa: F401  (fixture)
from fresh import run_fresh

KiB, MiB = 1024, 1024 * 1024
ATTRS = ["COMPUTE_CAPABILITY_MAJOR", "COMPUTE_CAPABILITY_MINOR", "MULTIPROCESSOR_COUNT",
         "MAX_THREADS_PER_MULTIPROCESSOR", "MAX_BLOCKS_PER_MULTIPROCESSOR", "MAX_REGISTERS_PER_MULTIPROCESSOR",
         "MAX_REGISTERS_PER_BLOCK", "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", "MAX_SHARED_MEMORY_PER_BLOCK",
         "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", "RESERVED_SHARED_MEMORY_PER_BLOCK", "L2_CACHE_SIZE",
         "WARP_SIZE", "MAX_THREADS_PER_BLOCK"]
# name: (cc, SMs, threads/SM, blocks/SM, smem/SM, opt-in/block, reserve, L2, data-sheet GB/s)
EXPECTED = {
    "small":   ((8, 0),   4, 2048, 32, 164 * KiB, 163 * KiB, 1 * KiB, 40 * MiB, 1555),
    "a100":    ((8, 0), 108, 2048, 32, 164 * KiB, 163 * KiB, 1 * KiB, 40 * MiB, 1555),
    "h100":    ((9, 0), 132, 2048, 32, 228 * KiB, 227 * KiB, 1 * KiB, 50 * MiB, 3350),
    "h200":    ((9, 0), 132, 2048, 32, 228 * KiB, 227 * KiB, 1 * KiB, 50 * MiB, 4800),
    "l4":      ((8, 9),  58, 1536, 24, 100 * KiB,  99 * KiB, 1 * KiB, 48 * MiB, 300),
    "t4":      ((7, 5),  40, 1024, 16,  64 * KiB,  64 * KiB, 0,       4 * MiB, 320),
    "rtx4090": ((8, 9), 128, 1536, 24, 100 * KiB,  99 * KiB, 1 * KiB, 72 * MiB, 1008),
}

SCRIPT = """
import json
from cybn import softgpu; softgpu.load()
from cuda.bindings import driver as cu
assert int(cu.cuInit(0)[0]) == 0
A = cu.CUdevice_attribute
out = {a: cu.cuDeviceGetAttribute(getattr(A, "CU_DEVICE_ATTRIBUTE_" + a), 0)[1] for a in %r}
out["clock"] = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, 0)[1]
out["bus"] = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, 0)[1]
out["name"] = bytes(cu.cuDeviceGetName(64, 0)[1]).split(b"\\0")[0].decode()
out["profile"] = softgpu.profile()
out["info"] = softgpu.profile_info()
print(json.dumps(out))
"""


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_attributes(name):
    proc = run_fresh(SCRIPT % ATTRS, CYBN_SOFTGPU_PROFILE=name)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cc, sms, threads, blocks, smem_sm, optin, reserve, l2, gbps = EXPECTED[name]
    assert out["profile"] == name and out["info"]["name"] == name
    assert out["name"].startswith("cybn software GPU")
    assert (out["COMPUTE_CAPABILITY_MAJOR"], out["COMPUTE_CAPABILITY_MINOR"]) == cc
    assert out["MULTIPROCESSOR_COUNT"] == sms
    assert out["MAX_THREADS_PER_MULTIPROCESSOR"] == threads
    assert out["MAX_BLOCKS_PER_MULTIPROCESSOR"] == blocks
    assert out["MAX_REGISTERS_PER_MULTIPROCESSOR"] == out["MAX_REGISTERS_PER_BLOCK"] == 65536
    assert out["MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"] == smem_sm
    assert out["MAX_SHARED_MEMORY_PER_BLOCK"] == 48 * KiB
    assert out["MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"] == optin
    assert out["RESERVED_SHARED_MEMORY_PER_BLOCK"] == reserve
    assert out["L2_CACHE_SIZE"] == l2
    assert out["WARP_SIZE"] == 32 and out["MAX_THREADS_PER_BLOCK"] == 1024
    bandwidth = 2 * out["clock"] * 1e3 * out["bus"] / 8 / 1e9  # GB/s, as deviceQuery users compute it
    assert abs(bandwidth - gbps) / gbps < 0.03, bandwidth
    info = out["info"]
    assert info["register_allocation_unit"] == 256 and info["register_sub_partitions"] == 4
    assert info["shared_allocation_unit"] == (256 if cc == (7, 5) else 128)


def test_active_profile_in_process(primary):
    """"small" unless the suite itself runs under a profile."""
    name = os.environ.get("CYBN_SOFTGPU_PROFILE") or "small"
    assert softgpu.profile() == name
    assert ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0)) == \
        EXPECTED[name][1]
    assert set(softgpu.PROFILES) == set(EXPECTED)


def test_unknown_profile_refused_with_the_variable_and_choices():
    proc = run_fresh("from cybn import softgpu; softgpu.load()", CYBN_SOFTGPU_PROFILE="h1000")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: CYBN_SOFTGPU_PROFILE: unknown profile 'h1000'")
    assert all(p in last for p in softgpu.PROFILES)
    # The engine's own entry point reaches the same exception.
    proc = run_fresh("import cybn.device as d; d.Device(0)", CYBN_SOFTGPU_PROFILE="h1000", CYBN_DEVICE="softgpu")
    assert proc.returncode != 0 and "CYBN_SOFTGPU_PROFILE: unknown profile 'h1000'" in proc.stderr
    # C code calling the library directly: cuInit refuses and says why on stderr.
    proc = run_fresh("""
        import ctypes
        from cybn import softgpu
        lib = ctypes.CDLL(softgpu.library_path())
        print(lib.cuInit(0))
    """, CYBN_SOFTGPU_PROFILE="h1000")
    assert proc.stdout.split() == [str(int(cu.CUresult.CUDA_ERROR_INVALID_VALUE))]
    assert "softgpu: CYBN_SOFTGPU_PROFILE: unknown profile 'h1000'" in proc.stderr
