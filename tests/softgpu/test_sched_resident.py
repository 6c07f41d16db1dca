"""Resident-block scheduling: an ordinary launch keeps (occupancy x SMs) blocks resident, made
resident in launch order as earlier blocks exit, interleaved by time slices; a seed permutes the
interleaving, never residency. So a block that waits for an earlier block (a flag chain, as in a
decoupled look-back scan) completes under every schedule, and one that waits for a block that is
never resident is stopped by the watchdog with the blocks named."""
import time

import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, ok, run, run_python

SOURCE = r"""
// Inclusive scan of x: each block scans its tile in shared memory, then thread 0 waits for the
// previous block's flag, adds its prefix and publishes its own (a chain across all blocks).
extern "C" __global__ void chained_scan(const int* x, long long* prefix, int* flags, long long* out, int atomic_loads) {
    __shared__ long long part[256];
    __shared__ long long carry;
    int b = blockIdx.x, t = threadIdx.x;
    part[t] = x[b * blockDim.x + t];
    __syncthreads();
    for (int o = 1; o < blockDim.x; o <<= 1) {
        long long a = t >= o ? part[t - o] : 0;
        __syncthreads();
        part[t] += a;
        __syncthreads();
    }
    if (t == 0) {
        long long c = 0;
        if (b > 0) {
            if (atomic_loads) { while (atomicAdd(&flags[b - 1], 0) == 0) { } }
            else { while (((volatile int*)flags)[b - 1] == 0) { } }
            __threadfence();
            c = ((volatile long long*)prefix)[b - 1];
        }
        prefix[b] = c + part[blockDim.x - 1];
        __threadfence();
        atomicExch(&flags[b], 1);
        carry = c;
    }
    __syncthreads();
    out[b * blockDim.x + t] = carry + part[t];
}

// state: [0] blocks running now, [1] most ever running at once, [2] next ticket.
extern "C" __global__ void residency(int* state, int* order, int spin) {
    if (threadIdx.x != 0) return;
    atomicMax(&state[1], atomicAdd(&state[0], 1) + 1);
    order[atomicAdd(&state[2], 1)] = blockIdx.x;
    volatile int s = 0;
    for (int i = 0; i < spin; ++i) s = s + i;  // several time slices: the block stays resident
    atomicSub(&state[0], 1);
}

// Every block but the last waits for the last block's flag.
extern "C" __global__ void wait_for_last(int* flags) {
    if (threadIdx.x != 0) return;
    if (blockIdx.x < gridDim.x - 1) { while (((volatile int*)flags)[gridDim.x - 1] == 0) { } }
    if (blockIdx.x == gridDim.x - 1) atomicExch(&flags[gridDim.x - 1], 1);
}
"""


@pytest.fixture
def mod(ctx):
    m = Module(compile_ptx(SOURCE))
    yield m
    m.close()


def resident_limit(f, threads):
    per_sm = ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, threads, 0))
    sms = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0))
    return per_sm * sms


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 99])
@pytest.mark.parametrize("atomic_loads", [0, 1])
def test_flag_chain_across_64_blocks_completes(mod, seed, atomic_loads):
    nb, bs = 64, 256
    assert resident_limit(mod.fn("chained_scan"), bs) < nb  # blocks come and go during the chain
    x = np.random.default_rng(seed).integers(-1000, 1000, nb * bs).astype(np.int32)
    with softgpu.seed(seed), Device() as d:
        px, pp, pf, po = d.put(x), d.zeros(nb, np.int64), d.zeros(nb, np.int32), d.zeros(nb * bs, np.int64)
        run(mod.fn("chained_scan"), (nb,), (bs,), px, pp, pf, po, np.int32(atomic_loads))
        out = d.get(po, nb * bs, np.int64)
    np.testing.assert_array_equal(out, np.cumsum(x.astype(np.int64)))


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_occupancy_times_sms_blocks_are_resident_in_launch_order(mod, seed, threads):
    f = mod.fn("residency")
    limit = resident_limit(f, threads)
    nb = 3 * limit + 1
    with softgpu.seed(seed), Device() as d:
        ps, po = d.zeros(3, np.int32), d.zeros(nb, np.int32)
        run(f, (nb,), (threads,), ps, po, np.int32(2000))
        state, order = d.get(ps, 3, np.int32), d.get(po, nb, np.int32)
    assert state[0] == 0 and state[2] == nb
    assert state[1] == limit  # never more, and the full complement at once
    np.testing.assert_array_equal(np.sort(order), np.arange(nb))
    np.testing.assert_array_equal(np.sort(order[:limit]), np.arange(limit))  # the first blocks start first


def test_waiting_for_a_resident_later_block_completes(mod):
    f = mod.fn("wait_for_last")
    nb = resident_limit(f, 32)
    with softgpu.seed(5), Device() as d:
        pf = d.zeros(nb, np.int32)
        run(f, (nb,), (32,), pf)
        assert d.get(pf, nb, np.int32)[-1] == 1


def test_same_seed_same_bits_float_atomics(mod):
    """Float atomics across interleaved blocks: the order depends on the schedule, and the same
    seed repeats it exactly."""
    src = r"""extern "C" __global__ void fsum(const float* x, float* out) {
        for (int k = 0; k < 8; ++k) atomicAdd(out, x[(blockIdx.x * blockDim.x + threadIdx.x) * 8 + k]);
    }"""
    m = Module(compile_ptx(src))
    x = (np.random.default_rng(3).standard_normal(64 * 64 * 8) * 1e3).astype(np.float32)
    got = {}
    with Device() as d:
        px = d.put(x)
        for seed in (7, 7, 8, 0, 0):
            po = d.zeros(1, np.float32)
            with softgpu.seed(seed):
                run(m.fn("fsum"), (64,), (64,), px, po)
            got.setdefault(seed, []).append(d.get(po, 1, np.float32).view(np.uint32)[0])
    m.close()
    assert got[7][0] == got[7][1] and got[0][0] == got[0][1]
    for v in got.values():
        assert abs(float(np.uint32(v[0]).view(np.float32)) - x.astype(np.float64).sum()) < 1e-2 * np.abs(x).sum() / len(x) * 64


def run_script(script, **env_extra):
    return run_python(script, SOURCE, **env_extra)


def test_waiting_for_a_block_never_resident_is_reported_by_the_watchdog():
    t0 = time.perf_counter()
    proc = run_script("""
        import numpy as np
        from cybn import softgpu
        softgpu.load()
        from cuda.bindings import driver as cu
        import ptxutil as pu
        pu.ok(cu.cuInit(0)); ctx = pu.ok(cu.cuDevicePrimaryCtxRetain(0)); pu.ok(cu.cuCtxSetCurrent(ctx))
        with pu.Module(pu.compile_ptx(SOURCE)) as m, pu.Device() as dev:
            f = m.fn("wait_for_last")
            per_sm = pu.ok(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(f, 1024, 0))
            sms = pu.ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0))
            nb = per_sm * sms + 1
            r = pu.launch(f, (nb,), (1024,), dev.zeros(nb, np.int32))
            print(int(r), nb - 1, "|", softgpu.last_report().replace(chr(10), " "))
    """, CYBN_SOFTGPU_WATCHDOG="3000000", CYBN_SOFTGPU_SEED="3")
    assert proc.returncode == 0, proc.stderr
    head, report = proc.stdout.split("|", 1)
    r, limit = (int(v) for v in head.split())
    assert r == int(cu.CUresult.CUDA_ERROR_LAUNCH_FAILED)
    assert "watchdog" in report and "wait_for_last" in report
    assert "(0,0,0) at PTX line" in report  # the waiting block, named
    assert "1 block(s) from (%d,0,0) on never became resident" % limit in report
    assert "at most %d blocks are resident at once" % limit in report
    assert time.perf_counter() - t0 < 60
