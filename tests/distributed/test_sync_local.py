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
