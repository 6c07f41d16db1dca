"""Backward passes, parameter-gradient accumulation (scale, momentum), updateParams and eval-mode backward."""
import numpy as np
import pytest

import modules_reference as ref
from modules_helpers import host, to_gpu
from cybn.modules import ModuleError

TOL = dict(rtol=3e-5, atol=3e-5)


def forward_backward(bn, shape, per_act, **kw):
    x = (np.random.randn(*shape) * 2 - 1).astype(np.float32)
    g = np.random.randn(*shape).astype(np.float32)
    bn(to_gpu(x))
    bn.backward(to_gpu(g), **kw)
    return x, g, ref.train_backward(x, g, bn.scale.get(), per_act)


def test_backward_gradients(case):
    make, shape, per_act = case
    bn = make(shape[1], sscale=0.3)
    x, g, (dx, dscale, dbias) = forward_backward(bn, shape, per_act)
    assert tuple(bn.grad.shape) == shape and bn.grad.dtype == np.float32
    np.testing.assert_allclose(bn.grad.get(), dx, **TOL)
    assert tuple(bn.scalegrad.shape) == tuple(bn.scale.shape)
    np.testing.assert_allclose(bn.scalegrad.get().ravel(), dscale.ravel(), **TOL)
    np.testing.assert_allclose(bn.biasgrad.get().ravel(), dbias.ravel(), **TOL)
    # Fresh grads with the defaults scale=1, momentum=0: the variables' grads equal this batch's.
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), **TOL)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), **TOL)


def test_param_grads_accumulate_with_scale_and_momentum(case):
    make, shape, per_act = case
    bn = make(shape[1])
    _, _, (_, ds1, db1) = forward_backward(bn, shape, per_act, scale=0.5, momentum=0.0)
    _, _, (_, ds2, db2) = forward_backward(bn, shape, per_act, scale=2.0, momentum=0.75)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), (2.0 * ds2 + 0.75 * 0.5 * ds1).ravel(), **TOL)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), (2.0 * db2 + 0.75 * 0.5 * db1).ravel(), **TOL)

    bn.zeroGradParams()
    for var in bn.vars.values():
        np.testing.assert_array_equal(var.grad.get(), 0)


def test_update_flags(case):
    make, shape, per_act = case
    bn = make(shape[1])
    old_grad = to_gpu(np.ones(shape))
    bn(to_gpu(np.random.randn(*shape)))
    bn.grad = old_grad
    bn.backward(to_gpu(np.random.randn(*shape)), updGrad=False, updParamGrads=False)
    assert bn.grad is None
    for var in bn.vars.values():
        np.testing.assert_array_equal(var.grad.get(), 0)


def test_update_params(case):
    make, shape, per_act = case
    bn = make(shape[1])
    scale0, bias0 = host(bn.scale), host(bn.bias)
    _, _, (_, dscale, dbias) = forward_backward(bn, shape, per_act)
    bn.updateParams(-0.1)
    np.testing.assert_allclose(bn.scale.get().ravel(), (scale0.ravel() - 0.1 * dscale.ravel()), **TOL)
    np.testing.assert_allclose(bn.bias.get().ravel(), (bias0.ravel() - 0.1 * dbias.ravel()), **TOL)


def test_affine_false_trains_nothing(case):
    make, shape, per_act = case
    bn = make(shape[1], affine=False)
    x, g, (dx, _, _) = forward_backward(bn, shape, per_act, scale=1.0, momentum=0.0)
    np.testing.assert_allclose(bn.grad.get(), dx, **TOL)
    assert bn.scalegrad is None and bn.biasgrad is None
    for var in bn.vars.values():
        np.testing.assert_array_equal(var.grad.get(), 0)
    bn.updateParams(1.0)
    np.testing.assert_array_equal(bn.scale.get(), 1.0)
    np.testing.assert_array_equal(bn.bias.get(), 0.0)


def test_eval_mode_backward_differentiates_frozen_statistics(case):
    make, shape, per_act = case
    bn = make(shape[1], sscale=0.3)
    bn(to_gpu(np.random.randn(*shape) * 3 + 2))  # moves the running statistics away from 0 / 1
    bn.evalMode()
    x = np.random.randn(*shape).astype(np.float32)
    g = np.random.randn(*shape).astype(np.float32)
    bn(to_gpu(x))
    bn.backward(to_gpu(g))
    mean, var = bn.mean.get(), bn.var.get()
    dx, dscale, dbias = ref.eval_backward(x, g, bn.scale.get(), mean, var, 1e-5)
    np.testing.assert_allclose(bn.grad.get(), dx, **TOL)
    np.testing.assert_allclose(bn.scalegrad.get().ravel(), dscale.ravel(), **TOL)
    np.testing.assert_allclose(bn.biasgrad.get().ravel(), dbias.ravel(), **TOL)
    # Eval mode accumulates no parameter gradients (PuzzleLib's Module.backward does so only when training).
    for var in bn.vars.values():
        np.testing.assert_array_equal(var.grad.get(), 0)


def test_backward_needs_a_forward(case):
    make, shape, _ = case
    bn = make(shape[1])
    with pytest.raises(ModuleError, match="before a forward"):
        bn.backward(to_gpu(np.zeros(shape)))
    bn(to_gpu(np.random.randn(*shape)))
    bn.trainMode()  # resets the saved forward
    with pytest.raises(ModuleError, match="before a forward"):
        bn.backward(to_gpu(np.zeros(shape)))
    for var in bn.vars.values():
        np.testing.assert_array_equal(var.grad.get(), 0)


def test_inplace_eval_backward(case):
    make, shape, _ = case
    bn = make(shape[1], inplace=True, sscale=0.3)
    bn.evalMode()
    bn.var.set(np.random.rand(*bn.var.shape).astype(np.float32) + 0.5)
    x = np.random.randn(*shape).astype(np.float32)
    g = np.random.randn(*shape).astype(np.float32)
    bn(to_gpu(x))
    bn.backward(to_gpu(g))
    dx = ref.eval_backward(x, g, bn.scale.get(), bn.mean.get(), bn.var.get(), 1e-5)[0]
    np.testing.assert_allclose(bn.grad.get(), dx, **TOL)
    assert bn.scalegrad is None and bn.biasgrad is None  # x was overwritten: no parameter gradients
