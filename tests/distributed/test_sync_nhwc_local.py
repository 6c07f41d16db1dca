"""Channels-last SyncBatchNorm's split entries in one process (a one-rank communicator), every dtype: the
NHWC kernels' partials (BN_PARTIALS: mean hi, lo, biased variance; nothing else written) and the backward's
raw sums (BN_SUMS) at fused and split plans against float64 numpy; forward_train / backward with comm= and
layout="NHWC" (with the fused epilogue, and torch-style channels-last strides) against the reference."""
import numpy as np
import pytest

import cybn
import cybn.batchnorm as bn
from cybn import softgpu
from cybn.distributed.communicator import Communicator
from cybn.testing import bn_ref_epilogue as R

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    BF16 = None

DTYPES = ["float32", "float16", "float64", pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    BF16 is None, reason="ml_dtypes (the test extra) not installed"))]
PLANS = [dict(), dict(split=3), dict(cache=0)]
PLAN_IDS = ["fused", "split3", "fused-nocache"]
# Relative to each quantity's largest magnitude (one rounding of the data type after P maths).
TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2, "float64": 1e-12}


@pytest.fixture
def rng():
    return np.random.default_rng(20261202)


class OneRank(Communicator):
    def __init__(self):
        super().__init__(0, 1, None)

    def _allgather_host(self, send, recv):
        recv[0] = send


def _pdt(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _close(got, want, tol, what):
    got = np.asarray(got.get() if hasattr(got, "get") else got, np.float64).reshape(np.shape(want))
    err = np.abs(got - want).max()
    assert err <= tol * max(1.0, np.abs(want).max()), (what, err, tol)


@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7, 65), (3, 4, 5, 16), (2, 9, 1)], ids=str)
def test_partials_are_the_exact_mean_and_biased_variance(shape, dtype, plan):
    rng = np.random.default_rng(3)
    C = shape[-1]
    x = (1.0e3 + rng.standard_normal(shape) * np.linspace(0.01, 2.0, C)).astype(dtype)
    with bn.plan_override(**plan), softgpu.measure() as m:
        M, parts = bn.forward_train_partials(cybn.to_gpu(x), layout="NHWC")
    assert m.launches_count == 1  # the partials only: no normalising launch
    assert M == x.size // C and parts.shape == (3, C) and parts.dtype == _pdt(dtype)
    hi, lo, var = parts.get().astype(np.longdouble)  # x86's 64-bit mantissa: the pair's sum, exactly
    xd = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    std = xd.std(axes)
    rel = 1e-12 if np.dtype(dtype) == np.float64 else 1e-6
    # the float pair carries the mean beyond one float (whose rounding alone is ~3e-5 at 1e3 in float32,
    # 1e-13 in float64): against the mean in extended precision
    err = np.abs(hi + lo - x.astype(np.longdouble).mean(axes)).astype(np.float64)
    assert np.all(err <= rel * np.maximum(std, 1e-3)), (err, std)
    np.testing.assert_allclose(var, xd.var(axes), rtol=1e-10 if rel == 1e-12 else 1e-5, atol=1e-12)
    assert bn.forward_train_partials(cybn.to_gpu(np.zeros((0,) + shape[1:], dtype)), layout="NHWC") == (0, None)


def _step(rng, shape, dtype, act, residual, comm, plan, strided=False):
    """forward_train and backward with comm (None: local) in channels last; returns the host results."""
    dtype, pdt = np.dtype(dtype), _pdt(dtype)
    C = shape[-1]
    alpha = 2.5 if act == "clipped_relu" else 0.0
    x = (rng.standard_normal(shape) * 1.5 + 1.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype) if residual else None
    scale, bias = rng.uniform(0.5, 1.5, C).astype(pdt), rng.standard_normal(C).astype(pdt)
    rm, rv = cybn.to_gpu(np.zeros(C, pdt)), cybn.to_gpu(np.ones(C, pdt))
    g = cybn.to_gpu
    gx, gdy, gz = g(x), g(dy), None if z is None else g(z)
    if strided:  # torch-style channels_last strides over the same memory: used in place, as NHWC
        gx, gdy = _ChannelsLast(gx), _ChannelsLast(gdy)
    kw = dict(layout="NCHW" if strided else "NHWC", activation=act, activation_alpha=alpha, comm=comm)
    with bn.plan_override(**plan):
        y, sm, si = bn.forward_train(gx, g(scale), g(bias), rm, rv, 1e-5, 0.1, residual=gz, **kw)
        recompute = act in ("swish", "clipped_relu")
        outs = bn.backward(gx, gdy, g(scale), sm, si, y=y if (act or residual) else None,
                           residual=(gz if recompute else True) if residual else False, bias=g(bias), **kw)
    got = dict(y=y, rm=rm, rv=rv, dx=outs[0], ds=outs[-2], db=outs[-1])
    if residual:
        got["dz"] = outs[1]
    cf = lambda a: None if a is None else np.moveaxis(a.astype(np.float64), -1, 1)  # noqa: E731
    ry, rrm, rrv, mean, invstd, v = R.forward_train(cf(x), scale, bias, np.zeros(C), np.ones(C), 1e-5, 0.1, act,
                                                    alpha, cf(z))
    rdx, rdz, rds, rdb = R.backward(cf(x), cf(dy), scale, mean, invstd, v, act, alpha)
    cl = lambda a: np.moveaxis(a, 1, -1)  # noqa: E731
    want = dict(y=cl(ry), rm=rrm, rv=rrv, dx=cl(rdx), dz=cl(rdz), ds=rds, db=rdb)
    return got, want


class _ChannelsLast:
    """A foreign array with torch's channels_last strides: logical shape (N, C, *spatial) over a GPUArray in
    memory order (N, *spatial, C)."""

    def __init__(self, a):
        self.a = a
        shape, strides = a.shape, a.strides
        self.__cuda_array_interface__ = {"shape": (shape[0], shape[-1]) + shape[1:-1],
                                         "strides": (strides[0], strides[-1]) + strides[1:-1],
                                         "typestr": a.dtype.str, "data": (a.ptr, False), "version": 3}


@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,residual", [(None, False), ("relu", True), ("clipped_relu", True), ("swish", False)])
def test_one_rank_sync_matches_the_reference(rng, dtype, plan, act, residual):
    got, want = _step(rng, (4, 5, 3, 65), dtype, act, residual, OneRank(), plan)
    tol = TOL[str(np.dtype(dtype))]
    for k, a in got.items():
        # the parameter gradients sum M terms whose act' may be read from a rounded y
        t = tol * (4 if k in ("ds", "db") and np.dtype(dtype).itemsize < 4 else 1)
        _close(a, want[k], t, k)


def test_channels_last_strides_under_comm(rng):
    """torch-style channels_last x and grad_y under comm=: taken as NHWC in place, as the local call does."""
    got, want = _step(rng, (3, 4, 6, 8), "float32", None, False, OneRank(), {}, strided=True)
    assert got["y"].shape == (3, 4, 6, 8)  # memory order (N, H, W, C)
    for k, a in got.items():
        _close(a, want[k], TOL["float32"], k)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sync_backward_sums_and_dz_in_channels_last(rng, dtype):
    """The backward's one NHWC launch with BN_SUMS (no dx there) then the dx launch: two launches whatever
    the plan, dz written in the first."""
    shape = (4, 6, 6, 16)
    x = cybn.to_gpu(rng.standard_normal(shape).astype(dtype))
    dy = cybn.to_gpu(rng.standard_normal(shape).astype(dtype))
    z = cybn.to_gpu(rng.standard_normal(shape).astype(dtype))
    p = [cybn.to_gpu(a) for a in (np.ones(16, np.float32), np.zeros(16, np.float32))]
    rm, rv = cybn.to_gpu(np.zeros(16, np.float32)), cybn.to_gpu(np.ones(16, np.float32))
    comm = OneRank()
    for plan in PLANS:
        with bn.plan_override(**plan):
            y, sm, si = bn.forward_train(x, *p, rm, rv, 1e-5, 0.1, layout="NHWC", activation="relu", residual=z,
                                         comm=comm)
            with softgpu.measure() as m:
                bn.backward(x, dy, p[0], sm, si, layout="NHWC", activation="relu", y=y, residual=True, bias=p[1],
                            comm=comm)
        assert m.launches_count == 2, plan
