"""Every bad argument raises a clear error naming it, before anything is launched or written."""
import numpy as np
import pytest

from bn_helpers import gpu, params
from cybn import batchnorm, gpuarray


class Strided:
    """A foreign device array with non-contiguous strides (every other float of a GPUArray)."""

    def __init__(self, base):
        self.base = base
        self.__cuda_array_interface__ = {"shape": (2, 3, 4), "typestr": "<f4", "strides": (96, 32, 8),
                                         "data": (base.ptr, False), "version": 3, "stream": 1}


@pytest.fixture
def setup(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    scale, bias, rm, rv = params(rng, 3)
    arrays = dict(x=gpu(x), scale=gpu(scale), bias=gpu(bias), rm=gpu(rm), rv=gpu(rv),
                  out=gpu(np.full(x.shape, 5, np.float32)), sm=gpu(np.full(3, 6, np.float32)),
                  si=gpu(np.full(3, 7, np.float32)), big=gpu(np.full(48, 8, np.float32)))
    snap = {k: v.get().copy() for k, v in arrays.items()}
    return arrays, snap


def call(a, **kw):
    args = dict(x=a["x"], scale=a["scale"], bias=a["bias"], running_mean=a["rm"], running_var=a["rv"],
                epsilon=1e-5, factor=0.1, out=a["out"], save_mean=a["sm"], save_invstd=a["si"])
    args.update(kw)
    return batchnorm.forward_train(**args)


def bad_cases(a):
    f16 = gpu(np.zeros((2, 3, 4), np.float16))
    return [
        (dict(x=np.zeros((2, 3, 4), np.float32)), TypeError, "x must be a GPUArray"),
        (dict(x=gpu(np.zeros((2, 3, 4), np.float64))), TypeError, "x.dtype"),
        (dict(x=gpu(np.zeros((2, 3, 4), np.int32))), TypeError, "x.dtype"),
        (dict(x=gpu(np.zeros(6, np.float32))), ValueError, "at least 2 dimensions"),
        (dict(x=Strided(gpu(np.zeros(48, np.float32)))), ValueError, "x: "),
        (dict(x=gpuarray.GPUArray.from_pointer(4096, (2, 3, 4), np.float32, None)), ValueError,
         "x .pointer 0x1000. is not memory the driver knows"),
        (dict(running_var=gpuarray.GPUArray.from_pointer(4096, (3,), np.float32, None)), ValueError,
         "running_var .pointer"),
        (dict(scale=gpu(np.ones(4, np.float32))), ValueError, "scale must have 3 elements"),
        (dict(bias=gpu(np.ones(2, np.float32))), ValueError, "bias must have 3 elements"),
        (dict(running_mean=gpu(np.ones(4, np.float32))), ValueError, "running_mean must have 3"),
        (dict(running_var=gpu(np.ones(1, np.float32))), ValueError, "running_var must have 3"),
        (dict(running_var=gpu(np.ones(3, np.float16))), TypeError, "running_var must be float32"),
        (dict(running_mean=None), TypeError, "running_mean must be"),
        (dict(scale=None), TypeError, "scale and bias"),
        (dict(save_mean=gpu(np.ones(2, np.float32))), ValueError, "save_mean must have 3"),
        (dict(out=f16), TypeError, "out must have x's dtype"),
        (dict(out=gpu(np.zeros((2, 4, 3), np.float32))), ValueError, "out must have x's shape"),
        (dict(epsilon=0.0), ValueError, "epsilon"),
        (dict(epsilon=-1e-5), ValueError, "epsilon"),
        (dict(epsilon=float("nan")), ValueError, "epsilon"),
        (dict(epsilon=1e-50), ValueError, "epsilon"),   # 0 as float32
        (dict(epsilon=1e39), ValueError, "epsilon"),    # inf as float32
        (dict(epsilon="a"), TypeError, "epsilon"),
        (dict(factor=1.5), ValueError, "factor"),
        (dict(factor=-0.1), ValueError, "factor"),
        (dict(factor=float("nan")), ValueError, "factor"),
        (dict(mode="channel"), ValueError, "mode"),
        # Outputs sharing memory with other arguments (only out is x exactly is allowed): the kernels would
        # read what they already overwrote, e.g. the running mean update reading the saved mean.
        (dict(save_mean=a["rm"]), ValueError, "save_mean shares memory with running_mean"),
        (dict(save_invstd=a["sm"]), ValueError, "save_mean shares memory with save_invstd"),
        (dict(running_var=a["scale"]), ValueError, "running_var shares memory with scale"),
        (dict(x=view(a["big"], 0), out=view(a["big"], 1)), ValueError, r"out shares memory with x: .*exactly x"),
    ]


def view(base, shift, shape=(2, 3, 4)):
    """A (2, 3, 4) float32 array over base's memory, `shift` elements in (base must be big enough)."""
    return gpuarray.GPUArray.from_pointer(base.ptr + 4 * shift, shape, np.float32, base)


def test_forward_train_rejects(setup):
    a, snap = setup
    for kw, exc, text in bad_cases(a):
        with pytest.raises(exc, match=text):
            call(a, **kw)
        for k, v in a.items():
            np.testing.assert_array_equal(v.get(), snap[k], err_msg=f"{k} changed by a call with bad {sorted(kw)}")


def test_zero_sized_rejected(setup):
    a, snap = setup
    for shape in ((0, 3, 4), (2, 0, 4), (2, 3, 0)):
        with pytest.raises(ValueError, match="empty dimension"):
            call(a, x=gpuarray.empty(shape, np.float32))


def test_forward_infer_rejects(setup):
    a, snap = setup
    base = dict(x=a["x"], scale=a["scale"], bias=a["bias"], running_mean=a["rm"], running_var=a["rv"],
                epsilon=1e-5, out=a["out"])
    for kw, exc, text in [(dict(epsilon=0), ValueError, "epsilon"), (dict(running_var=gpu(np.ones(2, np.float32))), ValueError,
                                                                      "running_var"),
                          (dict(out=gpu(np.zeros(24, np.float32))), ValueError, "out must have x's shape"),
                          (dict(x=a["x"].get()), TypeError, "x must be a GPUArray"),
                          (dict(running_var=view(a["out"], 3, (3,))), ValueError, "out shares memory with running_var")]:
        with pytest.raises(exc, match=text):
            batchnorm.forward_infer(**{**base, **kw})
        np.testing.assert_array_equal(a["out"].get(), snap["out"])


def test_backward_rejects(setup):
    a, snap = setup
    dy = gpu(np.ones((2, 3, 4), np.float32))
    big = gpu(np.ones(48, np.float32))
    base = dict(x=a["x"], grad_y=dy, scale=a["scale"], save_mean=a["sm"], save_invstd=a["si"], out=a["out"],
                scale_grad=a["rm"], bias_grad=a["rv"])
    for kw, exc, text in [(dict(grad_y=gpu(np.ones((2, 3, 5), np.float32))), ValueError, "grad_y must have x's shape"),
                          (dict(grad_y=gpu(np.ones((2, 3, 4), np.float16))), TypeError, "grad_y must have x's dtype"),
                          (dict(grad_y=None), TypeError, "grad_y"),
                          (dict(save_invstd=gpu(np.ones(4, np.float32))), ValueError, "save_invstd must have 3"),
                          (dict(scale_grad=gpu(np.ones(2, np.float32))), ValueError, "scale_grad must have 3"),
                          (dict(mode="per_activation"), ValueError, "must have 12 elements"),
                          # gradients written over the statistics the second (split) launch still reads
                          (dict(scale_grad=a["si"]), ValueError, "scale_grad shares memory with save_invstd"),
                          (dict(bias_grad=a["sm"]), ValueError, "bias_grad shares memory with save_mean"),
                          (dict(x=view(big, 0), out=view(big, 2)), ValueError,
                           r"out shares memory with x: .*exactly x or grad_y"),
                          (dict(grad_y=view(big, 2), out=view(big, 0)), ValueError, "out shares memory with grad_y")]:
        with pytest.raises(exc, match=text):
            batchnorm.backward(**{**base, **kw})
        for k in ("out", "rm", "rv"):
            np.testing.assert_array_equal(a[k].get(), snap[k])
    with pytest.raises(ValueError, match="epsilon"):
        batchnorm.backward_infer(a["x"], dy, a["scale"], a["rm"], a["rv"], 0.0)


def test_plan_override_checks():
    with pytest.raises(ValueError, match="split"):
        batchnorm.plan_override(split=70000 * 1000)
    with pytest.raises(ValueError, match="group"):
        batchnorm.plan_override(group=2048)
