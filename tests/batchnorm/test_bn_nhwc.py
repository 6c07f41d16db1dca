"""Channels-last (layout="NHWC") BatchNorm against the float64 reference from the maths
(cybn.testing.reference_nhwc), on the software GPU with its checks on: forward-train, inference,
backward and eval-mode backward, for (N, C), 1-d, 2-d and 3-d data, fused and split plans, 16-byte and
element paths (C a multiple of the unit or not), N = 1, C = 1, odd C and large C."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray
from cybn.testing import reference_nhwc as ref

TOL = {np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4), np.dtype(np.float16): dict(rtol=2e-3, atol=4e-3)}
STAT_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-3)  # sums over M values of O(1) products

SHAPES = [
    (64, 12),            # (N, C): 16-byte units (fp32), both layouts agree
    (3, 40, 8),          # 1-d (N, L, C)
    (2, 5, 7, 16),       # 2-d (N, H, W, C)
    (2, 3, 4, 5, 24),    # 3-d (N, D, H, W, C), C not a power of two
    (4, 6, 6, 7),        # odd C: element path
    (3, 9, 6),           # C not a multiple of 4: element path
    (1, 37, 1),          # N = 1, C = 1
    (1, 5, 5, 13),       # N = 1, odd C
    (2, 3, 2048),        # large C, few rows
    (1, 3, 4096),        # larger C (M = 2 would make dx pure cancellation noise)
]
PLANS = [dict(), dict(split=3), dict(split=2, cache=0), dict(group=4, cache=1)]


def _params(rng, C):
    return (rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32),
            (0.1 * rng.standard_normal(C)).astype(np.float32), rng.uniform(0.5, 2.0, C).astype(np.float32))


def _gpu(a):
    return gpuarray.to_gpu(np.ascontiguousarray(a))


def _forward_train(rng, shape, dtype, plan, offset=0.0, affine=True):
    C = shape[-1]
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    scale, bias, rm, rv = _params(rng, C)
    if not affine:
        scale = bias = None
    g_rm, g_rv = _gpu(rm), _gpu(rv)
    with batchnorm.plan_override(**plan):
        y, sm, si = batchnorm.forward_train(_gpu(x), None if scale is None else _gpu(scale),
                                            None if bias is None else _gpu(bias), g_rm, g_rv, 1e-5, 0.1,
                                            layout="NHWC")
    wy, wrm, wrv, wmean, winvstd = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
    got = y.get()
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_allclose(got.astype(np.float64), wy, **TOL[np.dtype(dtype)], err_msg="y")
    np.testing.assert_allclose(sm.get(), wmean, **STAT_TOL, err_msg="save_mean")
    np.testing.assert_allclose(si.get(), winvstd, **STAT_TOL, err_msg="save_invstd")
    np.testing.assert_allclose(g_rm.get(), wrm, **STAT_TOL, err_msg="running_mean")
    np.testing.assert_allclose(g_rv.get(), wrv, **STAT_TOL, err_msg="running_var")
    return x, scale, sm.get(), si.get()


@pytest.mark.parametrize("plan", PLANS, ids=["auto", "split3", "split2-nocache", "lanes4-cache1"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_train_and_backward_fp32(rng, shape, plan):
    x, scale, sm, si = _forward_train(rng, shape, np.float32, plan)
    dy = rng.standard_normal(shape).astype(np.float32)
    with batchnorm.plan_override(**plan):
        dx, ds, db = batchnorm.backward(_gpu(x), _gpu(dy), _gpu(scale), _gpu(sm), _gpu(si), layout="NHWC")
    wdx, wds, wdb = ref.backward(x, dy, scale, sm, si)
    np.testing.assert_allclose(dx.get(), wdx, **TOL[np.dtype(np.float32)], err_msg="dx")
    np.testing.assert_allclose(ds.get(), wds, **GRAD_TOL, err_msg="dscale")
    np.testing.assert_allclose(db.get(), wdb, **GRAD_TOL, err_msg="dbias")


@pytest.mark.parametrize("plan", PLANS[:2], ids=["auto", "split3"])
@pytest.mark.parametrize("shape", [(3, 40, 8), (2, 5, 7, 16), (4, 6, 6, 7), (1, 5, 5, 13), (2, 3, 2048)], ids=str)
def test_fp16(rng, shape, plan):
    x, scale, sm, si = _forward_train(rng, shape, np.float16, plan)
    dy = rng.standard_normal(shape).astype(np.float16)
    with batchnorm.plan_override(**plan):
        dx, ds, db = batchnorm.backward(_gpu(x), _gpu(dy), _gpu(scale), _gpu(sm), _gpu(si), layout="NHWC")
    wdx, wds, wdb = ref.backward(x, dy, scale, sm, si)
    np.testing.assert_allclose(dx.get().astype(np.float64), wdx, **TOL[np.dtype(np.float16)], err_msg="dx")
    np.testing.assert_allclose(ds.get(), wds, **GRAD_TOL, err_msg="dscale")
    np.testing.assert_allclose(db.get(), wdb, **GRAD_TOL, err_msg="dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(5, 12), (2, 9, 8), (2, 3, 5, 7), (1, 2, 3, 4, 16), (1, 1, 4096), (3, 1)], ids=str)
def test_inference_and_eval_backward(rng, shape, dtype):
    C = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias, rm, rv = _params(rng, C)
    y = batchnorm.forward_infer(_gpu(x), _gpu(scale), _gpu(bias), _gpu(rm), _gpu(rv), 1e-5, layout="NHWC")
    np.testing.assert_allclose(y.get().astype(np.float64), ref.forward_infer(x, scale, bias, rm, rv, 1e-5),
                               **TOL[np.dtype(dtype)])
    with batchnorm.plan_override(split=2):
        dx, ds, db = batchnorm.backward_infer(_gpu(x), _gpu(dy), _gpu(scale), _gpu(rm), _gpu(rv), 1e-5,
                                              layout="NHWC")
    wdx, wds, wdb = ref.backward_infer(x, dy, scale, rm, rv, 1e-5)
    np.testing.assert_allclose(dx.get().astype(np.float64), wdx, **TOL[np.dtype(dtype)], err_msg="dx")
    np.testing.assert_allclose(ds.get(), wds, **GRAD_TOL, err_msg="dscale")
    np.testing.assert_allclose(db.get(), wdb, **GRAD_TOL, err_msg="dbias")


def test_in_place_non_affine_and_offset(rng):
    """out=x (each unit read before its owner writes it), no scale/bias, data at an offset of 1e4."""
    shape = (4, 5, 5, 12)
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    rm, rv = np.zeros(12, np.float32), np.ones(12, np.float32)
    for plan in (dict(), dict(split=3)):
        gx = _gpu(x)
        with batchnorm.plan_override(**plan):
            y, _, _ = batchnorm.forward_train(gx, None, None, _gpu(rm), _gpu(rv), 1e-5, 0.1, out=gx, layout="NHWC")
        assert y is gx
        np.testing.assert_allclose(gx.get(), ref.forward_train(x, None, None, rm, rv, 1e-5, 0.1)[0], rtol=1e-4,
                                   atol=2e-4)


def test_matches_nchw_of_the_transpose(rng):
    """The same statistics as the NCHW kernels on the transposed data (another path through the engine)."""
    x = rng.standard_normal((3, 6, 5, 8)).astype(np.float32)
    scale, bias, rm, rv = _params(rng, 8)
    a = batchnorm.forward_train(_gpu(x), _gpu(scale), _gpu(bias), _gpu(rm), _gpu(rv), 1e-5, 0.1, layout="NHWC")
    b = batchnorm.forward_train(_gpu(x.transpose(0, 3, 1, 2)), _gpu(scale), _gpu(bias), _gpu(rm), _gpu(rv), 1e-5, 0.1)
    np.testing.assert_allclose(a[0].get(), b[0].get().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[1].get(), b[1].get(), rtol=1e-6, atol=1e-7)


def test_plans_take_both_paths():
    """The heuristic fuses small M into one launch and splits large M over CTAs (then two launches);
    16-byte units exactly when C is a multiple of the unit and the pointers are aligned."""
    small = batchnorm.plan((2, 4, 4, 64), layout="NHWC")
    assert small["split"] == 1 and small["vec"] == 1 and "second" not in small
    big = batchnorm.plan((8, 64, 64, 16), layout="NHWC")
    assert big["split"] > 1 and big["second"]["block"] == big["block"]
    assert batchnorm.plan((2, 4, 4, 6), layout="NHWC")["vec"] == 0
    assert batchnorm.plan((2, 4, 4, 64), layout="NHWC", aligned=False)["vec"] == 0
    assert batchnorm.plan((2, 4, 4, 8), np.float16, layout="NHWC")["vec"] == 1
    assert batchnorm.plan((2, 4, 4, 12), np.float16, layout="NHWC")["vec"] == 0
    p = batchnorm.plan((4, 3, 4096), layout="NHWC")
    assert p["block"][0] * 4 * p["grid"][0] >= 4096  # every channel has a thread


def test_natural_split_matches_reference(rng):
    """A shape the heuristic itself splits (no override): partials, last-CTA combine, second launch."""
    shape = (8, 32, 32, 4)
    assert batchnorm.plan(shape, layout="NHWC")["split"] > 1
    assert batchnorm.plan(shape, layout="NHWC", kernel="backward")["split"] > 1
    x, scale, sm, si = _forward_train(rng, shape, np.float32, dict())
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, ds, db = batchnorm.backward(_gpu(x), _gpu(dy), _gpu(scale), _gpu(sm), _gpu(si), layout="NHWC")
    wdx, wds, wdb = ref.backward(x, dy, scale, sm, si)
    np.testing.assert_allclose(dx.get(), wdx, **TOL[np.dtype(np.float32)], err_msg="dx")
    np.testing.assert_allclose(ds.get(), wds, rtol=1e-4, atol=1e-2, err_msg="dscale")  # sums of 8192 terms
    np.testing.assert_allclose(db.get(), wdb, rtol=1e-4, atol=1e-2, err_msg="dbias")


def test_bad_layout_is_refused(rng):
    x = _gpu(rng.standard_normal((2, 3, 4)).astype(np.float32))
    p = _gpu(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="layout must be 'NCHW'"):
        batchnorm.forward_infer(x, p, p, p, p, 1e-5, layout="NCWH")
    with pytest.raises(ValueError, match="must have 4 elements"):
        batchnorm.forward_infer(x, _gpu(np.ones(3, np.float32)), None, p, p, 1e-5, layout="NHWC")


class _ChannelsLast:
    """A foreign array laid out as torch's channels_last / channels_last_3d: logical shape (N, C, *spatial),
    strides putting C innermost, over a GPUArray in memory order (N, *spatial, C)."""

    def __init__(self, g):
        self.g = g
        shape, strides = g.shape, g.strides
        self.shape = (shape[0], shape[-1]) + shape[1:-1]
        self.__cuda_array_interface__ = {"shape": self.shape, "strides": (strides[0], strides[-1]) + strides[1:-1],
                                         "typestr": g.dtype.str, "data": (g.ptr, False), "version": 3}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("memory_shape", [(2, 9, 8), (2, 5, 6, 8), (2, 3, 4, 5, 12)], ids=str)
def test_channels_last_strides_recognised_without_a_copy(rng, memory_shape, layout):
    """torch-style channels_last strides (1-d, 2-d, channels_last_3d) are channels-last data in place, with
    layout="NHWC" or the default: the results match the reference on the memory-order array, out= writes
    into the foreign memory, and inference moves exactly x's read and y's write (no copy, one launch)."""
    from cybn import softgpu
    C = memory_shape[-1]
    x = rng.standard_normal(memory_shape).astype(np.float32)
    dy = rng.standard_normal(memory_shape).astype(np.float32)
    scale, bias, rm, rv = _params(rng, C)
    gx, gdy, gout = _gpu(x), _gpu(dy), gpuarray.empty(memory_shape, np.float32)
    fx, fdy, fout = _ChannelsLast(gx), _ChannelsLast(gdy), _ChannelsLast(gout)
    g_rm, g_rv = _gpu(rm), _gpu(rv)
    y, sm, si = batchnorm.forward_train(fx, _gpu(scale), _gpu(bias), g_rm, g_rv, 1e-5, 0.1, out=fout, layout=layout)
    assert y.ptr == gout.ptr and y.shape == memory_shape  # the caller's memory, in memory order
    wy, wrm, wrv, _, _ = ref.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)
    np.testing.assert_allclose(gout.get(), wy, **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(g_rv.get(), wrv, **STAT_TOL)
    dx, ds, db = batchnorm.backward(fx, fdy, _gpu(scale), sm, si, layout=layout)
    wdx, wds, wdb = ref.backward(x, dy, scale, sm.get(), si.get())
    np.testing.assert_allclose(dx.get(), wdx, **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(ds.get(), wds, **GRAD_TOL)
    p = [_gpu(a) for a in (scale, bias, rm, rv)]
    with softgpu.measure() as m:
        batchnorm.forward_infer(fx, *p, 1e-5, out=fout, layout=layout)
    assert m.launches_count == 1 and m.load_bytes + m.store_bytes <= 8 * x.size + 64 * C
    np.testing.assert_allclose(gout.get(), ref.forward_infer(x, scale, bias, rm, rv, 1e-5), **TOL[np.dtype(np.float32)])


def test_channels_last_grad_must_match(rng):
    """A channels-last x with a contiguous NCHW grad_y is refused by name (they differ in memory order)."""
    gx = _gpu(rng.standard_normal((2, 5, 6, 8)).astype(np.float32))
    dy = _gpu(rng.standard_normal((2, 8, 5, 6)).astype(np.float32))
    p = _gpu(np.ones(8, np.float32))
    with pytest.raises(ValueError, match="grad_y must have x's shape"):
        batchnorm.backward(_ChannelsLast(gx), dy, p, p, p)
