"""Workspace lifetime: a cybn stream's workspace goes with the stream, a thread's with the thread, foreign
handles cannot grow the table without bound, and free_workspaces() never frees a workspace a call in another
thread is using."""
import gc
import threading

import numpy as np
import pytest

import cybn
from cybn import batchnorm, softgpu

SHAPE = (2, 3, 512)


def split_call(x, stream=None):
    """A forward_train on the split plan (it needs a workspace); returns y on the host."""
    C = x.shape[1]
    rm, rv = cybn.zeros((C,), stream=stream), cybn.to_gpu(np.ones(C, np.float32), stream=stream)
    with batchnorm.plan_override(split=3):
        y, _, _ = batchnorm.forward_train(x, None, None, rm, rv, 1e-5, 0.5, stream=stream)
    return y.get(stream=stream)


def reference(xh):
    mu, var = xh.mean(axis=(0, 2), keepdims=True), xh.var(axis=(0, 2), keepdims=True)
    return (xh - mu) / np.sqrt(var + 1e-5)


@pytest.fixture
def data():
    """(host x, device x). Only the host array is the fixture's value: pytest keeps fixture values until the
    item's teardown ends, after the session's leak check when this is the last test."""
    batchnorm.free_workspaces()
    xh = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    yield lambda: (xh, cybn.to_gpu(xh))
    batchnorm.free_workspaces()


def live():
    gc.collect()
    cybn.memory.default_pool().free_all()
    return softgpu.live_allocations()[0]


def test_destroyed_streams_release_their_workspaces(data):
    xh, x = data()
    split_call(x)
    before, kept = live(), batchnorm.workspace_count()[0]
    for _ in range(150):
        s = cybn.Stream()
        np.testing.assert_allclose(split_call(x, s), reference(xh), rtol=1e-4, atol=1e-4)
        s.synchronize()
        del s
    assert batchnorm.workspace_count()[0] == kept
    assert live() <= before


def test_foreign_stream_handles_cannot_grow_the_table(data):
    from cuda.bindings import driver
    xh, x = data()
    handles = []
    try:
        for _ in range(batchnorm.MAX_WORKSPACES + 20):
            err, h = driver.cuStreamCreate(0)
            assert int(err) == 0
            handles.append(h)
            split_call(x, cybn.Stream.external(int(h)))
            assert batchnorm.workspace_count()[0] <= batchnorm.MAX_WORKSPACES
    finally:
        for h in handles:
            driver.cuStreamDestroy(h)


def test_exited_threads_release_their_workspaces(data):
    xh, x = data()
    split_call(x)
    kept, errors = batchnorm.workspace_count()[0], []

    def work():
        try:
            np.testing.assert_allclose(split_call(x), reference(xh), rtol=1e-4, atol=1e-4)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    for _ in range(40):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    gc.collect()
    assert not errors, errors
    assert batchnorm.workspace_count()[0] == kept


def test_free_workspaces_racing_a_split_call(data):
    """Before: free_workspaces() between a split call's two launches freed the workspace they share (a
    memcheck report, CUDA_ERROR_ILLEGAL_ADDRESS)."""
    xh = np.random.default_rng(5).standard_normal((2, 4, 4096)).astype(np.float32)
    x, want, errors, done = cybn.to_gpu(xh), reference(xh.astype(np.float64)), [], threading.Event()

    def calls():
        try:
            for _ in range(25):
                np.testing.assert_allclose(split_call(x), want, rtol=1e-4, atol=1e-4)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=calls)
    t.start()
    while not done.is_set():
        batchnorm.free_workspaces()
    t.join()
    assert not errors, errors[0]
