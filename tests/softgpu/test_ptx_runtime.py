"""The device-side runtime: printf (vprintf, formatted on the host and written to stdout at the next
synchronize, as the driver does; checked by capturing a subprocess's stdout), assert (__assertfail:
the launch fails with CUDA_ERROR_ASSERT naming the message and its location) and malloc/free (a
device heap of CU_LIMIT_MALLOC_HEAP_SIZE bytes, each block bounded by memcheck)."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, launch, ok, run, run_python

SOURCE = r"""
extern "C" __global__ void say(const int* x, float f, const char* s) {
    int i = threadIdx.x;
    printf("thread %d of %u: x=%5d hex=%#06x f=%.3f e=%e ll=%lld c=%c str=%s pct=100%% w=%*d|\n", i, blockDim.x, x[i],
           x[i], f * i, (double)f, -(1ll << 40) - i, 'A' + i, s, 4, i);
}
extern "C" __global__ void check(const int* x) {
    assert(x[threadIdx.x] >= 0);
}
// Each thread mallocs a block of n ints, fills and sums it (also across a second block it reads
// from the neighbour lane's allocation, published through a global table), then frees it.
extern "C" __global__ void heap(int n, long long* sums, int** table, int* nulls) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int* p = (int*)malloc(n * sizeof(int));
    table[i] = p;
    if (!p) { atomicAdd(nulls, 1); return; }
    for (int k = 0; k < n; ++k) p[k] = i * 1000 + k;
    long long s = 0;
    for (int k = 0; k < n; ++k) s += p[k];
    sums[i] = s;
    free(p);
}
// Every thread holds its block across a barrier, so the heap must hold them all at once.
extern "C" __global__ void hold(int n, int* nulls) {
    int* p = (int*)malloc(n * sizeof(int));
    if (p) p[n - 1] = 1;
    __syncthreads();
    if (!p) atomicAdd(nulls, 1);
    free(p);
}
extern "C" __global__ void overrun(int n, int* out) {
    int* p = (int*)malloc(n * sizeof(int));
    for (int k = 0; k <= n; ++k) p[k] = k;  // one past the end
    out[0] = p[0];
    free(p);
}
"""


def test_printf_is_formatted_and_flushed_at_synchronize():
    proc = run_python(r"""
        import sys
        import numpy as np
        from cybn import softgpu
        softgpu.load()
        from cuda.bindings import driver as cu
        import ptxutil as pu
        pu.ok(cu.cuInit(0)); ctx = pu.ok(cu.cuDevicePrimaryCtxRetain(0)); pu.ok(cu.cuCtxSetCurrent(ctx))
        with pu.Module(pu.compile_ptx(SOURCE)) as m, pu.Device() as dev:
            x = dev.put(np.array([7, -12, 300], np.int32))
            s = dev.put(np.frombuffer(b"device\0", np.uint8))
            r = pu.launch(m.fn("say"), (1,), (3,), x, np.float32(1.25), s)
            print("launched", int(r)); sys.stdout.flush()
            pu.ok(cu.cuCtxSynchronize())
            print("synchronized")
    """, SOURCE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "launched 0" and lines[-1] == "synchronized"  # printed at the synchronize, not before
    want = ["thread %d of 3: x=%5d hex=%#06x f=%.3f e=%e ll=%d c=%s str=device pct=100%% w=%4d|"
            % (i, v, v & 0xFFFFFFFF, 1.25 * i, 1.25, -(1 << 40) - i, chr(65 + i), i) for i, v in enumerate([7, -12, 300])]
    assert lines[1:-1] == want


def test_assert_fails_the_launch_with_message_and_location(ctx):
    with Module(compile_ptx(SOURCE)) as m, Device() as d:
        run(m.fn("check"), (1,), (32,), d.put(np.arange(32, dtype=np.int32)))  # holds: nothing happens
        x = np.arange(32, dtype=np.int32)
        x[5] = -1
        r = launch(m.fn("check"), (2,), (32,), d.put(x))
        report = softgpu.last_report()
        assert r == cu.CUresult.CUDA_ERROR_ASSERT
        assert "x[threadIdx.x] >= 0" in report and "kernel.cu:" in report and "thread (5,0,0)" in report
        assert cu.cuCtxSynchronize()[0] == cu.CUresult.CUDA_ERROR_ASSERT


def test_device_malloc_free_within_the_heap_limit(ctx):
    old = ok(cu.cuCtxGetLimit(cu.CUlimit.CU_LIMIT_MALLOC_HEAP_SIZE))
    with Module(compile_ptx(SOURCE)) as m, Device() as d:
        try:
            nt, n = 64, 100
            sums, table, nulls = d.zeros(nt, np.int64), d.zeros(nt, np.uint64), d.zeros(1, np.int32)
            run(m.fn("heap"), (2,), (32,), np.int32(n), sums, table, nulls)
            i = np.arange(nt, dtype=np.int64)
            np.testing.assert_array_equal(d.get(sums, nt, np.int64), i * 1000 * n + n * (n - 1) // 2)
            ptrs = d.get(table, nt, np.uint64)
            assert d.get(nulls, 1, np.int32)[0] == 0 and len(set(ptrs.tolist())) == nt and np.all(ptrs % 16 == 0)
            # A 4 KiB heap holds 10 blocks of 400 bytes at once: the other 22 threads get NULL.
            ok(cu.cuCtxSetLimit(cu.CUlimit.CU_LIMIT_MALLOC_HEAP_SIZE, 4096))
            nulls2 = d.zeros(1, np.int32)
            run(m.fn("hold"), (1,), (32,), np.int32(n), nulls2)
            assert d.get(nulls2, 1, np.int32)[0] == 32 - 4096 // (4 * n)
            run(m.fn("hold"), (1,), (10,), np.int32(n), nulls2)  # freed blocks are reusable heap space
            assert d.get(nulls2, 1, np.int32)[0] == 32 - 4096 // (4 * n)
        finally:
            ok(cu.cuCtxSetLimit(cu.CUlimit.CU_LIMIT_MALLOC_HEAP_SIZE, old))


def test_overrunning_a_device_malloc_block_is_a_memcheck_finding(ctx):
    with Module(compile_ptx(SOURCE)) as m, Device() as d:
        r = launch(m.fn("overrun"), (1,), (1,), np.int32(8), d.zeros(1, np.int32))
        assert r == cu.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
        assert "memcheck" in softgpu.last_report() and "past the end" in softgpu.last_report()
        cu.cuCtxSynchronize()
