"""Paddle's SyncBatchNorm with data_format NHWC/NLC/NDHWC and NCHW through a one-process communicator: the
core's comm= paths take the channel-last data in place; both match float64 numpy from the maths."""
import numpy as np
import pytest

from cybn import gpuarray
from cybn.distributed.communicator import Communicator
from cybn.paddle import SyncBatchNorm
from cybn.testing import reference


class OneRank(Communicator):
    """A group of one process (rank 0 of 1): the allgather is the identity; counts its collectives."""

    def __init__(self):
        super().__init__(0, 1, None)
        self.calls = 0

    def _allgather_host(self, send, recv):
        self.calls += 1
        recv[0] = send


@pytest.mark.parametrize("fmt,shape", [("NLC", (4, 5, 3)), ("NHWC", (2, 4, 5, 3)), ("NDHWC", (2, 2, 3, 2, 3))])
def test_channels_last_sync_one_rank_is_the_batch(rng, fmt, shape):
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    comm = OneRank()
    bn = SyncBatchNorm(3, data_format=fmt, comm=comm)
    y = bn(gpuarray.to_gpu(x))
    eps, m = float(np.float32(1e-5)), float(np.float32(0.9))
    xf = np.moveaxis(x, -1, 1)  # the reference's channel-first view of the same values
    ry, rm, _, mean, invstd = reference.forward_train(xf, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps, 1 - m)
    assert comm.calls > 0
    np.testing.assert_allclose(y.get(), np.moveaxis(ry, 1, -1), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(bn._mean.numpy(), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn._variance.numpy(), m + (1 - m) * (1 / invstd ** 2 - eps), rtol=1e-5)


def test_nchw_sync_one_rank_is_the_batch(rng):
    x = rng.normal(1.0, 2.0, (4, 3, 5)).astype(np.float32)
    comm = OneRank()
    bn = SyncBatchNorm(3, comm=comm)
    y = bn(gpuarray.to_gpu(x))
    eps, m = float(np.float32(1e-5)), float(np.float32(0.9))
    ry, rm, _, mean, invstd = reference.forward_train(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), eps, 1 - m)
    assert comm.calls > 0
    np.testing.assert_allclose(y.get(), ry, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(bn._mean.numpy(), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn._variance.numpy(), m + (1 - m) * (1 / invstd ** 2 - eps), rtol=1e-5)
