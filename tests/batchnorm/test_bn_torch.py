"""Cross-checks against PyTorch's CPU batch norm run in float64 (the optional `torch` extra; skipped without it).

torch is an independent implementation of the same maths: F.batch_norm / native_batch_norm for the forward,
the saved statistics and the running-average update (running = (1 - momentum) * running + momentum * batch,
the unbiased variance for running_var: cybn's convention with momentum = factor), and autograd for the
backward (dx, weight.grad = dscale, bias.grad = dbias). Per-activation mode is torch's batch norm of
x.reshape(N, -1): one statistic per feature, over the batch axis."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # module level: without torch the whole file is skipped cleanly
import torch.nn.functional as F  # noqa: E402

from cybn import batchnorm, gpuarray  # noqa: E402
from cybn.modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, Variable  # noqa: E402

# float32 data: cybn accumulates in float32 (Welford), ~1e-6 relative on the statistics; dx and the parameter
# gradients are short float32 sums of O(1) terms, so 1e-4 is ~100x the expected error and still catches a wrong
# term (any formula slip moves values by O(0.1)).
TOL32 = dict(rtol=1e-4, atol=1e-4)
# float16 data: y and dx are stored as fp16; for |value| < 4 the half-ulp rounding is <= 2^-10 ~ 1e-3, and the
# fp32 arithmetic before it adds ~1e-6, so 2e-3 relative + 4e-3 absolute is about one fp16 ulp.
TOL16 = dict(rtol=2e-3, atol=4e-3)
# Statistics and parameter gradients stay float32 for either data type (the fp16 inputs are exact in fp32).
STAT = dict(rtol=1e-4, atol=1e-5)
GRAD = dict(rtol=1e-4, atol=1e-4)


def t64(a):
    return torch.from_numpy(np.asarray(a, np.float64).copy())


def flat_k(shape, mode):
    """torch's view of x: (N, C, *spatial) as is in spatial mode, (N, K) in per-activation mode."""
    return shape if mode == "spatial" else (shape[0], int(np.prod(shape[1:])))


def torch_train(x, dy, scale, bias, rm, rv, eps, momentum, mode):
    """float64 torch training step: (y, running_mean, running_var, save_mean, save_invstd, dx, dscale, dbias)."""
    shape = x.shape
    xt = t64(x).reshape(flat_k(shape, mode)).requires_grad_(True)
    w = None if scale is None else t64(scale).requires_grad_(True)
    b = None if bias is None else t64(bias).requires_grad_(True)
    trm, trv = t64(rm), t64(rv)
    # native_batch_norm also returns the saved mean and 1/sqrt(biased var + eps); it updates trm/trv in place.
    y, sm, si = torch.native_batch_norm(xt, w, b, trm, trv, True, momentum, eps)
    # The same step through the public functional API must agree (it is what users call).
    rm2, rv2 = t64(rm), t64(rv)
    y2 = F.batch_norm(xt.detach(), rm2, rv2, None if w is None else w.detach(), None if b is None else b.detach(),
                      training=True, momentum=momentum, eps=eps)
    np.testing.assert_allclose(y2.numpy(), y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv2.numpy(), trv.numpy(), rtol=1e-12, atol=1e-12)
    y.backward(t64(dy).reshape(y.shape))
    grads = (xt.grad.reshape(shape).numpy(), None if w is None else w.grad.numpy(),
             None if b is None else b.grad.numpy())
    return (y.detach().reshape(shape).numpy(), trm.numpy(), trv.numpy(), sm.detach().numpy(),
            si.detach().numpy()) + grads


def torch_eval(x, dy, scale, bias, rm, rv, eps, mode):
    """float64 torch eval-mode forward and its autograd (running statistics frozen): (y, dx, dscale, dbias)."""
    shape = x.shape
    xt = t64(x).reshape(flat_k(shape, mode)).requires_grad_(True)
    w, b = t64(scale).requires_grad_(True), t64(bias).requires_grad_(True)
    trm, trv = t64(rm), t64(rv)
    y = F.batch_norm(xt, trm, trv, w, b, training=False, momentum=0.5, eps=eps)
    np.testing.assert_array_equal(trm.numpy(), rm)  # eval mode must not move the running statistics
    y.backward(t64(dy).reshape(y.shape))
    return y.detach().reshape(shape).numpy(), xt.grad.reshape(shape).numpy(), w.grad.numpy(), b.grad.numpy()


def gpu(a):
    return gpuarray.to_gpu(np.ascontiguousarray(a))


def data(rng, shape, dtype, offset=0.0):
    """x and dy, rounded to `dtype` (torch then sees exactly the values cybn sees)."""
    x = (rng.standard_normal(shape) * 1.5 + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def params(rng, K):
    return (rng.uniform(0.5, 1.5, K).astype(np.float32), rng.standard_normal(K).astype(np.float32),
            (0.1 * rng.standard_normal(K)).astype(np.float32), rng.uniform(0.5, 2.0, K).astype(np.float32))


FUNCTIONAL_CASES = [
    ((4, 3, 7), "spatial"),            # 1D
    ((3, 5, 6, 4), "spatial"),         # 2D
    ((2, 3, 3, 4, 5), "spatial"),      # 3D
    ((16, 3, 128, 160), "spatial"),    # channels large enough to be split over CTAs (two-launch plan)
    ((6, 10), "per_activation"),
    ((5, 2, 3, 4), "per_activation"),  # one statistic per (c, h, w)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,mode", FUNCTIONAL_CASES)
def test_functional_train_step_matches_torch(rng, shape, mode, dtype):
    x, dy = data(rng, shape, dtype, offset=0.5)
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    scale, bias, rm, rv = params(rng, K)
    eps, factor = 1e-3, 0.3
    g_rm, g_rv = gpu(rm), gpu(rv)
    g_scale = gpu(scale)
    y, sm, si = batchnorm.forward_train(gpu(x), g_scale, gpu(bias), g_rm, g_rv, eps, factor, mode=mode)
    dx, dscale, dbias = batchnorm.backward(gpu(x), gpu(dy), g_scale, sm, si, mode=mode)
    want = torch_train(x, dy, scale, bias, rm, rv, eps, factor, mode)
    tol = TOL32 if dtype == np.float32 else TOL16
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y.get().astype(np.float64), want[0], **tol, err_msg="y")
    np.testing.assert_allclose(g_rm.get(), want[1], **STAT, err_msg="running_mean")
    np.testing.assert_allclose(g_rv.get(), want[2], **STAT, err_msg="running_var (unbiased)")
    np.testing.assert_allclose(sm.get(), want[3], **STAT, err_msg="save_mean")
    np.testing.assert_allclose(si.get(), want[4], **STAT, err_msg="save_invstd")
    np.testing.assert_allclose(dx.get().astype(np.float64), want[5], **tol, err_msg="dx")
    np.testing.assert_allclose(dscale.get(), want[6], **GRAD, err_msg="dscale")
    np.testing.assert_allclose(dbias.get(), want[7], **GRAD, err_msg="dbias")


@pytest.mark.parametrize("shape,mode", [((3, 4, 5, 2), "spatial"), ((7, 6), "per_activation")])
def test_functional_non_affine_matches_torch(rng, shape, mode):
    x, dy = data(rng, shape, np.float32)
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    _, _, rm, rv = params(rng, K)
    g_rm, g_rv = gpu(rm), gpu(rv)
    y, sm, si = batchnorm.forward_train(gpu(x), None, None, g_rm, g_rv, 1e-5, 1.0, mode=mode)
    dx, _, _ = batchnorm.backward(gpu(x), gpu(dy), None, sm, si, mode=mode)
    want = torch_train(x, dy, None, None, rm, rv, 1e-5, 1.0, mode)
    np.testing.assert_allclose(y.get(), want[0], **TOL32, err_msg="y")
    np.testing.assert_allclose(g_rm.get(), want[1], **STAT, err_msg="running_mean")
    np.testing.assert_allclose(g_rv.get(), want[2], **STAT, err_msg="running_var")
    np.testing.assert_allclose(dx.get(), want[5], **TOL32, err_msg="dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,mode", [((4, 3, 7), "spatial"), ((2, 3, 3, 4, 5), "spatial"),
                                        ((6, 10), "per_activation")])
def test_functional_eval_matches_torch(rng, shape, mode, dtype):
    x, dy = data(rng, shape, dtype, offset=0.3)
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    scale, bias, rm, rv = params(rng, K)
    eps = 1e-5
    g_scale, g_rm, g_rv = gpu(scale), gpu(rm), gpu(rv)
    y = batchnorm.forward_infer(gpu(x), g_scale, gpu(bias), g_rm, g_rv, eps, mode=mode)
    dx, dscale, dbias = batchnorm.backward_infer(gpu(x), gpu(dy), g_scale, g_rm, g_rv, eps, mode=mode)
    wy, wdx, wds, wdb = torch_eval(x, dy, scale, bias, rm, rv, eps, mode)
    tol = TOL32 if dtype == np.float32 else TOL16
    np.testing.assert_allclose(y.get().astype(np.float64), wy, **tol, err_msg="y")
    np.testing.assert_allclose(dx.get().astype(np.float64), wdx, **tol, err_msg="dx")
    np.testing.assert_allclose(dscale.get(), wds, **GRAD, err_msg="dscale")
    np.testing.assert_allclose(dbias.get(), wdb, **GRAD, err_msg="dbias")
    np.testing.assert_array_equal(g_rm.get(), rm)  # inference leaves the running statistics alone
    np.testing.assert_array_equal(g_rv.get(), rv)


MODULE_CASES = {
    "BatchNorm": (BatchNorm, (6, 5), "per_activation"),
    "BatchNorm1D": (BatchNorm1D, (4, 3, 6), "spatial"),
    "BatchNorm2D": (BatchNorm2D, (3, 4, 5, 3), "spatial"),
    "BatchNorm3D": (BatchNorm3D, (2, 3, 3, 2, 4), "spatial"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name", sorted(MODULE_CASES))
def test_module_training_steps_then_eval_match_torch(rng, name, dtype):
    """Four training steps (factor = max(initFactor / n, minFactor): 0.9, 0.45, 0.4, 0.4, so both branches of
    the schedule run), then an eval-mode forward and backward, each against torch with the same momentum."""
    cls, shape, mode = MODULE_CASES[name]
    np.random.seed(7)  # the module draws its scale from np.random
    init_factor, min_factor, eps = 0.9, 0.4, 1e-4
    bn = cls(shape[1], epsilon=eps, initFactor=init_factor, minFactor=min_factor, sscale=0.3)
    if dtype == np.float16:
        bn.calcMode(np.float16)
    C = shape[1]
    scale, bias = bn.scale.get().ravel().astype(np.float64), rng.standard_normal(C)
    bn.setVar("bias", Variable(gpu(bias.astype(np.float32).reshape(bn.paramShape()))))
    bias = bias.astype(np.float32).astype(np.float64)
    rm, rv = np.zeros(C), np.ones(C)  # the module's initial running statistics
    np.testing.assert_array_equal(bn.mean.get().ravel(), rm)
    np.testing.assert_array_equal(bn.var.get().ravel(), rv)
    tol = TOL32 if dtype == np.float32 else TOL16

    for step in range(1, 5):
        momentum = max(init_factor / step, min_factor)
        x, dy = data(rng, shape, dtype, offset=step - 2.0)
        y = bn(gpu(x))
        bn.backward(gpu(dy))
        wy, rm, rv, _, _, wdx, wds, wdb = torch_train(x, dy, scale, bias, rm, rv, eps, momentum, mode)
        msg = "step %d (momentum %g)" % (step, momentum)
        assert y.dtype == dtype and bn.grad.dtype == dtype
        np.testing.assert_allclose(y.get().astype(np.float64), wy, **tol, err_msg="y, " + msg)
        np.testing.assert_allclose(bn.grad.get().astype(np.float64), wdx, **tol, err_msg="dx, " + msg)
        np.testing.assert_allclose(bn.scalegrad.get().ravel(), wds, **GRAD, err_msg="dscale, " + msg)
        np.testing.assert_allclose(bn.biasgrad.get().ravel(), wdb, **GRAD, err_msg="dbias, " + msg)
        np.testing.assert_allclose(bn.mean.get().ravel(), rm, **STAT, err_msg="running mean, " + msg)
        np.testing.assert_allclose(bn.var.get().ravel(), rv, **STAT, err_msg="running var, " + msg)
    assert bn.numOfProps == 4

    bn.evalMode()
    x, dy = data(rng, shape, dtype, offset=0.5)
    y = bn(gpu(x))
    bn.backward(gpu(dy))
    # torch sees the running statistics cybn holds now (float32), so the eval check is independent of the
    # (already checked) drift of the training steps.
    wy, wdx, wds, wdb = torch_eval(x, dy, scale, bias, bn.mean.get().ravel(), bn.var.get().ravel(), eps, mode)
    np.testing.assert_allclose(y.get().astype(np.float64), wy, **tol, err_msg="eval y")
    np.testing.assert_allclose(bn.grad.get().astype(np.float64), wdx, **tol, err_msg="eval dx")
    np.testing.assert_allclose(bn.scalegrad.get().ravel(), wds, **GRAD, err_msg="eval dscale")
    np.testing.assert_allclose(bn.biasgrad.get().ravel(), wdb, **GRAD, err_msg="eval dbias")
