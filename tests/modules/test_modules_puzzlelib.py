"""The PuzzleLib import paths resolve to cybn's objects, PuzzleLib's documented examples run unmodified,
and the functional PuzzleLib.Backend.Dnn calls match the reference."""
import numpy as np
import pytest

import modules_reference as ref
from modules_helpers import to_gpu

TOL = dict(rtol=2e-5, atol=2e-5)


def test_import_paths_are_aliases():
    import cybn.gpuarray
    import cybn.modules as cm
    import cybn.modules.config
    import cybn.modules.dnn
    from PuzzleLib import Config
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Backend.Dnn import BatchNormMode, batchNormNd, batchNormNdBackward
    from PuzzleLib.Modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND
    from PuzzleLib.Modules.BatchNorm2D import BatchNorm2D as BN2D
    from PuzzleLib.Modules.Module import Module, ModuleError
    from PuzzleLib.Variable import Variable
    import PuzzleLib.Modules

    assert Config is cybn.modules.config
    for name in ("GPUArray", "to_gpu", "empty", "zeros", "empty_like", "zeros_like", "from_dlpack"):
        assert getattr(gpuarray, name) is getattr(cybn.gpuarray, name)
    assert (BatchNormMode, batchNormNd, batchNormNdBackward) == (
        cm.BatchNormMode, cm.batchNormNd, cm.batchNormNdBackward)
    assert BatchNormMode is cybn.modules.dnn.BatchNormMode
    assert (BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND) == (
        cm.BatchNorm, cm.BatchNorm1D, cm.BatchNorm2D, cm.BatchNorm3D, cm.BatchNormND)
    assert BN2D is cm.BatchNorm2D and PuzzleLib.Modules.BatchNorm2D is cm.BatchNorm2D
    assert (Module, ModuleError, Variable) == (cm.Module, cm.ModuleError, cm.Variable)
    assert issubclass(cm.BatchNorm2D, cm.Module)


def test_config_is_shared():
    from PuzzleLib import Config
    from PuzzleLib.Modules import BatchNorm2D
    assert Config.backend == Config.Backend.cuda and Config.libname == "PuzzleLib"
    assert Config.getLogger() is Config.getLogger()
    Config.globalEvalMode = True
    try:
        bn = BatchNorm2D(2)
    finally:
        Config.globalEvalMode = False
    assert bn.train is False
    assert all(var.grad is None for var in bn.vars.values())  # PuzzleLib allocates no grads in global eval mode
    assert BatchNorm2D(2).train is True


def test_doc_example_batchnorm(capsys):
    """PuzzleLib's BatchNorm page: BatchNorm(6) on arange(18).reshape(3, 6); the running mean becomes 6..11
    after one batch and the rows come out as -s*1.2247, 0, +s*1.2247 with the drawn scale s."""
    import numpy as np
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Modules import BatchNorm

    batchsize, insize = 3, 6
    data = gpuarray.to_gpu(np.arange(batchsize * insize).reshape(batchsize, insize).astype(np.float32))
    bn = BatchNorm(insize)
    bn(data)
    print(bn.mean)
    print(bn.var)
    print(bn.scale)
    print(bn.bias)
    print(bn.data)
    printed = capsys.readouterr().out
    assert "6." in printed and "11." in printed

    assert tuple(bn.mean.shape) == (1, 6, 1, 1)
    np.testing.assert_array_equal(bn.mean.get().ravel(), np.arange(6, 12))
    # Unbiased variance of (k, k + 6, k + 12): 36, moved in with factor 1.
    np.testing.assert_allclose(bn.var.get().ravel(), 36.0, rtol=1e-6)
    s = bn.scale.get().ravel().astype(np.float64)
    rows = np.array([-1.0, 0.0, 1.0])[:, None] * 6.0 / np.sqrt(24.0 + 1e-5)
    np.testing.assert_allclose(bn.data.get(), rows * s[None, :], **TOL)
    np.testing.assert_array_equal(bn.bias.get(), 0)


def test_doc_example_batchnorm3d():
    import numpy as np
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Modules import BatchNorm3D

    batchsize, maps, d, h, w = 5, 3, 10, 10, 10
    x = np.arange(batchsize * maps * d * h * w).reshape(batchsize, maps, d, h, w).astype(np.float32)
    data = gpuarray.to_gpu(x)
    bn = BatchNorm3D(maps)
    bn(data)
    _, mu, _, mean, var = ref.train_forward(x, bn.scale.get(), bn.bias.get(), np.zeros((1, 3, 1, 1, 1)),
                                            np.ones((1, 3, 1, 1, 1)), 1e-5, 1.0)
    np.testing.assert_allclose(bn.mean.get(), mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var.get(), var, rtol=1e-5)
    assert repr(bn.scale) and repr(bn.bias)


def test_doc_example_batchnorm2d():
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Modules import BatchNorm2D

    maps = 3
    x = np.random.randn(4, maps, 3, 3).astype(np.float32)
    bn = BatchNorm2D(maps)
    out = bn(gpuarray.to_gpu(x))
    want = ref.train_forward(x, bn.scale.get(), bn.bias.get(), np.zeros((1, 3, 1, 1)), np.ones((1, 3, 1, 1)),
                             1e-5, 1.0)
    np.testing.assert_allclose(out.get(), want[0], **TOL)
    np.testing.assert_allclose(bn.mean.get(), want[3], **TOL)
    np.testing.assert_allclose(bn.var.get(), want[4], **TOL)


@pytest.mark.parametrize("mode, shape", [("spatial", (3, 4, 2, 3)), ("perActivation", (6, 4, 1, 1)),
                                         ("perActivation", (5, 3, 2, 2))])
def test_functional_dnn(mode, shape):
    from PuzzleLib.Backend.Dnn import BatchNormMode, batchNormNd, batchNormNdBackward

    per_act = mode == "perActivation"
    m = getattr(BatchNormMode, mode)
    # perActivation keeps one statistic per (C, *rest) position: parameters of shape (1, C, *rest).
    pshape = (1,) + shape[1:] if per_act else (1, shape[1], 1, 1)
    x = np.random.randn(*shape).astype(np.float32) * 2 + 0.5
    scale = np.random.rand(*pshape).astype(np.float32) + 0.5
    bias = np.random.randn(*pshape).astype(np.float32)
    mean0 = np.random.randn(*pshape).astype(np.float32)
    var0 = np.random.rand(*pshape).astype(np.float32) + 0.5
    mean, var = to_gpu(mean0), to_gpu(var0)

    y, savemean, saveinvvar = batchNormNd(to_gpu(x), to_gpu(scale), to_gpu(bias), mean, var, 1e-4, 0.3, False,
                                          mode=m)
    flat = x.reshape(shape[0], -1) if per_act else x
    want = ref.train_forward(flat, scale.reshape(1, -1) if per_act else scale,
                             bias.reshape(1, -1) if per_act else bias, mean0.reshape(1, -1) if per_act else mean0,
                             var0.reshape(1, -1) if per_act else var0, 1e-4, 0.3, per_act)
    np.testing.assert_allclose(y.get().reshape(flat.shape), want[0], **TOL)
    assert tuple(savemean.shape) == pshape and tuple(saveinvvar.shape) == pshape
    np.testing.assert_allclose(savemean.get().ravel(), want[1].ravel(), **TOL)
    np.testing.assert_allclose(saveinvvar.get().ravel(), want[2].ravel(), **TOL)
    np.testing.assert_allclose(mean.get().ravel(), want[3].ravel(), **TOL)
    np.testing.assert_allclose(var.get().ravel(), want[4].ravel(), **TOL)

    g = np.random.randn(*shape).astype(np.float32)
    ingrad, scalegrad, biasgrad = batchNormNdBackward(to_gpu(x), to_gpu(g), to_gpu(scale), savemean, saveinvvar,
                                                      1e-4, mode=m)
    dx, dscale, dbias = ref.train_backward(flat, g.reshape(flat.shape), scale.reshape(1, -1) if per_act else scale,
                                           per_act, eps=1e-4)
    np.testing.assert_allclose(ingrad.get().reshape(flat.shape), dx, **TOL)
    assert tuple(scalegrad.shape) == pshape and tuple(biasgrad.shape) == pshape
    np.testing.assert_allclose(scalegrad.get().ravel(), dscale.ravel(), **TOL)
    np.testing.assert_allclose(biasgrad.get().ravel(), dbias.ravel(), **TOL)

    # test=True: running statistics, result only; out=data works in place.
    xg = to_gpu(x)
    r = batchNormNd(xg, to_gpu(scale), to_gpu(bias), mean, var, 1e-4, 0, True, mode=m, out=xg)
    assert r.ptr == xg.ptr
    want_inf = ref.infer_forward(flat, scale.reshape(1, -1) if per_act else scale,
                                 bias.reshape(1, -1) if per_act else bias, want[3], want[4], 1e-4)
    np.testing.assert_allclose(xg.get().reshape(flat.shape), want_inf, **TOL)


def test_functional_bad_mode():
    from PuzzleLib.Backend.Dnn import batchNormNd
    z = to_gpu(np.zeros((1, 2, 1, 1)))
    with pytest.raises(ValueError, match="mode"):
        batchNormNd(to_gpu(np.zeros((2, 2, 1, 1))), z, z, z, z, 1e-5, 1.0, False, mode="cross")
