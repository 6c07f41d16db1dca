"""The functional API takes DLPack producers and raw "dltensor" capsules without a copy: C-contiguous data as
given, and channels-last strides (torch's channels_last / channels_last_3d, from a producer or a capsule)
as NHWC data in place, exactly as __cuda_array_interface__ strides are. Values against the float64
channels-last reference (cybn.testing.reference_nhwc) on the memory-order data."""
import numpy as np
import pytest

import cybn
from cybn import batchnorm
from cybn.testing import reference, reference_nhwc as ref
from cybn.testing.dlpack import ChannelsLast, memory_order, restride

SHAPES = [(4, 8, 5, 6), (3, 12, 7), (2, 5, 3, 4, 3)]  # (N, C, spatial...): 2-d, 1-d, 3-d logical shapes


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-4) if np.dtype(dtype) == np.float32 else dict(rtol=1e-2, atol=1e-2)


def params(rng, C):
    return (rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32),
            (0.1 * rng.standard_normal(C)).astype(np.float32), rng.uniform(0.5, 2.0, C).astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=str)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_channels_last_capsules_in_all_four_calls(rng, shape, dtype, layout):
    """x, grad_y (and out) as capsules with channels-last strides, the layout keyword either way: the
    results are GPUArrays in memory order (N, spatial..., C), equal to the reference."""
    C = shape[1]
    x = memory_order((rng.standard_normal(shape) * 2 + 3).astype(dtype))
    dy = memory_order(rng.standard_normal(shape).astype(dtype))
    scale, bias, rm, rv = params(rng, C)
    gx, gdy = ChannelsLast(cybn.to_gpu(x)), ChannelsLast(cybn.to_gpu(dy))
    g_rm, g_rv = cybn.to_gpu(rm), cybn.to_gpu(rv)
    gs, gb = cybn.to_gpu(scale), cybn.to_gpu(bias)
    y, sm, si = batchnorm.forward_train(gx.capsule(), gs, gb, g_rm, g_rv, 1e-3, 0.25, layout=layout)
    dx, sg, bg = batchnorm.backward(gx.capsule(), gdy.capsule(), gs, sm, si, layout=layout)
    yi = batchnorm.forward_infer(gx.capsule(), gs, gb, g_rm, g_rv, 1e-3, layout=layout)
    dxi, sgi, bgi = batchnorm.backward_infer(gx.capsule(), gdy.capsule(), gs, g_rm, g_rv, 1e-3, layout=layout)
    wy, wrm, wrv, mean, invstd = ref.forward_train(x, scale, bias, rm, rv, 1e-3, 0.25)
    wdx, wsg, wbg = ref.backward(x, dy, scale, mean, invstd)
    wyi = ref.forward_infer(x, scale, bias, wrm, wrv, 1e-3)
    wdxi, wsgi, wbgi = ref.backward_infer(x, dy, scale, wrm, wrv, 1e-3)
    for name, got, want in (("y", y, wy), ("dx", dx, wdx), ("y_infer", yi, wyi), ("dx_infer", dxi, wdxi)):
        assert got.shape == x.shape, name  # memory order
        np.testing.assert_allclose(got.get().astype(np.float64), want, err_msg=name, **tol(dtype))
    for name, got, want in (("running_mean", g_rm, wrm), ("running_var", g_rv, wrv), ("scale_grad", sg, wsg),
                            ("bias_grad", bg, wbg), ("scale_grad_infer", sgi, wsgi), ("bias_grad_infer", bgi, wbgi)):
        np.testing.assert_allclose(got.get(), want, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(want).max()), err_msg=name)


def test_channels_last_producer_is_used_in_place(rng):
    """No copy: the producer's memory is x, and out= the same producer writes y there (in place)."""
    shape = (4, 8, 5, 6)
    x = memory_order((rng.standard_normal(shape) + 1).astype(np.float32))
    scale, bias, rm, rv = params(rng, 8)
    memory = cybn.to_gpu(x)
    producer = ChannelsLast(memory)
    y = batchnorm.forward_infer(producer, cybn.to_gpu(scale), cybn.to_gpu(bias), cybn.to_gpu(rm), cybn.to_gpu(rv),
                                1e-3, out=producer)
    assert y.ptr == memory.ptr and y.shape == x.shape
    np.testing.assert_allclose(memory.get(), ref.forward_infer(x, scale, bias, rm, rv, 1e-3), rtol=2e-4, atol=2e-4)
    # the training forward reads the producer's memory directly too (its y is a new array)
    y2, sm, _ = batchnorm.forward_train(producer, None, None, cybn.zeros(8), cybn.to_gpu(np.ones(8, np.float32)),
                                        1e-5, 0.1)
    np.testing.assert_allclose(sm.get(), memory.get().astype(np.float64).mean((0, 1, 2)), rtol=1e-5, atol=1e-5)


def test_c_contiguous_dlpack_and_dlpack_parameters(rng):
    """A C-contiguous capsule is NCHW data as given; parameters may come through DLPack as well."""
    shape = (3, 4, 5)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    scale, bias, rm, rv = params(rng, 4)
    gx = cybn.to_gpu(x)
    g_rm, g_rv = cybn.to_gpu(rm), cybn.to_gpu(rv)
    y, _, _ = batchnorm.forward_train(gx.__dlpack__(stream=-1), cybn.to_gpu(scale).__dlpack__(stream=-1),
                                      cybn.to_gpu(bias).__dlpack__(stream=-1), g_rm, g_rv, 1e-3, 0.25)
    wy, wrm, _, _, _ = reference.forward_train(x, scale, bias, rm, rv, 1e-3, 0.25)
    np.testing.assert_allclose(y.get(), wy, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(g_rm.get(), wrm, rtol=1e-5, atol=1e-6)


def test_dlpack_refusals_name_the_problem_and_change_nothing(rng):
    shape = (2, 3, 4, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    g_rm = cybn.to_gpu(np.zeros(3, np.float32))
    gx, g_rv = cybn.to_gpu(x), cybn.to_gpu(np.ones(3, np.float32))
    cl = ChannelsLast(cybn.to_gpu(memory_order(x)))
    # a channels-last grad_y beside a C-contiguous (NCHW) x
    with pytest.raises(ValueError, match="grad_y has channels-last strides but x is NCHW"):
        batchnorm.backward(gx, cl.capsule(), None, g_rm, g_rv)
    # strides that are neither layout: refused naming both, the capsule left unconsumed
    cap = restride(gx.__dlpack__(stream=-1), shape, (60, 1, 3, 12))
    with pytest.raises(ValueError, match=r"x: .*neither C-contiguous \(60, 20, 5, 1\) nor dense channels-last"):
        batchnorm.forward_train(cap, None, None, g_rm, g_rv, 1e-3, 0.25)
    assert "used_dltensor" not in repr(cap)
    np.testing.assert_array_equal(g_rm.get(), np.zeros(3))
    # host arrays (numpy has __dlpack__) are still the GPUArray TypeError
    with pytest.raises(TypeError, match=r"x must be a GPUArray .*got ndarray \(host data: cybn.to_gpu\)"):
        batchnorm.forward_infer(x, None, None, g_rm, g_rv, 1e-3)
