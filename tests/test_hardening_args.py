"""Strict arguments: epsilon/factor are real numbers (not str, not bool) in the functional API as in the
Modules; a zero-size input is a ModuleError in the Module layer; copy.deepcopy and pickle of a Module copy
its device tensors. Every rejected call changes nothing."""
import copy
import pickle

import numpy as np
import pytest

import cybn
from cybn import batchnorm
from cybn.modules import BatchNorm, BatchNorm2D, ModuleError


def arrays(C=3):
    rng = np.random.default_rng(1)
    host = dict(x=rng.standard_normal((2, C, 5)).astype(np.float32), scale=np.ones(C, np.float32),
                bias=np.zeros(C, np.float32), mean=np.full(C, 0.5, np.float32), var=np.full(C, 2, np.float32))
    return {k: cybn.to_gpu(v) for k, v in host.items()}, host


@pytest.mark.parametrize("epsilon,factor,name", [
    ("1e-5", 0.5, "epsilon"), (True, 0.5, "epsilon"), (np.bool_(True), 0.5, "epsilon"), (b"1", 0.5, "epsilon"),
    (1e-5, "0.5", "factor"), (1e-5, True, "factor"), (1e-5, False, "factor"), (1e-5, [0.5], "factor"),
])
def test_functional_api_takes_real_numbers_only(epsilon, factor, name):
    a, host = arrays()
    with pytest.raises(TypeError, match="%s must be a real number" % name):
        batchnorm.forward_train(a["x"], a["scale"], a["bias"], a["mean"], a["var"], epsilon, factor)
    if name == "epsilon":
        with pytest.raises(TypeError, match="epsilon must be a real number"):
            batchnorm.forward_infer(a["x"], a["scale"], a["bias"], a["mean"], a["var"], epsilon)
    for k in ("mean", "var"):
        np.testing.assert_array_equal(a[k].get(), host[k])


def test_numpy_reals_are_still_numbers():
    a, host = arrays()
    y, _, _ = batchnorm.forward_train(a["x"], a["scale"], a["bias"], a["mean"], a["var"], np.float32(1e-3),
                                      np.float64(1.0))
    x = host["x"].astype(np.float64)
    mu, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    want = (x - mu[None, :, None]) / np.sqrt(var[None, :, None] + 1e-3)
    np.testing.assert_allclose(y.get(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls,shape", [(BatchNorm2D, (0, 3, 2, 2)), (BatchNorm2D, (2, 3, 0, 2)), (BatchNorm, (0, 3))])
def test_zero_size_input_is_a_module_error(cls, shape):
    bn = cls(3)
    snap = {n: getattr(bn, n).get() for n in ("scale", "bias", "mean", "var")}
    with pytest.raises(ModuleError, match="no dimension may be 0"):
        bn(cybn.zeros(shape))
    for n, v in snap.items():
        np.testing.assert_array_equal(getattr(bn, n).get(), v, err_msg=n)
    assert bn.numOfProps == 0 and bn.data is None


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_deepcopy_and_pickle_copy_the_device_tensors(clone):
    rng = np.random.default_rng(2)
    bn = BatchNorm2D(3, name="bn")
    x = cybn.to_gpu(rng.standard_normal((4, 3, 2, 2)).astype(np.float32))
    bn(x)
    bn.backward(cybn.to_gpu(rng.standard_normal((4, 3, 2, 2)).astype(np.float32)))
    bn.updateParams(-0.1)
    want = {n: getattr(bn, n).get() for n in ("scale", "bias", "mean", "var")}
    other = clone(bn)
    for n, v in want.items():
        got = getattr(other, n)
        assert isinstance(got, cybn.GPUArray) and got.ptr != getattr(bn, n).ptr, n
        np.testing.assert_array_equal(got.get(), v, err_msg=n)
    # shared references stay shared inside the copy: the attribute is the Variable's data, the attrs entry
    assert other.scale is other.vars["scale"].data and other.mean is other.attrs["mean"]
    assert other.numOfProps == bn.numOfProps and other.name == "bn"
    # the copy trains on its own: the original's running statistics do not move
    other(cybn.to_gpu(rng.standard_normal((4, 3, 2, 2)).astype(np.float32) + 3))
    for n in ("mean", "var"):
        np.testing.assert_array_equal(getattr(bn, n).get(), want[n])
        assert not np.array_equal(getattr(other, n).get(), want[n])
