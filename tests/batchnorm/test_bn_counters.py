"""The split plans' counters without a memset: the last CTA of each column re-arms its counter, and the Python
face's workspaces track an armed extent (cybn/batchnorm/scratch.pxi's rule). A split call is 2 launches and no
memset on a workspace the previous call left armed, and one memset wherever the engine cannot trust the counters:
a fresh workspace, a counter extent larger than the last call's (another descriptor's partials lie there), a
failed launch. Every result is checked against the float64 reference (tests run under memcheck, racecheck and
initcheck), under two schedule seeds."""
import numpy as np
import pytest
from cuda.bindings import driver

import cybn
from cybn import batchnorm, softgpu
from cybn.batchnorm import batchnorm as core
from cybn.errors import CudaError
from cybn.testing import reference as ref

from bn_helpers import STAT_TOL, TOL, gpu, params

SEEDS = (3, 11)


def to_nchw(a, layout):
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


def forward(x, mode="spatial", layout="NCHW", stream=None, split=3):
    """One split forward_train and backward of x (host) on `stream`, each measured: [(launches, memsets)] and
    the results checked against the float64 reference."""
    rng = np.random.default_rng(x.size)
    xn = to_nchw(x, layout)
    K = xn.shape[1] if mode == "spatial" else int(np.prod(xn.shape[1:]))
    scale, bias, rm, rv = params(rng, K)
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    g_rm, g_rv = gpu(rm), gpu(rv)
    counts = []
    with batchnorm.plan_override(split=split):
        with softgpu.measure() as m:
            y, sm, si = batchnorm.forward_train(gpu(x), gpu(scale), gpu(bias), g_rm, g_rv, 1e-5, 0.1, mode=mode,
                                                layout=layout, stream=stream)
        counts.append((m.launches_count, m.counters["memset"]["calls"]))
        with softgpu.measure() as m:
            dx, ds, db = batchnorm.backward(gpu(x), gpu(dy), gpu(scale), sm, si, mode=mode, layout=layout,
                                            stream=stream)
        counts.append((m.launches_count, m.counters["memset"]["calls"]))
    wy, wrm, wrv, wmean, winvstd = ref.forward_train(xn, scale, bias, rm, rv, 1e-5, 0.1, mode)
    np.testing.assert_allclose(to_nchw(y.get(stream=stream), layout).astype(np.float64), wy, **TOL[x.dtype])
    np.testing.assert_allclose(sm.get(stream=stream), wmean, **STAT_TOL)
    np.testing.assert_allclose(si.get(stream=stream), winvstd, **STAT_TOL)
    np.testing.assert_allclose(g_rm.get(stream=stream), wrm, **STAT_TOL)
    np.testing.assert_allclose(g_rv.get(stream=stream), wrv, **STAT_TOL)
    wdx, wds, wdb = ref.backward(xn, to_nchw(dy, layout), scale, wmean, winvstd, mode)
    tol = dict(rtol=1e-3, atol=1e-3) if x.dtype == np.float32 else dict(rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(to_nchw(dx.get(stream=stream), layout).astype(np.float64), wdx, **tol)
    np.testing.assert_allclose(ds.get(stream=stream), wds, **tol)
    np.testing.assert_allclose(db.get(stream=stream), wdb, **tol)
    return counts


def data(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 0.5).astype(dtype)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_repeated_split_calls_are_two_launches_and_no_memset(fresh, seed, dtype):
    x = data((2, 3, 4096), seed, dtype)
    with softgpu.seed(seed):
        first = forward(x)
        again = [forward(x) for _ in range(2)]
    # A fresh workspace's counters are unknown: the first split call zeroes them once; its backward finds them
    # re-armed by the forward's last CTAs.
    assert first == [(2, 1), (2, 0)]
    assert again == [[(2, 0), (2, 0)]] * 2
    assert core._counters_armed() == 256  # 3 counters, rounded up to 256 bytes


@pytest.mark.parametrize("seed", SEEDS)
def test_changing_shapes_on_one_workspace(fresh, seed):
    """Small, large, small, large, other layouts and modes on the same (stream, thread) workspace. A call whose
    counters reach past the armed extent meets the previous call's partials there and must zero them; one whose
    counters lie inside it needs nothing, and leaves the extent at its own counters (its partials follow)."""
    small, large = data((2, 3, 4096), seed), data((2, 100, 512), seed + 1)  # counters 256 / 512 bytes
    nhwc, pa = data((2, 512, 70), seed + 2), data((64, 130), seed + 3)       # 512 bytes / 130 x 4 -> 768
    with softgpu.seed(seed):
        seen = [forward(small), forward(large), forward(small), forward(large), forward(nhwc, layout="NHWC"),
                forward(small), forward(pa, mode="per_activation"), forward(nhwc, layout="NHWC"),
                forward(pa, mode="per_activation")]
    memsets = [[c[1] for c in call] for call in seen]
    assert memsets == [[1, 0], [1, 0], [0, 0], [1, 0], [0, 0], [0, 0], [1, 0], [0, 0], [1, 0]]
    assert all(c[0] == 2 for call in seen for c in call)


def test_a_refused_call_keeps_the_counters_armed(fresh):
    x = data((2, 3, 4096))
    forward(x)
    rm, rv = cybn.zeros((3,)), cybn.to_gpu(np.ones(3, np.float32))
    with batchnorm.plan_override(split=3), pytest.raises(ValueError, match="epsilon"):
        batchnorm.forward_train(gpu(x), None, None, rm, rv, -1.0, 0.1)
    assert core._counters_armed() == 256
    assert forward(x) == [(2, 0), (2, 0)]


def test_a_failed_launch_disarms_the_workspace():
    """A launch the driver refuses (here: its stream was destroyed behind cybn's back) leaves the counters
    unknown: the next call on that workspace zeroes them again, and the failure changed no statistic."""
    err, h = driver.cuStreamCreate(0)
    assert int(err) == 0
    s = cybn.Stream.external(int(h))
    x = data((2, 3, 4096))
    forward(x, stream=s)
    assert forward(x, stream=s) == [(2, 0), (2, 0)]
    assert core._counters_armed(s) == 256
    assert int(driver.cuStreamDestroy(h)[0]) == 0
    rm, rv = cybn.to_gpu(np.full(3, 0.25, np.float32)), cybn.to_gpu(np.full(3, 2.0, np.float32))
    with batchnorm.plan_override(split=3):
        with pytest.raises(CudaError) as e:  # armed: no memset, the first launch itself is refused
            batchnorm.forward_train(gpu(x), None, None, rm, rv, 1e-5, 0.5, stream=s)
        assert e.value.call == "cuLaunchKernel"
        assert core._counters_armed(s) == 0
        with pytest.raises(CudaError) as e:  # disarmed: the memset is back (and refused on this stream too)
            batchnorm.forward_train(gpu(x), None, None, rm, rv, 1e-5, 0.5, stream=s)
        assert e.value.call == "cuMemsetD32Async"
    assert rm.get()[0] == np.float32(0.25) and rv.get()[0] == np.float32(2.0)
    core._drop_workspaces(lambda key: key[1] == int(h), 0)
