"""Review: backward's batch_grads arrays are written by the kernel on the call's stream, so the pool must
not hand their blocks out again on their own stream before that stream's work is done (the other arrays
of the call are marked used on the stream; batch_grads must be too)."""
import numpy as np
from cuda.bindings import driver as cu

import cybn
from cybn.testing import reference as ref
from bn_helpers import gpu, params
from cybn import batchnorm, gpuarray, softgpu
from cybn.stream import Stream


def test_batch_grads_block_reused_only_after_the_backward_stream(rng):
    shape = (4, 3, 5)
    _, _, K, _ = ref.layout(shape, "spatial")
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    scale, _, _, _ = params(rng, K)
    xx = x.astype(np.float64)
    mean = xx.mean(axis=(0, 2))
    invstd = 1.0 / np.sqrt(xx.var(axis=(0, 2)) + 1e-5)
    wdx, wds, wdb = ref.backward(x, dy, scale, mean, invstd)
    with softgpu.checks_set(streamcheck=True):
        s1, s2 = Stream(), Stream()
        args = [gpu(a) for a in (x, dy, scale, mean.astype(np.float32), invstd.astype(np.float32))]
        cu.cuCtxSynchronize()
        bsg = gpuarray.empty((K,), np.float32, stream=s1)  # a block of s1, written on s2
        bbg = gpuarray.empty((K,), np.float32, stream=s1)
        s1.synchronize()
        dx, ds, db = batchnorm.backward(*args, stream=s2, batch_grads=(bsg, bbg))
        old = bsg.ptr
        with cybn.stream(s1):
            del bsg  # freed on its own stream: only the array's "used on s2" mark makes the pool wait
        again = gpuarray.empty((K,), np.float32, stream=s1)
        r = cu.cuMemsetD32Async(again.ptr, 0, K, s1.handle)[0]
        rs = cu.cuStreamSynchronize(s1.handle)[0]
        report = softgpu.last_report()
        cu.cuCtxSynchronize()
        assert r == cu.CUresult.CUDA_SUCCESS and rs == cu.CUresult.CUDA_SUCCESS, (old == again.ptr, report)
        np.testing.assert_allclose(bbg.get(), wdb, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ds.get(), wds, rtol=1e-5, atol=1e-5)
        del again, dx, ds, db, bbg, args
        cu.cuCtxSynchronize()
