"""Forward passes of every BatchNorm module against the float64 reference: training steps with the factor
schedule, eval mode, in-place eval, empty modules, affine=False and half precision."""
import numpy as np
import pytest

import modules_reference as ref
from modules_helpers import assert_unchanged, host, snapshot, to_gpu
from cybn import softgpu
from cybn.memory import default_pool
from cybn.modules import BatchNorm2D, ModuleError

TOL = dict(rtol=2e-5, atol=2e-5)


def run_train_steps(bn, shape, per_act, factors, eps=1e-5):
    mean, var = host(bn.mean).astype(np.float64), host(bn.var).astype(np.float64)
    scale, bias = host(bn.scale), host(bn.bias)
    for step, factor in enumerate(factors, start=1):
        x = np.random.randn(*shape) * (step + 0.5) + step  # a different distribution every step
        y = bn(to_gpu(x))
        want_y, mu, invstd, mean, var = ref.train_forward(x.astype(np.float32), scale, bias, mean, var, eps,
                                                          factor, per_act)
        assert bn.numOfProps == step
        assert y is bn.data and tuple(y.shape) == shape and y.dtype == np.float32
        np.testing.assert_allclose(y.get(), want_y, **TOL)
        np.testing.assert_allclose(bn.savemean.get().ravel(), mu.ravel(), **TOL)
        np.testing.assert_allclose(bn.saveinvvar.get().ravel(), invstd.ravel(), **TOL)
        np.testing.assert_allclose(bn.mean.get().ravel(), mean.ravel(), **TOL)
        np.testing.assert_allclose(bn.var.get().ravel(), var.ravel(), **TOL)
    return mean, var


def test_train_steps_follow_factor_schedule(case):
    make, shape, per_act = case
    bn = make(shape[1], initFactor=1.0, minFactor=0.3)
    # factor = max(1/n, 0.3): 1, 0.5, 0.333.., then floored at 0.3
    run_train_steps(bn, shape, per_act, [1.0, 0.5, 1.0 / 3.0, 0.3])


def test_custom_init_factor_and_epsilon(case):
    make, shape, per_act = case
    bn = make(shape[1], epsilon=1e-2, initFactor=0.6, minFactor=0.25)
    run_train_steps(bn, shape, per_act, [0.6, 0.3, 0.25], eps=1e-2)


def test_parameter_shapes_and_initial_values(case):
    make, shape, _ = case
    bn = make(shape[1], sscale=0.05)
    pshape = tuple(bn.scale.shape)
    assert pshape[:2] == (1, shape[1]) and all(d == 1 for d in pshape[2:])
    # BatchNorm and BatchNorm1D keep PuzzleLib's (1, C, 1, 1); the ND family has nd + 2 dimensions.
    assert len(pshape) == (4 if type(bn).__name__ in ("BatchNorm", "BatchNorm1D") else len(shape))
    for t in (bn.scale, bn.bias, bn.mean, bn.var):
        assert tuple(t.shape) == pshape and t.dtype == np.float32
    assert bn.scale is bn.vars["scale"].data and bn.bias is bn.vars["bias"].data
    assert bn.attrs == {"mean": bn.mean, "var": bn.var}
    np.testing.assert_array_equal(bn.bias.get(), 0)
    np.testing.assert_array_equal(bn.mean.get(), 0)
    np.testing.assert_array_equal(bn.var.get(), 1)
    scale = bn.scale.get()
    assert np.all(scale != 1.0) and np.all(np.abs(scale - 1.0) < 0.05 * 6)
    for var in bn.vars.values():
        np.testing.assert_array_equal(var.grad.get(), 0)
    assert bn.numOfParams() == 2 * shape[1] and bn.paramSize() == 2 * shape[1] * 4


def test_eval_uses_running_statistics(case):
    make, shape, per_act = case
    bn = make(shape[1])
    mean, var = run_train_steps(bn, shape, per_act, [1.0, 0.5])
    bn.evalMode()
    assert bn.inData is None and bn.savemean is None
    x = np.random.randn(*shape).astype(np.float32)
    y = bn(to_gpu(x))
    np.testing.assert_allclose(y.get(), ref.infer_forward(x, bn.scale.get(), bn.bias.get(), mean, var, 1e-5), **TOL)
    # Eval forwards leave the running statistics and the step count alone.
    np.testing.assert_allclose(bn.mean.get().ravel(), mean.ravel(), **TOL)
    np.testing.assert_allclose(bn.var.get().ravel(), var.ravel(), **TOL)
    assert bn.numOfProps == 2


def test_inplace_eval_writes_into_input_without_allocating(case):
    make, shape, _ = case
    bn = make(shape[1], inplace=True)
    bn.evalMode()
    mean = np.random.randn(*bn.mean.shape).astype(np.float32)
    var = np.random.rand(*bn.var.shape).astype(np.float32) + 0.5
    bn.mean.set(mean)
    bn.var.set(var)
    x = np.random.randn(*shape).astype(np.float32)
    xg = to_gpu(x)
    y = bn(xg)  # warm-up: kernel compile and load happen here, outside the measured call
    xg.set(x)
    pool = default_pool()
    used, live = pool.used_bytes, softgpu.live_allocations()
    y = bn(xg)
    assert pool.used_bytes == used and softgpu.live_allocations() == live
    assert y.ptr == xg.ptr
    want = ref.infer_forward(x, bn.scale.get(), bn.bias.get(), mean, var, 1e-5)
    np.testing.assert_allclose(xg.get(), want, **TOL)


def test_inplace_in_train_mode_is_refused_and_changes_nothing(case):
    make, shape, _ = case
    bn = make(shape[1], inplace=True)
    x = np.random.randn(*shape).astype(np.float32)
    xg = to_gpu(x)
    snap = snapshot(bn)
    with pytest.raises(ModuleError, match="using inplace flag in train mode is prohibited"):
        bn(xg)
    assert_unchanged(bn, snap)
    np.testing.assert_array_equal(xg.get(), x)


def test_empty_module_has_no_tensors_until_set(case):
    make, shape, per_act = case
    bn = make(shape[1], empty=True)
    assert (bn.scale, bn.bias, bn.mean, bn.var) == (None, None, None, None)
    assert bn.vars == {} and bn.attrs == {} and bn.numOfParams() == 0
    x = np.random.randn(*shape).astype(np.float32)
    with pytest.raises(ModuleError, match="not initialised"):
        bn(to_gpu(x))
    assert bn.numOfProps == 0 and bn.data is None

    from cybn.modules import Variable
    pshape = (1, shape[1], 1, 1) if type(bn).__name__ in ("BatchNorm", "BatchNorm1D") else (1, shape[1]) + (1,) * (
        len(shape) - 2)
    scale = np.random.rand(*pshape).astype(np.float32) + 0.5
    bias = np.random.randn(*pshape).astype(np.float32)
    bn.setVar("scale", Variable(to_gpu(scale)))
    bn.setVar("bias", Variable(to_gpu(bias)))
    bn.setAttr("mean", to_gpu(np.zeros(pshape)))
    bn.setAttr("var", to_gpu(np.ones(pshape)))
    y = bn(to_gpu(x))
    want = ref.train_forward(x, scale, bias, np.zeros(pshape), np.ones(pshape), 1e-5, 1.0, per_act)[0]
    np.testing.assert_allclose(y.get(), want, **TOL)


def test_affine_false_has_unit_scale(case):
    make, shape, per_act = case
    bn = make(shape[1], affine=False, sscale=0.5)
    np.testing.assert_array_equal(bn.scale.get(), 1.0)
    x = np.random.randn(*shape).astype(np.float32)
    y = bn(to_gpu(x))
    want = ref.train_forward(x, 1.0 + np.zeros(bn.scale.shape), np.zeros(bn.bias.shape), np.zeros(bn.mean.shape),
                             np.ones(bn.var.shape), 1e-5, 1.0, per_act)[0]
    np.testing.assert_allclose(y.get(), want, **TOL)


@pytest.mark.parametrize("name", ["BatchNorm", "BatchNorm2D", "BatchNorm3D"])
def test_half_precision_data(name):
    from modules_helpers import CASES
    make, shape, per_act = CASES[name]
    bn = make(shape[1])
    bn.calcMode(np.float16)
    assert bn.calctype == np.float16
    with pytest.raises(ModuleError, match="Expected dtype"):
        bn(to_gpu(np.zeros(shape)))  # float32 data is refused once the module computes in float16
    assert bn.numOfProps == 0

    x = (np.random.randn(*shape) * 3 + 1).astype(np.float16)
    scale, bias = bn.scale.get(), bn.bias.get()
    y = bn(to_gpu(x, np.float16))
    assert y.dtype == np.float16
    # The reference uses the same fp16 input values, so the only differences are float32 accumulation
    # (~1e-6 relative on these sizes) and the final rounding of y to fp16: half an ulp, 2**-11 relative,
    # i.e. <= 4.9e-4 * |y|; |y| stays below ~4 here, hence atol 2e-3.
    want_y, mu, invstd, mean, var = ref.train_forward(x, scale, bias, np.zeros(scale.shape), np.ones(scale.shape),
                                                      1e-5, 1.0, per_act)
    np.testing.assert_allclose(y.get().astype(np.float64), want_y, rtol=1e-3, atol=2e-3)
    # Statistics are accumulated and stored in float32.
    assert bn.mean.dtype == np.float32 and bn.savemean.dtype == np.float32
    np.testing.assert_allclose(bn.mean.get().ravel(), mean.ravel(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.var.get().ravel(), var.ravel(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.saveinvvar.get().ravel(), invstd.ravel(), rtol=1e-5, atol=1e-5)

    g = np.random.randn(*shape).astype(np.float16)
    bn.backward(to_gpu(g, np.float16))
    dx, dscale, dbias = ref.train_backward(x, g, scale, per_act)
    assert bn.grad.dtype == np.float16
    # dx is O(1) here; fp16 output rounding again dominates.
    np.testing.assert_allclose(bn.grad.get().astype(np.float64), dx, rtol=2e-3, atol=3e-3)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, "bogus"])
def test_calc_mode_rejects_other_types(dtype):
    bn = BatchNorm2D(3)
    with pytest.raises(ModuleError, match="Unsupported dtype"):
        bn.calcMode(dtype)
    assert bn.calctype == np.float32


def test_runs_on_the_current_stream():
    import cybn
    from cybn.stream import Stream, current_stream
    bn = BatchNorm2D(2)
    x = np.random.randn(2, 2, 2, 2).astype(np.float32)
    s = Stream()
    with cybn.stream(s):
        assert current_stream() is s
        y = bn(to_gpu(x))
        s.synchronize()
    want = ref.train_forward(x, bn.scale.get(), bn.bias.get(), np.zeros((1, 2, 1, 1)), np.ones((1, 2, 1, 1)),
                             1e-5, 1.0)[0]
    np.testing.assert_allclose(y.get(), want, **TOL)
