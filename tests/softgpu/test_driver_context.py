"""Contexts on the software GPU: primary retain/release, push/pop, per-thread current context."""
import threading

from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import R, code, ctx, ok, primary  # noqa: F401  (fixtures)


def in_thread(fn):
    """Run fn in a fresh host thread and return its result (exceptions re-raised here)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_primary_context_retain_release_state(primary):
    flags, active = ok(cu.cuDevicePrimaryCtxGetState(0))
    assert active == 1  # the session fixture holds it
    again = ok(cu.cuDevicePrimaryCtxRetain(0))
    assert int(again) == int(primary)  # one primary context per device
    ok(cu.cuDevicePrimaryCtxRelease(0))
    assert ok(cu.cuDevicePrimaryCtxGetState(0))[1] == 1
    assert ok(cu.cuCtxGetApiVersion(primary)) == 3020


def test_push_pop_and_current(primary):
    before = ok(cu.cuCtxGetCurrent())
    ok(cu.cuCtxPushCurrent(primary))
    assert int(ok(cu.cuCtxGetCurrent())) == int(primary)
    assert int(ok(cu.cuCtxGetDevice())) == 0
    assert int(ok(cu.cuCtxPopCurrent())) == int(primary)
    assert int(ok(cu.cuCtxGetCurrent())) == int(before)


def test_current_context_is_per_thread(ctx):
    # A new host thread starts with no current context.
    def probe():
        return int(ok(cu.cuCtxGetCurrent())), code(cu.cuCtxSynchronize()), code(cu.cuMemAlloc(16))
    current, sync, alloc = in_thread(probe)
    assert current == 0
    assert sync == R.CUDA_ERROR_INVALID_CONTEXT
    assert alloc == R.CUDA_ERROR_INVALID_CONTEXT
    # Setting one there leaves this thread's untouched.
    def set_there():
        ok(cu.cuCtxSetCurrent(ctx))
        return int(ok(cu.cuCtxGetCurrent()))
    assert in_thread(set_there) == int(ctx)
    assert int(ok(cu.cuCtxGetCurrent())) == int(ctx)


def test_created_context_destroy_frees_its_allocations(ctx):
    live_before = softgpu.live_allocations()
    created = ok(cu.cuCtxCreate(None, 0, 0))  # becomes current on this thread
    assert int(ok(cu.cuCtxGetCurrent())) == int(created)
    assert ok(cu.cuCtxGetFlags()) == 0
    p = ok(cu.cuMemAlloc(4096))
    assert softgpu.live_allocations() == (live_before[0] + 1, live_before[1] + 4096)
    assert int(ok(cu.cuPointerGetAttribute(cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_CONTEXT, p))) == int(created)
    ok(cu.cuCtxDestroy(created))
    assert softgpu.live_allocations() == live_before
    assert int(ok(cu.cuCtxGetCurrent())) == int(ctx)  # destroyed context popped off the stack
    assert code(cu.cuCtxDestroy(created)) == R.CUDA_ERROR_INVALID_CONTEXT
    assert code(cu.cuCtxPushCurrent(created)) == R.CUDA_ERROR_INVALID_CONTEXT
    assert code(cu.cuMemFree(p)) == R.CUDA_ERROR_INVALID_VALUE  # already gone with its context


def test_pop_empty_stack_and_destroy_primary_refused(primary):
    def probe():
        return code(cu.cuCtxPopCurrent()), code(cu.cuCtxDestroy(primary))
    assert in_thread(probe) == (R.CUDA_ERROR_INVALID_CONTEXT, R.CUDA_ERROR_INVALID_CONTEXT)


def test_context_queries(ctx):
    assert ok(cu.cuCtxGetStreamPriorityRange()) == (0, -5)
    ok(cu.cuCtxSetLimit(cu.CUlimit.CU_LIMIT_STACK_SIZE, 4096))
    assert ok(cu.cuCtxGetLimit(cu.CUlimit.CU_LIMIT_STACK_SIZE)) == 4096
    ok(cu.cuCtxSetLimit(cu.CUlimit.CU_LIMIT_STACK_SIZE, 1024))
    assert ok(cu.cuCtxGetLimit(cu.CUlimit.CU_LIMIT_PRINTF_FIFO_SIZE)) > 0
    assert ok(cu.cuCtxGetId(ctx)) > 0
    ok(cu.cuCtxSynchronize())


def test_threads_share_the_driver_safely(primary):
    """Host threads allocating, copying and freeing at once each see their own data (one global lock)."""
    import numpy as np
    live = softgpu.live_allocations()

    def work(seed):
        ok(cu.cuCtxPushCurrent(primary))
        try:
            for i in range(50):
                a = np.full(257, seed * 1000 + i, np.int64)
                p = ok(cu.cuMemAlloc(a.nbytes))
                ok(cu.cuMemcpyHtoD(p, a, a.nbytes))
                b = np.empty_like(a)
                ok(cu.cuMemcpyDtoH(b, p, b.nbytes))
                ok(cu.cuMemFree(p))
                assert (b == a).all()
        finally:
            ok(cu.cuCtxPopCurrent())
        return True

    results = {}

    def run(seed):
        try:
            results[seed] = work(seed)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            results[seed] = e
    threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {s: True for s in range(4)}
    assert softgpu.live_allocations() == live
