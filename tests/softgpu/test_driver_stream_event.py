"""Streams, events and host functions on the software GPU (work runs in order at enqueue time)."""
import ctypes
import time

from cuda.bindings import driver as cu

from driverutil import R, code, ctx, ok, primary  # noqa: F401  (fixtures)

E = cu.CUevent_flags


def test_stream_properties(ctx):
    s = ok(cu.cuStreamCreateWithPriority(cu.CUstream_flags.CU_STREAM_NON_BLOCKING, -2))
    assert ok(cu.cuStreamGetPriority(s)) == -2
    assert ok(cu.cuStreamGetFlags(s)) == cu.CUstream_flags.CU_STREAM_NON_BLOCKING
    assert int(ok(cu.cuStreamGetCtx(s))) == int(ctx)
    clamped = ok(cu.cuStreamCreateWithPriority(0, -100))
    assert ok(cu.cuStreamGetPriority(clamped)) == -5  # clamped to the greatest priority
    ok(cu.cuStreamQuery(s))
    ok(cu.cuStreamSynchronize(0))  # the legacy default stream
    ok(cu.cuStreamSynchronize(cu.CU_STREAM_PER_THREAD))
    for x in (s, clamped):
        ok(cu.cuStreamDestroy(x))
    assert code(cu.cuStreamSynchronize(s)) == R.CUDA_ERROR_INVALID_HANDLE
    assert code(cu.cuStreamDestroy(s)) == R.CUDA_ERROR_INVALID_HANDLE


def test_event_elapsed_time_is_ordered(ctx):
    s = ok(cu.cuStreamCreate(0))
    a, b = ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(E.CU_EVENT_BLOCKING_SYNC))
    ok(cu.cuEventRecord(a, s))
    time.sleep(0.02)
    ok(cu.cuEventRecordWithFlags(b, s, 0))
    ok(cu.cuEventSynchronize(b))
    ok(cu.cuEventQuery(b))
    forward = ok(cu.cuEventElapsedTime(a, b))
    backward = ok(cu.cuEventElapsedTime(b, a))
    # Host-clock timestamps of the software GPU (not a GPU timing): the sleep lies between them.
    assert forward >= 15.0
    assert backward == -forward
    assert ok(cu.cuEventElapsedTime(a, a)) == 0.0
    ok(cu.cuStreamWaitEvent(s, a, 0))
    ok(cu.cuStreamWaitEvent(0, b, 0))
    for e in (a, b):
        ok(cu.cuEventDestroy(e))
    ok(cu.cuStreamDestroy(s))
    assert code(cu.cuEventRecord(a, 0)) == R.CUDA_ERROR_INVALID_HANDLE


def test_event_timing_errors(ctx):
    timed, untimed, never = (ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(E.CU_EVENT_DISABLE_TIMING)),
                             ok(cu.cuEventCreate(0)))
    ok(cu.cuEventRecord(timed, 0))
    ok(cu.cuEventRecord(untimed, 0))
    assert code(cu.cuEventElapsedTime(timed, untimed)) == R.CUDA_ERROR_INVALID_HANDLE
    assert code(cu.cuEventElapsedTime(timed, never)) == R.CUDA_ERROR_INVALID_HANDLE
    assert code(cu.cuEventCreate(0x80)) == R.CUDA_ERROR_INVALID_VALUE
    for e in (timed, untimed, never):
        ok(cu.cuEventDestroy(e))


def test_host_functions_run_in_stream_order(ctx):
    calls = []
    fn_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    callback = fn_type(lambda user: calls.append(user))
    s = ok(cu.cuStreamCreate(0))
    ok(cu.cuLaunchHostFunc(s, cu.CUhostFn(ctypes.cast(callback, ctypes.c_void_p).value), 11))
    ok(cu.cuLaunchHostFunc(s, cu.CUhostFn(ctypes.cast(callback, ctypes.c_void_p).value), 22))
    ok(cu.cuStreamSynchronize(s))
    assert calls == [11, 22]
    ok(cu.cuStreamDestroy(s))
