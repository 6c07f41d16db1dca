"""Shared helpers of the Module-layer tests."""
import numpy as np
from cybn import gpuarray
from cybn.modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND

# (factory, data shape, per-activation?) for every module class; small shapes keep the software GPU fast.
CASES = {
    "BatchNorm": (lambda maps, **kw: BatchNorm(maps, **kw), (5, 4), True),
    "BatchNorm1D": (lambda maps, **kw: BatchNorm1D(maps, **kw), (3, 4, 5), False),
    "BatchNorm2D": (lambda maps, **kw: BatchNorm2D(maps, **kw), (3, 4, 3, 2), False),
    "BatchNorm3D": (lambda maps, **kw: BatchNorm3D(maps, **kw), (2, 4, 2, 3, 2), False),
    "BatchNormND1": (lambda maps, **kw: BatchNormND(1, maps, **kw), (4, 4, 3), False),
    "BatchNormND2": (lambda maps, **kw: BatchNormND(2, maps, **kw), (2, 4, 3, 3), False),
    "BatchNormND3": (lambda maps, **kw: BatchNormND(3, maps, **kw), (2, 4, 2, 2, 3), False),
}


def host(a):
    return None if a is None else a.get().copy()


def snapshot(bn):
    """Host copies of everything a rejected call must leave alone."""
    snap = {"numOfProps": bn.numOfProps, "inData": bn.inData, "data": bn.data, "grad": bn.grad}
    for n in ("scale", "bias", "mean", "var", "savemean", "saveinvvar"):
        snap[n] = host(getattr(bn, n))
    for n, var in bn.vars.items():
        snap["grad:" + n] = host(var.grad)
    return snap


def assert_unchanged(bn, snap):
    now = snapshot(bn)
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(now[k], v, err_msg=k)
        else:
            assert now[k] is v or now[k] == v, k


def to_gpu(a, dtype=np.float32):
    return gpuarray.to_gpu(np.ascontiguousarray(a, dtype=dtype))
