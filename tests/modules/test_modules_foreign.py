"""The Module layer takes any device array with __cuda_array_interface__ or __dlpack__ without a copy (as the
functional API does), refuses the rest naming the fix, and its refusals say what to do: dtype (calcMode,
astype) and a training batch with one value per statistic."""
import numpy as np
import pytest

import cybn
from cybn import batchnorm
from modules_helpers import assert_unchanged, snapshot, to_gpu
from modules_reference import train_backward, train_forward
from cybn.modules import BatchNorm, BatchNorm2D, ModuleError


class CaiOnly:
    """A foreign device array that speaks only the CUDA Array Interface (as Numba's or CuPy's do)."""

    def __init__(self, base):
        self.base = base  # the memory's owner
        self.__cuda_array_interface__ = {"shape": base.shape, "typestr": base.dtype.str, "data": (base.ptr, False),
                                         "strides": None, "version": 3, "stream": 1}


class DLPackOnly:
    """A foreign device array that speaks only DLPack."""

    def __init__(self, base):
        self.base = base

    def __dlpack__(self, stream=None):
        return self.base.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.base.__dlpack_device__()


class HostDLPack:
    """A host array exposing DLPack (not a numpy.ndarray): kDLCPU."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


@pytest.mark.parametrize("foreign", [CaiOnly, DLPackOnly])
def test_foreign_arrays_train_without_a_copy(foreign):
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((4, 3, 5, 2)) * 2 + 1, rng.standard_normal((4, 3, 5, 2))
    gx, gdy = to_gpu(x), to_gpu(dy)
    bn = BatchNorm2D(3)
    scale = bn.scale.get().astype(np.float64)
    y = bn(foreign(gx))
    assert bn.inData.ptr == gx.ptr  # zero-copy: the module reads the foreign memory itself
    zeros, ones = np.zeros(scale.shape), np.ones(scale.shape)
    ref_y, _, _, ref_mean, ref_var = train_forward(x.astype(np.float32), scale, zeros, zeros, ones, 1e-5, 1.0)
    np.testing.assert_allclose(y.get(), ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean.get(), ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var.get(), ref_var, rtol=1e-5, atol=1e-6)
    dx = bn.backward(foreign(gdy))
    ref_dx, ref_dscale, ref_dbias = train_backward(x.astype(np.float32), dy.astype(np.float32), scale)
    np.testing.assert_allclose(dx.get(), ref_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.scalegrad.get(), ref_dscale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.biasgrad.get(), ref_dbias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: HostDLPack(np.zeros((2, 3, 2, 2), np.float32)), r"cybn\.from_dlpack.*use to_gpu"),
    (lambda: object(), r"__cuda_array_interface__ or __dlpack__ .*cybn\.from_cuda_array_interface / "
                       r"cybn\.from_dlpack.*got object"),
    (lambda: CaiOnly(to_gpu(np.zeros((2, 3, 2, 2)), np.float64)), r"Expected dtype float32, got float64"),
])
def test_refused_foreign_inputs_name_the_fix_and_change_nothing(make, message):
    bn = BatchNorm2D(3)
    bn(to_gpu(np.random.randn(2, 3, 2, 2)))
    snap = snapshot(bn)
    with pytest.raises(ModuleError, match=message):
        bn(make())
    assert_unchanged(bn, snap)


def test_dtype_errors_name_calcmode_or_astype():
    bn = BatchNorm2D(3)
    with pytest.raises(ModuleError, match=r"^Expected dtype float32, got float16: call calcMode\(np\.float16\) "
                                          r"on the module .* or convert the data with \.astype\(np\.float32\)$"):
        bn(to_gpu(np.zeros((2, 3, 2, 2)), np.float16))
    # float64 is no calcMode of BatchNorm: only the conversion is suggested.
    with pytest.raises(ModuleError, match=r"^Expected dtype float32, got float64: convert the data with "
                                          r"\.astype\(np\.float32\)$"):
        bn(to_gpu(np.zeros((2, 3, 2, 2)), np.float64))
    bn.calcMode(np.float16)
    with pytest.raises(ModuleError, match=r"got float32: call calcMode\(np\.float32\)"):
        bn(to_gpu(np.zeros((2, 3, 2, 2))))


@pytest.mark.parametrize("make, shape", [(BatchNorm2D, (1, 3, 1, 1)), (BatchNorm, (1, 3))])
def test_one_value_per_statistic_is_refused_in_training(make, shape):
    bn = make(3)
    snap = snapshot(bn)
    with pytest.raises(ModuleError, match="more than one value per statistic.*evalMode"):
        bn(to_gpu(np.ones(shape)))
    assert_unchanged(bn, snap)
    # Two values per statistic train; eval mode takes a single value (running statistics).
    bn(to_gpu(np.arange(2 * 3, dtype=np.float64).reshape((2,) + shape[1:])))
    assert bn.numOfProps == 1
    bn.evalMode()
    y = bn(to_gpu(np.full(shape, 2.0)))
    mean, var = bn.mean.get().ravel(), bn.var.get().ravel()
    ref = bn.scale.get().ravel() * (2.0 - mean) / np.sqrt(var + 1e-5) + bn.bias.get().ravel()
    np.testing.assert_allclose(y.get().ravel(), ref, rtol=1e-5)


@pytest.mark.parametrize("shape, mode", [((1, 3, 1, 1), "spatial"), ((1, 3, 4), "per_activation")])
def test_functional_forward_train_refuses_one_value_per_statistic(shape, mode):
    C = 3 if mode == "spatial" else 12
    rm, rv = cybn.zeros(C), to_gpu(np.ones(C))
    with pytest.raises(ValueError, match="more than one value per statistic"):
        batchnorm.forward_train(to_gpu(np.ones(shape)), None, None, rm, rv, 1e-5, 0.1, mode=mode)
    np.testing.assert_array_equal(rm.get(), 0)
    np.testing.assert_array_equal(rv.get(), 1)
