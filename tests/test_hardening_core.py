"""State on failure and the failing call's name: checks before the first launch, so a rejected call changes
nothing; a driver failure names the real call (cuMemsetD32Async, not cuLaunchKernel)."""
import numpy as np
import pytest

import cybn
from cybn import batchnorm
from cybn.errors import CudaError


def stats(C=1):
    return cybn.to_gpu(np.full(C, 0.25, np.float32)), cybn.to_gpu(np.full(C, 2.0, np.float32))


def test_a_failed_counter_memset_is_named_and_changes_nothing():
    x = cybn.to_gpu(np.random.default_rng(0).standard_normal((2, 1, 8192)).astype(np.float32))
    rm, rv = stats()
    bogus = cybn.Stream.external(0xDEAD0, None)  # not a stream: the first driver call on it fails
    with batchnorm.plan_override(split=3):  # split plan: the counters are zeroed before the first launch
        with pytest.raises(CudaError, match="cuMemsetD32Async failed: CUDA_ERROR_INVALID_HANDLE") as e:
            batchnorm.forward_train(x, None, None, rm, rv, 1e-5, 0.5, stream=bogus)
    assert e.value.call == "cuMemsetD32Async"
    assert rm.get()[0] == np.float32(0.25) and rv.get()[0] == np.float32(2.0)


@pytest.mark.parametrize("split", [0, 3])  # the fused plan and the split plan (statistics in launch 1)
def test_an_out_view_longer_than_its_memory_changes_nothing(split):
    x = cybn.to_gpu(np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32))
    rm, rv = stats(3)
    short = cybn.DeviceBuffer(x.nbytes - 4)  # its own allocation, one float short
    out = cybn.GPUArray.from_pointer(short.ptr, x.shape, x.dtype, short)
    with batchnorm.plan_override(split=split):
        with pytest.raises(ValueError, match="out .* runs past the end of its allocation"):
            batchnorm.forward_train(x, None, None, rm, rv, 1e-5, 0.5, out=out)
    np.testing.assert_array_equal(rm.get(), np.full(3, 0.25, np.float32))
    np.testing.assert_array_equal(rv.get(), np.full(3, 2.0, np.float32))


def test_a_failed_module_backward_commits_nothing():
    """grad, scalegrad, biasgrad and the parameters' grads move only when every step of backward succeeded
    (here the output allocations fail: the device is out of memory)."""
    from cybn import memory, softgpu
    from cybn.modules import BatchNorm2D
    rng = np.random.default_rng(6)
    bn = BatchNorm2D(3)
    bn(cybn.to_gpu(rng.standard_normal((2, 3, 4, 4)).astype(np.float32)))
    bn.backward(cybn.to_gpu(rng.standard_normal((2, 3, 4, 4)).astype(np.float32)))
    before = dict(grad=bn.grad, scalegrad=bn.scalegrad, biasgrad=bn.biasgrad)
    values = {k: v.get() for k, v in before.items()}
    pgrads = {n: v.grad.get() for n, v in bn.vars.items()}
    dy = cybn.to_gpu(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    memory.default_pool().free_all()  # so the next allocation reaches the driver, which refuses it
    with softgpu.alloc_budget(softgpu.live_allocations()[1]):
        with pytest.raises(CudaError, match="OUT_OF_MEMORY"):
            bn.backward(dy)
    for k, v in before.items():
        assert getattr(bn, k) is v, k
        np.testing.assert_array_equal(v.get(), values[k], err_msg=k)
    for n, v in bn.vars.items():
        np.testing.assert_array_equal(v.grad.get(), pgrads[n], err_msg=n)
