"""Bad epilogue / dtype / layout arguments: a clear exception naming what was wrong, and nothing touched
(the running statistics and the output keep their bytes)."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray

g = gpuarray.to_gpu


def _arrays():
    rng = np.random.default_rng(1)
    x = g(rng.standard_normal((2, 3, 4)).astype(np.float32))
    p = [g(rng.standard_normal(3).astype(np.float32)) for _ in range(4)]
    return x, p


@pytest.mark.parametrize("kw,exc,text", [
    (dict(activation="gelu"), ValueError, "unknown activation 'gelu'.*'relu'"),
    (dict(activation=3), TypeError, "activation must be None or a name"),
    (dict(activation="clipped_relu", activation_alpha=0.0), ValueError, "clipped_relu needs activation_alpha > 0"),
    (dict(activation="leaky_relu", activation_alpha=-0.1), ValueError, "leaky_relu needs activation_alpha >= 0"),
    (dict(activation="elu", activation_alpha=float("nan")), ValueError, "activation_alpha must be finite"),
    (dict(activation="relu", activation_alpha="1"), TypeError, "activation_alpha must be a real number"),
    (dict(residual=np.zeros((2, 3, 4), np.float32)), TypeError, "residual must be a GPUArray"),
    (dict(residual="z16"), TypeError, "residual must have x's dtype float32"),
    (dict(residual="zshape"), ValueError, "residual must have x's shape"),
    (dict(layout="NCWH"), ValueError, "layout must be 'NCHW'"),
])
def test_forward_rejects(kw, exc, text):
    x, (scale, bias, rm, rv) = _arrays()
    r = kw.get("residual")
    if isinstance(r, str):
        kw = dict(kw, residual=g(np.zeros((2, 3, 4), np.float16)) if r == "z16" else g(np.zeros((2, 3, 5), np.float32)))
    out = g(np.full((2, 3, 4), 7, np.float32))
    before = [a.get().copy() for a in (rm, rv, out)]
    with pytest.raises(exc, match=text):
        batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=out, **kw)
    with pytest.raises(exc, match=text):
        batchnorm.forward_infer(x, scale, bias, rm, rv, 1e-5, out=out, **kw)
    for b, a in zip(before, (rm, rv, out)):
        assert np.array_equal(b, a.get())


def test_float64_needs_float64_statistics():
    _, (scale, bias, rm, rv) = _arrays()
    x = g(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="scale must be float64"):
        batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1)


def test_backward_rejects():
    x, (scale, bias, sm, si) = _arrays()
    dy, y, z = (g(np.ones((2, 3, 4), np.float32)) for _ in range(3))
    with pytest.raises(ValueError, match="swish.*pass bias="):
        batchnorm.backward(x, dy, scale, sm, si, activation="swish", y=y)
    with pytest.raises(ValueError, match="no y given.*pass bias="):
        batchnorm.backward(x, dy, scale, sm, si, activation="relu")
    with pytest.raises(ValueError, match="pass residual= as the forward's residual array"):
        batchnorm.backward(x, dy, scale, sm, si, activation="swish", bias=bias, residual=True)
    with pytest.raises(ValueError, match="y is only read through an activation or a residual"):
        batchnorm.backward(x, dy, scale, sm, si, y=y)
    with pytest.raises(ValueError, match="grad_residual given but the forward had no residual"):
        batchnorm.backward(x, dy, scale, sm, si, activation="relu", y=y, grad_residual=z)
    with pytest.raises(ValueError, match="shares memory"):  # dz over dy
        batchnorm.backward(x, dy, scale, sm, si, activation="relu", y=y, residual=True, grad_residual=dy)
    out = batchnorm.backward(x, dy, scale, sm, si, residual=True)  # no activation: dz = dy
    assert len(out) == 4 and np.array_equal(out[1].get(), dy.get())
