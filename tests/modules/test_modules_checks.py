"""Every rejected call raises a clear error and changes nothing: running statistics, step count, parameters,
their gradients and the module's saved forward all stay as they were."""
import numpy as np
import pytest

from modules_helpers import assert_unchanged, snapshot, to_gpu
from cybn.modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND, Config, ModuleError


class ForeignStrided:
    """A device array from another library: a transposed (non-contiguous) view per its CUDA array interface."""

    def __init__(self, base, shape, strides):
        self.shape, self.dtype, self.base = shape, np.dtype(np.float32), base
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (base.ptr, False),
                                         "strides": strides, "version": 3}


class ForeignContiguous(ForeignStrided):
    """Contiguous ones are accepted without a copy (tests/modules/test_modules_foreign.py); read-only ones are not."""

    def __init__(self, base, shape, readonly=False):
        super().__init__(base, shape, None)
        self.__cuda_array_interface__["data"] = (base.ptr, readonly)


def bad_inputs(shape):
    """(what, input, expected message) for a module expecting float32 data of this shape."""
    n, c = shape[:2]
    wrong_maps = (n, c + 1) + shape[2:]
    flat = int(np.prod(shape))
    base = to_gpu(np.zeros(flat))
    rev = tuple(reversed(shape))
    strides = tuple(4 * int(np.prod(rev[:i])) for i in range(len(shape)))  # a transposed view's strides
    return [
        ("ndim+1", lambda: to_gpu(np.zeros(shape + (2,))), "must be"),
        ("ndim-1", lambda: to_gpu(np.zeros(shape[:-1])), "must be"),
        ("maps", lambda: to_gpu(np.zeros(wrong_maps)), "maps|dimensions"),
        ("float64", lambda: to_gpu(np.zeros(shape), np.float64), "Expected dtype"),
        ("float16", lambda: to_gpu(np.zeros(shape), np.float16), "Expected dtype"),
        ("numpy", lambda: np.zeros(shape, np.float32), "host numpy.ndarray"),
        ("list", lambda: [to_gpu(np.zeros(shape))], "GPUArray"),
        ("None", lambda: None, "GPUArray"),
        ("non-contiguous", lambda: ForeignStrided(base, shape, strides), "non-contiguous"),
        ("read-only foreign", lambda: ForeignContiguous(base, shape, readonly=True), "read-only"),
    ]


def trained(case):
    make, shape, _ = case
    bn = make(shape[1])
    bn(to_gpu(np.random.randn(*shape)))
    bn.backward(to_gpu(np.random.randn(*shape)))
    bn(to_gpu(np.random.randn(*shape) + 1))
    return bn, shape


def test_bad_forward_inputs_change_nothing(case):
    bn, shape = trained(case)
    for what, make_input, message in bad_inputs(shape):
        snap = snapshot(bn)
        with pytest.raises(ModuleError, match=message):
            bn(make_input())
        assert_unchanged(bn, snap)
        assert bn.numOfProps == 2, what


def test_bad_backward_inputs_change_nothing(case):
    bn, shape = trained(case)
    other_batch = (shape[0] + 1,) + shape[1:]
    cases = bad_inputs(shape) + [("batch", lambda: to_gpu(np.zeros(other_batch)), "forward's data had shape")]
    for what, make_input, message in cases:
        snap = snapshot(bn)
        with pytest.raises(ModuleError, match=message):
            bn.backward(make_input())
        assert_unchanged(bn, snap)


def test_messages_name_the_problem():
    bn = BatchNorm2D(3)
    with pytest.raises(ModuleError, match=r"^Data must be 4d tensor$"):
        bn(to_gpu(np.zeros((2, 3, 4))))
    with pytest.raises(ModuleError, match=r"^Data has 4 maps \(expected: 3\)$"):
        bn(to_gpu(np.zeros((2, 4, 2, 2))))
    with pytest.raises(ModuleError, match=r"float32.*float64"):
        bn(to_gpu(np.zeros((2, 3, 2, 2)), np.float64))
    with pytest.raises(ModuleError, match=r"^Data must be 2d matrix$"):
        BatchNorm(3)(to_gpu(np.zeros((2, 3, 1))))
    with pytest.raises(ModuleError, match=r"^Expected 3 data dimensions, 4 were given$"):
        BatchNorm(3)(to_gpu(np.zeros((2, 4))))
    with pytest.raises(ModuleError, match=r"^Data must be 3d tensor$"):
        BatchNorm1D(3)(to_gpu(np.zeros((2, 3))))
    with pytest.raises(ModuleError, match=r"^Data must be 5d tensor$"):
        BatchNorm3D(3)(to_gpu(np.zeros((2, 3, 2, 2))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(maps=0), "maps"), (dict(maps=2.5), "maps"), (dict(maps=True), "maps"),
    (dict(maps=2, epsilon=0.0), "epsilon"), (dict(maps=2, epsilon=float("nan")), "epsilon"),
    (dict(maps=2, epsilon=1e-50), "epsilon"), (dict(maps=2, epsilon=1e39), "epsilon"),  # 0 / inf as float32
    (dict(maps=2, initFactor="1"), "initFactor"), (dict(maps=2, minFactor=float("inf")), "minFactor"),
    (dict(maps=2, initFactor=1.5), "initFactor"), (dict(maps=2, minFactor=-0.1), "minFactor"),
    (dict(maps=2, sscale=None), "sscale"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ModuleError, match=message):
        BatchNorm2D(**kwargs)
    with pytest.raises(ModuleError, match=message):
        BatchNorm(**{("size" if k == "maps" else k): v for k, v in kwargs.items()})


def test_bad_nd():
    with pytest.raises(ModuleError, match="nd"):
        BatchNormND(0, 3)


def test_bad_parameters_are_refused_by_the_engine_and_change_nothing():
    """Shape checks pass but a user-set parameter has the wrong size: the engine refuses it, nothing moves."""
    from cybn.modules import Variable
    bn = BatchNorm2D(3)
    bn.setVar("scale", Variable(to_gpu(np.ones((1, 4, 1, 1)))))
    snap = snapshot(bn)
    with pytest.raises((ValueError, TypeError), match="scale"):
        bn(to_gpu(np.random.randn(2, 3, 2, 2)))
    assert_unchanged(bn, snap)


def test_disabled_checks_still_refuse_foreign_arrays():
    bn = BatchNorm2D(2)
    Config.disableDtypeShapeChecks = True
    try:
        with pytest.raises(ModuleError, match="GPUArray"):
            bn(np.zeros((2, 2, 2, 2), np.float32))
    finally:
        Config.disableDtypeShapeChecks = False
    assert bn.numOfProps == 0
