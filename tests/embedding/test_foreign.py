"""BatchNorm inside someone else's pipeline at the Python level: device memory from another allocator
(GPUArray.from_pointer with a keep-alive owner, __cuda_array_interface__ objects), a stream created
outside cybn (Stream.external), `with cybn.stream(s):` for Module calls, and events ordering a
producer stream before the BatchNorm stream."""
import gc
import threading
import weakref

import numpy as np
import pytest

import cybn
from cybn import batchnorm, softgpu
from cybn.gpuarray import GPUArray
from cybn.modules import BatchNorm2D

from cybn.testing.reference import train_then_infer as bn_reference

TOL = dict(rtol=2e-4, atol=2e-4)


@pytest.fixture(scope="module")
def drv():
    """The raw driver as 'another library' uses it: the device's primary context current on this thread."""
    cybn.get_device()   # cybn selects the driver (the software GPU) before anything calls cuda.bindings
    from cuda.bindings import driver
    err, dev = driver.cuDeviceGet(0)
    err, ctx = driver.cuDevicePrimaryCtxRetain(dev)
    assert int(err) == 0, err
    assert int(driver.cuCtxSetCurrent(ctx)[0]) == 0
    yield driver
    driver.cuDevicePrimaryCtxRelease(dev)


class ForeignBlock:
    """Device memory owned by 'another library' (raw cuMemAlloc through cuda.bindings)."""

    def __init__(self, drv, nbytes):
        self.drv = drv
        err, self.ptr = drv.cuMemAlloc(nbytes)
        assert int(err) == 0, err
        self.ptr = int(self.ptr)

    def __del__(self):
        self.drv.cuMemFree(self.ptr)


class ForeignArray:
    """A foreign device array seen only through __cuda_array_interface__ (v3)."""

    def __init__(self, block, shape, dtype):
        self.block = block
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype).str, "strides": None,
                                         "data": (block.ptr, False), "version": 3, "stream": None}


class ForeignStream:
    def __init__(self, drv):
        self.drv = drv
        err, self.handle = drv.cuStreamCreate(1)   # CU_STREAM_NON_BLOCKING
        assert int(err) == 0, err

    def destroy(self):
        self.drv.cuStreamDestroy(self.handle)
        self.handle = None

    def __del__(self):
        if self.handle is not None:
            self.destroy()


def foreign(drv, ary):
    """ary copied into foreign memory, as a GPUArray that keeps the foreign block alive."""
    block = ForeignBlock(drv, ary.nbytes)
    g = GPUArray.from_pointer(block.ptr, ary.shape, ary.dtype, owner=block)
    g.set(np.ascontiguousarray(ary))
    return g


def data(shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    return (rng.standard_normal(shape).astype(np.float32) * 1.5 + 0.3, rng.standard_normal(shape).astype(np.float32),
            rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32))


def test_foreign_memory_and_stream_functional(drv):
    """forward_train/backward/forward_infer on foreign memory, launched on a foreign stream."""
    shape = (3, 4, 2, 3)
    x, dy, scale, bias = data(shape, 0)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    fs = ForeignStream(drv)
    s = cybn.Stream.external(int(fs.handle), owner=fs)
    with cybn.stream(s):
        gx, gdy, gs, gb, grm, grv = (foreign(drv, a) for a in (x, dy, scale, bias, rm, rv))
        y, sm, si = batchnorm.forward_train(gx, gs, gb, grm, grv, 1e-5, 0.3)
        dx, sg, bg = batchnorm.backward(gx, gdy, gs, sm, si)
        yi = batchnorm.forward_infer(gx, gs, gb, grm, grv, 1e-5)
    s.synchronize()
    ref = bn_reference(x.reshape(3, 4, 6), scale, bias, rm, rv, dy.reshape(3, 4, 6), 1e-5, 0.3, "spatial")
    for name, got in (("y", y), ("save_mean", sm), ("save_invstd", si), ("dx", dx), ("scale_grad", sg),
                      ("bias_grad", bg), ("y_infer", yi), ("running_mean", grm), ("running_var", grv)):
        np.testing.assert_allclose(got.get(stream=s).ravel(), ref[name], **TOL, err_msg=name)


def test_cuda_array_interface_inputs(drv):
    """A foreign array known only by __cuda_array_interface__ is accepted as x and out."""
    shape = (4, 3, 5)
    x, _, scale, bias = data(shape, 1)
    bx, by = ForeignBlock(drv, x.nbytes), ForeignBlock(drv, x.nbytes)
    assert int(drv.cuMemcpyHtoD(bx.ptr, x, x.nbytes)[0]) == 0
    fx, fy = ForeignArray(bx, shape, np.float32), ForeignArray(by, shape, np.float32)
    rm, rv = cybn.zeros((3,), np.float32), cybn.to_gpu(np.ones(3, np.float32))
    batchnorm.forward_train(fx, cybn.to_gpu(scale), cybn.to_gpu(bias), rm, rv, 1e-5, 1.0, out=fy)
    cybn.Stream.legacy().synchronize()
    y = np.empty_like(x)
    assert int(drv.cuMemcpyDtoH(y, by.ptr, y.nbytes)[0]) == 0
    ref = bn_reference(x, scale, bias, np.zeros(3), np.ones(3), x, 1e-5, 1.0, "spatial")
    np.testing.assert_allclose(y.ravel(), ref["y"], **TOL)


def test_from_pointer_keeps_owner_alive(drv):
    live = softgpu.live_allocations()[0]
    block = ForeignBlock(drv, 64)
    alive = weakref.ref(block)
    g = GPUArray.from_pointer(block.ptr, (16,), np.float32, owner=block)
    del block
    gc.collect()
    assert alive() is not None            # the array keeps the foreign block alive
    g.fill(2.5)
    view = g.reshape(4, 4)
    del g
    gc.collect()
    assert alive() is not None            # and so does a view of it
    np.testing.assert_array_equal(view.get(), np.full((4, 4), 2.5, np.float32))
    del view
    gc.collect()
    assert alive() is None
    assert softgpu.live_allocations()[0] == live   # the owner freed it


def test_pipeline_with_events_and_module_on_own_stream(drv):
    """A producer stream uploads x; the BatchNorm stream (foreign) waits on its event; the Module's
    forward and backward run on the current stream; the host waits on the BatchNorm stream's event."""
    shape = (2, 3, 4, 4)
    x, dy, _, _ = data(shape, 2)
    bn = BatchNorm2D(3, epsilon=1e-4, initFactor=1.0)
    scale, bias = bn.scale.get().ravel(), bn.bias.get().ravel()
    producer = cybn.Stream()
    fs = ForeignStream(drv)
    bn_stream = cybn.Stream.external(int(fs.handle), owner=fs)
    with cybn.stream(producer):
        gx, gdy = cybn.to_gpu(x), cybn.to_gpu(dy)
        ready = producer.record()
    bn_stream.wait(ready)
    with cybn.stream(bn_stream):
        assert cybn.current_stream() is bn_stream
        y = bn(gx)
        dx = bn.backward(gdy)
        done = bn_stream.record()
    assert cybn.current_stream() == cybn.Stream.legacy()
    done.synchronize()
    ref = bn_reference(x.reshape(2, 3, 16), scale, bias, np.zeros(3), np.ones(3), dy.reshape(2, 3, 16), 1e-4, 1.0,
                       "spatial")
    np.testing.assert_allclose(y.get(stream=bn_stream).ravel(), ref["y"], **TOL)
    np.testing.assert_allclose(dx.get(stream=bn_stream).ravel(), ref["dx"], **TOL)
    np.testing.assert_allclose(bn.mean.get().ravel(), ref["running_mean"], **TOL)


def test_module_launches_on_the_current_stream(drv):
    """The software GPU runs work at enqueue time, so stream order is not observable; a destroyed
    stream made current shows the Module hands the current stream to the driver."""
    x = cybn.to_gpu(data((2, 3, 2, 2), 3)[0])
    bn = BatchNorm2D(3)
    fs = ForeignStream(drv)
    dead = cybn.Stream.external(int(fs.handle))
    fs.destroy()
    with cybn.stream(dead):
        with pytest.raises(cybn.CudaError) as err:
            bn(x)
    assert err.value.name == "CUDA_ERROR_INVALID_HANDLE"
    bn(x)   # the same call on the legacy stream works
    cybn.Stream.legacy().synchronize()


def test_current_stream_is_per_thread():
    s = cybn.Stream()
    seen = []
    with cybn.stream(s):
        t = threading.Thread(target=lambda: seen.append(cybn.current_stream()))
        t.start()
        t.join()
        assert cybn.current_stream() is s
    assert seen == [cybn.Stream.legacy()]
