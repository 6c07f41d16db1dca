"""cybn.distributed in one process: Chan's combination against float64 numpy, the call-header check, the
communicators' refusals, and a one-rank MPI communicator (singleton init) staging device buffers."""
import subprocess
import sys

import numpy as np
import pytest

from cybn.distributed import (DistributedError, NCCLCommunicator, RankMismatchError, call_header,
                              combine_moments)
from cybn.distributed.stats import check_headers


def _partials(chunks):
    rows = []
    for x in chunks:
        if len(x):
            rows.append([np.full(x.shape[1], len(x)), x.mean(0), x.var(0)])
        else:
            rows.append([np.zeros(3), np.full(3, np.nan), np.full(3, np.inf)])  # ignored
    return np.array(rows)


@pytest.mark.parametrize("counts", [(3, 0, 1, 1, 7), (0, 0, 2), (1, 1), (0, 9, 0)])
def test_combine_matches_the_concatenated_batch(counts):
    rng = np.random.default_rng(len(counts))
    chunks = [50.0 + rng.standard_normal((n, 3)) * [1, 2, 3] for n in counts]
    n, m, v = combine_moments(_partials(chunks))
    x = np.concatenate(chunks)
    np.testing.assert_array_equal(n, len(x))
    np.testing.assert_allclose(m, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(v, x.var(0), rtol=1e-11)


def test_combine_per_channel_counts_and_empty_channels():
    p = np.array([[[2, 0], [1.0, 7.0], [0.25, 9.0]],
                  [[1, 0], [4.0, 7.0], [0.0, 9.0]]])
    n, m, v = combine_moments(p)
    np.testing.assert_array_equal(n, [3, 0])
    x = np.array([0.5, 1.5, 4.0])  # mean 1 and variance 0.25 from two values, then one value 4
    np.testing.assert_allclose(m[0], x.mean(), rtol=1e-15)
    np.testing.assert_allclose(v[0], x.var(), rtol=1e-15)
    assert np.isnan(m[1]) and np.isnan(v[1])


def test_combine_in_variance_form_keeps_float64_range():
    # 1e10 values of variance 1e300 per rank: M2 = 1e310 would overflow float64, the variance form does not.
    # Two halves of equal size with means -1e150 and 1e150 and variances 1e300, 3e300: the union's variance
    # is the mean variance 2e300 plus the between-means term (1e150)^2 = 1e300.
    p = np.array([[[1e10], [-1e150], [1e300]], [[1e10], [1e150], [3e300]]])
    n, m, v = combine_moments(p)
    assert n[0] == 2e10 and m[0] == 0.0
    np.testing.assert_allclose(v, [3e300], rtol=1e-15)


def test_combine_refuses_bad_partials():
    with pytest.raises(ValueError, match=r"shape \(ranks, 3, C\)"):
        combine_moments(np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="counts must be finite and not negative"):
        combine_moments(np.array([[[-1.0], [0.0], [0.0]]]))


def test_header_check_names_every_rank_of_each_differing_field():
    rows = np.stack([call_header(8, np.float32, "spatial", "moments"),
                     call_header(8, np.float16, "spatial", "moments"),
                     call_header(9, np.float32, "per_activation", "moments")])
    with pytest.raises(RankMismatchError) as info:
        check_headers(rows)
    msg = str(info.value)
    assert "C: rank 0=8, rank 1=8, rank 2=9" in msg
    assert "dtype: rank 0=float32, rank 1=float16, rank 2=float32" in msg
    assert "layout: rank 0=spatial, rank 1=spatial, rank 2=per_activation" in msg
    assert "op:" not in msg
    check_headers(rows[[0, 0]])  # the same call on every rank passes


def test_nccl_refuses_the_software_gpu():
    with pytest.raises(DistributedError, match="needs a real NVIDIA GPU: cybn is running on its software GPU"):
        NCCLCommunicator()


def test_torch_communicator_needs_an_initialised_group():
    torch = pytest.importorskip("torch")
    from cybn.distributed import TorchCommunicator
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(DistributedError, match="init_process_group"):
        TorchCommunicator()


SINGLETON = """
import numpy as np
from cybn import softgpu
softgpu.load()
import cybn
from cybn.distributed import MPICommunicator
comm = MPICommunicator(timeout=10.0)
assert (comm.rank, comm.size) == (0, 1), (comm.rank, comm.size)
s = cybn.Stream()
a = np.linspace(-2, 3, 11).astype(np.float32)
g = comm.allgather(cybn.to_gpu(a, stream=s), stream=s)
assert g.shape == (1, 11), g.shape
assert (g.get(stream=s) == a[None]).all()
assert (comm.allreduce(cybn.to_gpu(a, stream=s), stream=s).get(stream=s) == a).all()
for call, want in ((lambda: comm.allgather(a, np.empty((2, 11), np.float32)), "recv must have shape (1, 11)"),
                   (lambda: comm.allgather(a, cybn.to_gpu(a[None])), "pass two numpy arrays or two GPUArrays"),
                   (lambda: MPICommunicator(timeout=0), "timeout must be a positive number")):
    try:
        call()
    except (TypeError, ValueError) as exc:
        assert want in str(exc), exc
    else:
        raise AssertionError("accepted: " + want)
comm.close()
print("singleton ok")
"""


def test_mpi_singleton_stages_device_buffers_on_a_stream():
    # Its own process: a plain `python` run is MPI's one-rank singleton; this process never initialises MPI.
    pytest.importorskip("mpi4py")
    proc = subprocess.run([sys.executable, "-c", SINGLETON], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "singleton ok" in proc.stdout, proc.stdout + proc.stderr


def test_header_names_the_epilogue_and_the_refusing_ranks():
    rows = np.stack([call_header(4, np.float32, "spatial", "forward", activation="leaky_relu", activation_alpha=0.1),
                     call_header(4, np.float32, "spatial", "forward", activation="leaky_relu", activation_alpha=0.2,
                                 residual=True)])
    with pytest.raises(RankMismatchError) as info:
        check_headers(rows)
    msg = str(info.value)
    assert "activation_alpha: rank 0=0.1, rank 1=0.2" in msg and "residual: rank 0=0, rank 1=1" in msg, msg
    assert "activation:" not in msg and "C:" not in msg, msg
    refused = rows.copy()
    refused[1] = call_header(0, "none", "none", "none", refused=True)
    with pytest.raises(DistributedError, match=r"rank\(s\) 1 of 2 refused the call's arguments") as info:
        check_headers(refused)
    assert not isinstance(info.value, RankMismatchError)
    older = rows.copy()
    older[1, 1] = 1  # another header version on rank 1
    with pytest.raises(RankMismatchError, match=r"different cybn call-header protocols \(protocol, version: rank 0="):
        check_headers(older)
