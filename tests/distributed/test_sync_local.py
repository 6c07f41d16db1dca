"""SyncBatchNorm's split entries in one process (a one-rank communicator): the partials against float64 numpy,
and refusals that change nothing."""
import numpy as np
import pytest

import cybn
import cybn.batchnorm as bn
from cybn.distributed.communicator import Communicator


class OneRank(Communicator):
    def __init__(self):
        super().__init__(0, 1, None)

    def _allgather_host(self, send, recv):
        recv[0] = send


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_partials_are_the_exact_mean_and_biased_variance(dtype):
    rng = np.random.default_rng(3)
    x = (1.0e3 + rng.standard_normal((5, 4, 7)) * [[0.5], [1.0], [2.0], [0.01]]).astype(dtype)
    M, parts = bn.forward_train_partials(cybn.to_gpu(x))
    assert M == 35 and parts.shape == (3, 4) and parts.dtype == np.float32
    hi, lo, var = parts.get().astype(np.float64)
    xd = x.astype(np.float64)
    std = xd.std((0, 2))
    # the float pair carries the mean beyond one float32 (whose rounding alone is ~3e-5 at 1e3)
    assert np.all(np.abs(hi + lo - xd.mean((0, 2))) <= 1e-6 * std), (hi + lo - xd.mean((0, 2)), std)
    np.testing.assert_allclose(var, xd.var((0, 2)), rtol=1e-5)
    assert bn.forward_train_partials(cybn.to_gpu(np.zeros((0, 4, 7), dtype))) == (0, None)


def test_one_value_over_all_ranks_is_refused_and_changes_nothing():
    comm = OneRank()
    x = cybn.to_gpu(np.ones((1, 3), np.float32))
    rm, rv = cybn.to_gpu(np.full(3, 0.5, np.float32)), cybn.to_gpu(np.full(3, 2.0, np.float32))
    with pytest.raises(ValueError, match="1 value\\(s\\) per statistic over all 1 processes"):
        bn.forward_train(x, None, None, rm, rv, 1e-5, 0.5, comm=comm)
    assert (rm.get() == 0.5).all() and (rv.get() == 2.0).all()


def test_comm_none_is_the_local_forward():
    rng = np.random.default_rng(4)
    x = cybn.to_gpu(rng.standard_normal((6, 3, 5)).astype(np.float32))
    outs = []
    for comm in (None, OneRank()):
        rm, rv = cybn.to_gpu(np.zeros(3, np.float32)), cybn.to_gpu(np.ones(3, np.float32))
        y, sm, si = bn.forward_train(x, None, None, rm, rv, 1e-5, 0.5, comm=comm)
        outs.append((y.get(), sm.get(), rm.get(), rv.get()))
    for a, b in zip(*outs):  # same kernels' arithmetic for y; statistics from float64 rounded once
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("act,with_z,pass_y", [("swish", True, False), ("relu6", True, True), ("sigmoid", False, True),
                                                (None, False, False)])
def test_comm_epilogue_every_dtype_against_float64(dtype, act, with_z, pass_y):
    # The comm= path (partials, host combination, normalize and dx kernels from the combined values) for the
    # dtypes the MPI tests run without the epilogue; one rank, so the union is this batch.
    import ml_dtypes
    from cybn.testing import bn_ref_epilogue as epi
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    p = np.float64 if dt == np.float64 else np.float32
    rng = np.random.default_rng(8)
    x = (3.0 + rng.standard_normal((5, 3, 4)) * [[1.0], [0.5], [2.0]]).astype(dt)
    dy, z = rng.standard_normal((5, 3, 4)).astype(dt), rng.standard_normal((5, 3, 4)).astype(dt)
    scale, bias = (1.0 + 0.3 * rng.standard_normal(3)).astype(p), rng.standard_normal(3).astype(p)
    rm0, rv0 = rng.standard_normal(3).astype(p), (1.0 + rng.random(3)).astype(p)
    g = cybn.to_gpu
    gz, gb, rm, rv = (g(z) if with_z else None), g(bias), g(rm0), g(rv0)
    y, sm, si = bn.forward_train(g(x), g(scale), gb, rm, rv, 1e-5, 0.3, activation=act, residual=gz, comm=OneRank())
    got = bn.backward(g(x), g(dy), g(scale), sm, si, activation=act, y=y if pass_y else None,
                      residual=gz if with_z else False, bias=gb, comm=OneRank())
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    ry, rrm, rrv, mean, invstd, v = epi.forward_train(xd, scale, bias, rm0, rv0, 1e-5, 0.3, act, 0.0,
                                                      z.astype(np.float64) if with_z else None)
    rdx, rdz, rds, rdb = epi.backward(xd, dyd, scale, mean, invstd, v, act, 0.0)
    rtol, atol = epi.tolerances(dt)
    pairs = [("y", y, ry), ("dx", got[0], rdx), ("running_mean", rm, rrm), ("running_var", rv, rrv),
             ("scale_grad", got[-2], rds), ("bias_grad", got[-1], rdb)] + ([("dz", got[1], rdz)] if with_z else [])
    for name, a, want in pairs:
        np.testing.assert_allclose(a.get().astype(np.float64), want, rtol=rtol, atol=atol * max(1, np.abs(want).max()),
                                   err_msg=name)


@pytest.mark.parametrize("mode,shape,split", [("spatial", (3, 65, 40), 0), ("spatial", (3, 65, 40), 3),
                                              ("per_activation", (40, 65), 3)])
def test_comm_split_plans_c65_against_float64(mode, shape, split):
    # C = 65 (no power of two), and each statistic split over CTAs: the partials and sums come out of the
    # split plans' last CTA (finish_statistics / store_sums), then the combined values drive the second launches.
    from cybn.testing import reference as ref
    rng = np.random.default_rng(65)
    x = (10.0 + rng.standard_normal(shape) * 0.1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    K = shape[1]
    scale, bias = (1.0 + 0.3 * rng.standard_normal(K)).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    rm, rv = cybn.to_gpu(np.zeros(K, np.float32)), cybn.to_gpu(np.ones(K, np.float32))
    with bn.plan_override(split=split):
        y, sm, si = bn.forward_train(cybn.to_gpu(x), cybn.to_gpu(scale), cybn.to_gpu(bias), rm, rv, 1e-5, 0.5,
                                     mode=mode, comm=OneRank())
        dx, ds, db = bn.backward(cybn.to_gpu(x), cybn.to_gpu(dy), cybn.to_gpu(scale), sm, si, mode=mode,
                                 comm=OneRank())
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    ry, rrm, rrv, mean, invstd = ref.forward_train(xd, scale, bias, np.zeros(K), np.ones(K), 1e-5, 0.5, mode)
    rdx, rds, rdb = ref.backward(xd, dyd, scale, mean, invstd, mode)
    for name, a, want, tol in (("y", y, ry, 2e-5), ("running_mean", rm, rrm, 1e-6), ("running_var", rv, rrv, 1e-5),
                               ("dx", dx, rdx, 2e-4), ("scale_grad", ds, rds, 2e-5), ("bias_grad", db, rdb, 2e-5)):
        np.testing.assert_allclose(a.get().astype(np.float64).ravel(), np.ravel(want), rtol=tol,
                                   atol=tol * max(1.0, np.abs(want).max()), err_msg=name)
