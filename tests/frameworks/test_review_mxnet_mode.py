"""Review (rev2): MXNet's operator takes its mode from autograd (mx.nd.BatchNorm runs in training mode
inside autograd.record(), whose train_mode defaults to True, and in inference mode outside it), so a call
that does not pass training= must normalise with the moving statistics outside a record block and with the
batch statistics inside one. Reference: float64 numpy from the formulas."""
import numpy as np

from cybn import gpuarray
from cybn.mxnet import BatchNorm, autograd

EPS = 1e-3  # the operator's default


def _inputs():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 3, 5)) * 2 + 1).astype(np.float32)
    g, b = rng.uniform(0.5, 2, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    mm, mv = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    return x, g, b, mm, mv


def _ref(x, g, b, mean, var):
    s = (1, -1, 1)
    return ((x.astype(np.float64) - mean.reshape(s)) / np.sqrt(var.reshape(s) + EPS) * g.reshape(s)
            + b.reshape(s))


def test_default_mode_outside_record_is_inference():
    x, g, b, mm, mv = _inputs()
    y = BatchNorm(gpuarray.to_gpu(x), gpuarray.to_gpu(g), gpuarray.to_gpu(b), gpuarray.to_gpu(mm),
                  gpuarray.to_gpu(mv), fix_gamma=False).get()
    ref = _ref(x, g, b, mm.astype(np.float64), mv.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_default_mode_inside_record_is_training():
    x, g, b, mm, mv = _inputs()
    with autograd.record():
        y = BatchNorm(gpuarray.to_gpu(x), gpuarray.to_gpu(g), gpuarray.to_gpu(b), gpuarray.to_gpu(mm),
                      gpuarray.to_gpu(mv), fix_gamma=False).get()
    x64 = x.astype(np.float64)
    ref = _ref(x, g, b, x64.mean(axis=(0, 2)), x64.var(axis=(0, 2)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_moving_statistics_move_from_their_value_at_backward_time():
    # MXNet updates moving = momentum * moving + (1 - momentum) * batch in the backward, from the moving value
    # then: two recorded calls sharing the moving arrays (a layer applied twice in a step) compound.
    x1, g, b, mm, mv = _inputs()
    x2 = (np.random.default_rng(8).standard_normal(x1.shape) * 3 - 2).astype(np.float32)
    dmm, dmv = gpuarray.to_gpu(mm), gpuarray.to_gpu(mv)
    dg, db = gpuarray.to_gpu(g), gpuarray.to_gpu(b)
    with autograd.record() as tape:
        y1 = BatchNorm(gpuarray.to_gpu(x1), dg, db, dmm, dmv, fix_gamma=False, momentum=0.9)
        y2 = BatchNorm(gpuarray.to_gpu(x2), dg, db, dmm, dmv, fix_gamma=False, momentum=0.9)
    tape.backward(y1, gpuarray.to_gpu(np.ones(x1.shape, np.float32)))
    tape.backward(y2, gpuarray.to_gpu(np.ones(x1.shape, np.float32)))
    m, ref_m, ref_v = 0.9, mm.astype(np.float64), mv.astype(np.float64)
    for x in (x1, x2):
        x64 = x.astype(np.float64)
        ref_m = m * ref_m + (1 - m) * x64.mean(axis=(0, 2))
        ref_v = m * ref_v + (1 - m) * x64.var(axis=(0, 2))
    np.testing.assert_allclose(dmm.get(), ref_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dmv.get(), ref_v, rtol=1e-5, atol=1e-6)
