"""Property: a rejected call changes nothing. Random valid problems with one random defect (bad epsilon or factor,
wrong dtype, zero-size or misshapen arrays, aliasing, a view longer than its memory) raise before anything
launches: every buffer the call could write (outputs, running statistics, the parameters) keeps its bytes,
for the functional API and for the Modules."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import cybn
from cybn import batchnorm, gpuarray
from cybn.modules import BatchNorm, BatchNorm1D, BatchNorm2D, ModuleError

BAD_EPSILON = ["1e-5", True, 0, -1e-3, float("nan"), float("inf"), 1e-50, 1e39, None]
BAD_FACTOR = ["0.5", True, -0.1, 1.5, float("nan"), None]


def defects(a, C):
    """name -> (keyword overrides) of the forward_train call; each one is invalid."""
    x = a["x"]
    return {
        "epsilon": lambda d: dict(epsilon=d.draw(st.sampled_from(BAD_EPSILON))),
        "factor": lambda d: dict(factor=d.draw(st.sampled_from(BAD_FACTOR))),
        "x dtype": lambda d: dict(x=cybn.to_gpu(np.zeros(x.shape, d.draw(st.sampled_from([np.float64, np.int32]))))),
        "zero-size x": lambda d: dict(x=cybn.zeros((0,) + x.shape[1:]) if d.draw(st.booleans())
                                      else cybn.zeros(x.shape[:2] + (0,))),
        "scale length": lambda d: dict(scale=cybn.zeros((C + d.draw(st.sampled_from([-1, 1])),))),
        "out aliases x": lambda d: dict(out=gpuarray.GPUArray.from_pointer(x.ptr + 4 * d.draw(st.integers(1, 3)),
                                                                           x.shape, x.dtype, x)),
        "save_mean is running_mean": lambda d: dict(save_mean=a["running_mean"]),
        "running_mean is running_var": lambda d: dict(running_mean=a["running_var"]),
        "out longer than its memory": lambda d: dict(out=gpuarray.GPUArray.from_pointer(
            a["out_short"].ptr, x.shape, x.dtype, a["out_short"])),
    }


DEFECTS = ["epsilon", "factor", "x dtype", "zero-size x", "scale length", "out aliases x", "save_mean is running_mean",
           "running_mean is running_var", "out longer than its memory"]


def short_buffer(count):
    """count float32 sixes in an allocation of their own (cuMemAlloc, not a pool block), so the driver's
    address range ends right after them."""
    buf = cybn.DeviceBuffer(count * 4)
    view = gpuarray.GPUArray.from_pointer(buf.ptr, (count,), np.float32, buf)
    view.set(np.full(count, 6, np.float32))
    return view


@given(st.data(), st.integers(1, 6), st.integers(2, 40), st.sampled_from(["spatial", "per_activation"]),
       st.sampled_from(DEFECTS))
def test_a_rejected_functional_call_changes_nothing(data, C, S, mode, defect):
    rng = np.random.default_rng(C * 100 + S)
    K = C if mode == "spatial" else C * S

    def stat(lo, hi):
        return cybn.to_gpu(rng.uniform(lo, hi, K).astype(np.float32))
    a = dict(x=cybn.to_gpu(rng.standard_normal((2, C, S)).astype(np.float32)), scale=stat(0.5, 1.5),
             bias=stat(-1, 1), running_mean=stat(-1, 1), running_var=stat(0.5, 2),
             out=cybn.to_gpu(np.full((2, C, S), 7, np.float32)), save_mean=stat(8, 9), save_invstd=stat(9, 10),
             out_short=short_buffer(2 * C * S - 1))
    before = {k: v.get().copy() for k, v in a.items()}
    call = dict(x=a["x"], scale=a["scale"], bias=a["bias"], running_mean=a["running_mean"],
                running_var=a["running_var"], epsilon=1e-5, factor=0.5, out=a["out"], save_mean=a["save_mean"],
                save_invstd=a["save_invstd"], mode=mode)
    fault = defects(a, K)
    assert sorted(fault) == sorted(DEFECTS)
    call.update(fault[defect](data))
    with batchnorm.plan_override(split=data.draw(st.sampled_from([0, 2, 3]))):
        with pytest.raises((TypeError, ValueError)):
            batchnorm.forward_train(**call)
    for k, v in a.items():
        np.testing.assert_array_equal(v.get(), before[k], err_msg=f"{defect}: {k} changed")


MODULES = {"BatchNorm": (BatchNorm, 2), "BatchNorm1D": (BatchNorm1D, 3), "BatchNorm2D": (BatchNorm2D, 4)}


@given(st.sampled_from(sorted(MODULES)), st.integers(1, 5), st.data())
def test_a_rejected_module_call_changes_nothing(name, maps, data):
    cls, ndim = MODULES[name]
    bn = cls(maps)
    good = (2, maps) + (3,) * (ndim - 2)
    bn(cybn.to_gpu(np.random.default_rng(maps).standard_normal(good).astype(np.float32)))  # some state to keep
    snap = {n: getattr(bn, n).get().copy() for n in ("scale", "bias", "mean", "var", "savemean", "saveinvvar")}
    state = (bn.numOfProps, bn.data, bn.inData)
    bad = data.draw(st.sampled_from([
        ("ndim", cybn.zeros(good + (1,))), ("maps", cybn.zeros((2, maps + 1) + good[2:])),
        ("dtype", cybn.to_gpu(np.zeros(good, np.float64))), ("zero batch", cybn.zeros((0,) + good[1:])),
        ("zero spatial", cybn.zeros(good[:-1] + (0,))), ("host array", np.zeros(good, np.float32)),
    ]))
    forward = data.draw(st.booleans())
    with pytest.raises(ModuleError):
        bn(bad[1]) if forward else bn.backward(bad[1])
    assert (bn.numOfProps, bn.data, bn.inData) == state, bad[0]
    for n, v in snap.items():
        np.testing.assert_array_equal(getattr(bn, n).get(), v, err_msg=f"{bad[0]}: {n} changed")
