"""A host function that synchronises its own stream (review). CUDA forbids driver calls inside a host
function and documents that one "may result in CUDA_ERROR_NOT_PERMITTED" (cuLaunchHostFunc); the call
must return instead of waiting for the stream that is blocked on the host function itself (a deadlock).
Run in a fresh process so that a regression fails by timeout instead of hanging the suite."""
import pytest

from fresh import run_fresh

SCRIPT = r"""
import ctypes
from cybn import softgpu
softgpu.load()
from cuda.bindings import driver as cu
assert int(cu.cuInit(0)[0]) == 0
pctx = cu.cuDevicePrimaryCtxRetain(0)[1]
assert int(cu.cuCtxPushCurrent(pctx)[0]) == 0
got = []
for mode in ({mode},):
    with softgpu.set_async(mode):
        s = cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING)[1]
        def body(user):
            cu.cuCtxPushCurrent(pctx)  # the host function's thread (async: not the caller's)
            got.append(int(cu.cuStreamSynchronize(s)[0]))
            got.append(int(cu.cuCtxSynchronize()[0]))
            cu.cuCtxPopCurrent()
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(body)
        assert int(cu.cuLaunchHostFunc(s, cu.CUhostFn(ctypes.cast(fn, ctypes.c_void_p).value), 0)[0]) == 0
        assert int(cu.cuStreamSynchronize(s)[0]) == 0
        assert int(cu.cuStreamDestroy(s)[0]) == 0
print("codes", got)
"""


@pytest.mark.parametrize("mode", [False, True], ids=["inline", "async"])
def test_sync_inside_a_host_function_returns_not_permitted(mode):
    r = run_fresh(SCRIPT.replace("{mode}", str(mode)))
    assert r.returncode == 0, r.stderr[-2000:]
    not_permitted = 800  # CUDA_ERROR_NOT_PERMITTED
    assert f"codes [{not_permitted}, {not_permitted}]" in r.stdout, r.stdout + r.stderr[-2000:]
