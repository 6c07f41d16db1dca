"""Parameter-gradient accumulation inside the backward kernel (cuDNN's alpha/beta): the functional API, the
PuzzleLib modules' backward(scale, momentum) and their launch counts from the software GPU's counters (one
launch when a channel fits one CTA, two when split; never an extra launch for the accumulation)."""
import numpy as np
import pytest

from cybn.testing import reference as ref
from bn_helpers import batch_stats, exact_mean, gpu, params
from cybn.testing.traffic import allowance
from cybn import batchnorm, gpuarray, softgpu
from cybn.modules import BatchNorm, BatchNorm2D

PLANS = [((3, 4, 6, 5), "spatial", {}), ((3, 4, 6, 5), "spatial", {"split": 3}),
         ((40, 6), "per_activation", {}), ((40, 6), "per_activation", {"split": 2}), ((1, 3, 70), "spatial", {})]


@pytest.mark.parametrize("shape,mode,override", PLANS)
@pytest.mark.parametrize("frozen", [False, True], ids=["train", "frozen"])
def test_functional_alpha_beta(rng, shape, mode, override, frozen):
    _, pshape, K, _ = ref.layout(shape, mode)
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    scale, _, rm, rv = params(rng, K)
    old_s, old_b = rng.standard_normal(K).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    if frozen:
        wdx, wds, wdb = ref.backward_infer(x, dy, scale, rm, rv, 1e-5, mode)
    else:
        sm, si = batch_stats(x, mode, 1e-5)
        wdx, wds, wdb = ref.backward(x, dy, scale, exact_mean(x, mode), si, mode)
    sg, bg = gpu(old_s), gpu(old_b)
    batch = (gpuarray.empty((K,), np.float32), gpuarray.empty((K,), np.float32))
    kw = dict(scale_grad=sg, bias_grad=bg, mode=mode, scale_grad_alpha=0.5, scale_grad_beta=0.9,
              bias_grad_alpha=-2.0, bias_grad_beta=1.0, batch_grads=batch)
    with batchnorm.plan_override(**override):
        if frozen:
            dx, rs, rb = batchnorm.backward_infer(gpu(x), gpu(dy), gpu(scale), gpu(rm), gpu(rv), 1e-5, **kw)
        else:
            dx, rs, rb = batchnorm.backward(gpu(x), gpu(dy), gpu(scale), gpu(sm), gpu(si), **kw)
    assert rs is sg and rb is bg
    np.testing.assert_allclose(dx.get(), wdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sg.get(), 0.5 * wds + 0.9 * old_s.astype(np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bg.get(), -2.0 * wdb + old_b.astype(np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch[0].get(), wds, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch[1].get(), wdb, rtol=1e-5, atol=1e-5)


def test_beta_zero_never_reads_the_gradient(rng):
    """beta == 0 overwrites: a gradient array full of NaN (or never written: initcheck would fail the launch
    on a read) gives the plain alpha * gradient."""
    x, dy = (rng.standard_normal((4, 3, 8)).astype(np.float32) for _ in range(2))
    sm, si = batch_stats(x, "spatial", 1e-5)
    sg = gpu(np.full(3, np.nan, np.float32))
    bg = gpuarray.empty((3,), np.float32)  # uninitialised device memory
    batchnorm.backward(gpu(x), gpu(dy), None, gpu(sm), gpu(si), scale_grad=sg, bias_grad=bg, scale_grad_alpha=3.0,
                       bias_grad_alpha=3.0)
    _, wds, wdb = ref.backward(x, dy, None, exact_mean(x), si)
    np.testing.assert_allclose(sg.get(), 3 * wds, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bg.get(), 3 * wdb, rtol=1e-5, atol=1e-5)


def test_accumulation_arguments_are_checked(rng):
    x = gpu(rng.standard_normal((4, 3, 8)).astype(np.float32))
    sm, si = (gpu(a) for a in batch_stats(x.get(), "spatial", 1e-5))
    before = softgpu.counters()["total"]["launches"]
    with pytest.raises(ValueError, match="scale_grad_beta != 0 accumulates into scale_grad"):
        batchnorm.backward(x, x, None, sm, si, scale_grad_beta=1.0)
    with pytest.raises(ValueError, match="bias_grad_beta != 0 accumulates into bias_grad"):
        batchnorm.backward(x, x, None, sm, si, bias_grad_beta=0.5)
    with pytest.raises(ValueError, match="scale_grad_alpha must be a finite number"):
        batchnorm.backward(x, x, None, sm, si, scale_grad_alpha=float("nan"))
    with pytest.raises(ValueError, match="bias_grad_alpha must be a finite number"):
        batchnorm.backward(x, x, None, sm, si, bias_grad_alpha=1e39)
    with pytest.raises(TypeError, match="scale_grad_beta must be a number"):
        batchnorm.backward(x, x, None, sm, si, scale_grad_beta="one")
    with pytest.raises(ValueError, match="batch_scale_grad must have 3 elements"):
        batchnorm.backward(x, x, None, sm, si, batch_grads=(gpuarray.empty((4,), np.float32), sm))
    with pytest.raises(ValueError, match="batch_bias_grad shares memory with save_invstd"):
        batchnorm.backward(x, x, None, sm, si, batch_grads=(gpuarray.empty((3,), np.float32), si))
    assert softgpu.counters()["total"]["launches"] == before


def test_accumulation_is_deterministic_under_schedules(rng):
    x, dy = (rng.standard_normal((4, 3, 9, 10)).astype(np.float32) for _ in range(2))
    sm, si = batch_stats(x, "spatial", 1e-5)
    old = rng.standard_normal(3).astype(np.float32)
    results = []
    for seed in (1, 2, 3):
        with softgpu.seed(seed), batchnorm.plan_override(split=5, group=64):
            sg, bg = gpu(old), gpu(old)
            dx, _, _ = batchnorm.backward(gpu(x), gpu(dy), None, gpu(sm), gpu(si), scale_grad=sg, bias_grad=bg,
                                          scale_grad_alpha=0.3, scale_grad_beta=0.7, bias_grad_beta=0.7)
            results.append([a.get() for a in (dx, sg, bg)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def module_step(module, x, dy, scale, momentum):
    """Forward, then a PuzzleLib backward with accumulation; returns its launch count."""
    module(gpu(x))
    with softgpu.measure() as m:
        module.backward(gpu(dy), scale=scale, momentum=momentum)
    return m.launches_count


@pytest.mark.parametrize("factory,shape,mode,override,launches", [
    (lambda: BatchNorm2D(4), (3, 4, 6, 5), "spatial", {}, 1),
    (lambda: BatchNorm2D(4), (3, 4, 6, 5), "spatial", {"split": 3}, 2),
    (lambda: BatchNorm(6), (40, 6), "per_activation", {}, 1),
    (lambda: BatchNorm(6), (40, 6), "per_activation", {"split": 2}, 2),
])
def test_puzzlelib_backward_accumulates_in_its_launches(rng, factory, shape, mode, override, launches):
    """backward(grad, scale=0.5, momentum=0.9): var.grad = 0.5 * this batch + 0.9 * var.grad, scalegrad and
    biasgrad this batch's gradients, in exactly the backward's own launches (1 fused, 2 split)."""
    module = factory()
    _, pshape, K, _ = ref.layout(shape, mode)
    old = {n: rng.standard_normal(module.paramShape()).astype(np.float32) for n in ("scale", "bias")}
    for n in old:
        module.vars[n].grad.set(old[n])
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    with batchnorm.plan_override(**override):
        count = module_step(module, x, dy, 0.5, 0.9)
    assert count == launches
    scale = module.scale.get().ravel()
    _, _, _, mean, invstd = ref.forward_train(x, scale, None, 0.0, 1.0, module.epsilon, 0.0, mode)
    wdx, wds, wdb = ref.backward(x, dy, scale, mean, invstd, mode)
    np.testing.assert_allclose(module.grad.get(), wdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(module.scalegrad.get().ravel(), wds, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(module.biasgrad.get().ravel(), wdb, rtol=1e-5, atol=1e-5)
    for n, w in (("scale", wds), ("bias", wdb)):
        np.testing.assert_allclose(module.vars[n].grad.get().ravel(), 0.5 * w + 0.9 * old[n].ravel(), rtol=1e-5,
                                   atol=1e-5, err_msg=n)
    # accGradParams on its own (outside backward) still accumulates, with one axpby per parameter.
    module.accGradParams(None, scale=1.0, momentum=1.0)
    np.testing.assert_allclose(module.vars["scale"].grad.get().ravel(), 1.5 * wds + 0.9 * old["scale"].ravel(),
                               rtol=1e-5, atol=1e-5)


def test_accumulating_backward_stays_within_the_traffic_bar(rng):
    """beta != 0 reads the K old gradients: O(statistics), inside the per-statistic allowance."""
    for shape, override in (((8, 16, 14, 14), {}), ((2, 2, 64, 48), {})):
        x, dy = (gpu(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
        K = shape[1]
        scale, sm = gpu(np.ones(K, np.float32)), gpu(np.zeros(K, np.float32))
        si, sg, bg = gpu(np.ones(K, np.float32)), gpu(np.ones(K, np.float32)), gpu(np.ones(K, np.float32))
        dx = gpuarray.empty(shape, np.float32)
        batchnorm.prepare(np.float32)
        with softgpu.measure() as m:
            batchnorm.backward(x, dy, scale, sm, si, out=dx, scale_grad=sg, bias_grad=bg, scale_grad_alpha=0.5,
                               scale_grad_beta=0.9, bias_grad_alpha=0.5, bias_grad_beta=0.9)
        per_element = (m.load_bytes + m.store_bytes) / np.prod(shape)
        assert m.launches_count <= 2
        assert per_element <= allowance(shape, "spatial", np.float32, "backward", m.launches_count), per_element
