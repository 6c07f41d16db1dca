"""The Module base protocol and Variable, independent of batch normalisation."""
import numpy as np
import pytest

from modules_helpers import to_gpu
from cybn.modules import BatchNorm2D, Module, ModuleError, Variable


class Scale2(Module):
    """y = 2 * x with one trainable variable, to exercise the base class alone."""

    def __init__(self, name=None):
        super().__init__(name)
        self.registerBlueprint(locals())
        self.setVar("w", Variable(to_gpu(np.arange(6).reshape(2, 3)), name="w"))
        self.setAttr("steps", np.zeros(1, np.int64))

    def updateData(self, data):
        from cybn import elementwise
        self.data = elementwise.axpby(data, data, 1.0, 1.0, out=to_gpu(np.zeros(data.shape)))

    def updateGrad(self, grad):
        self.grad = grad

    def dataShapeFrom(self, shape):
        return shape


def test_vars_attrs_and_tables():
    m = Scale2(name="s")
    assert m.getVar("w") is m.vars["w"] and m.w is m.vars["w"].data
    assert m.hasAttr("steps") and not m.hasAttr("w") and m.getAttr("steps") is m.steps
    assert m.getVarTable() == {m.vars["w"]: ["sw"]}
    assert m.numOfParams() == 6 and m.paramSize() == 24
    assert m.paramSize(unit="kb") == 24 / 1024 and m.paramSize(unit="mb") == 24 / 1024 ** 2
    assert str(m) == "Module Scale2 (name: s)"
    assert m.getBlueprint() == {"classname": "Scale2", "scheme": {"name": "s"}}
    assert m.dataShapeFrom((2, 3)) == (2, 3)


def test_call_backward_modes_and_reset():
    m = Scale2()
    x = to_gpu(np.ones((2, 3)))
    y = m(x)
    assert m.inData is x and m.data is y
    np.testing.assert_array_equal(y.get(), 2.0)
    g = to_gpu(np.ones((2, 3)))
    m.backward(g)
    assert m.grad is g
    m.evalMode()
    assert (m.train, m.inData, m.data, m.grad) == (False, None, None, None)
    m.trainMode()
    assert m.train is True
    with pytest.raises(ModuleError, match="Unsupported dtype"):
        m.calcMode(np.float16)  # the base class computes in float32 only
    with pytest.raises(ModuleError, match="Expected dtype float32, got float64"):
        m(to_gpu(np.ones((2, 3)), np.float64))


def test_update_params_and_zero_grads():
    m = Scale2()
    w = m.vars["w"]
    w.grad.set(np.full((2, 3), 2.0, np.float32))
    m.updateParams(0.5)
    np.testing.assert_array_equal(m.w.get(), np.arange(6).reshape(2, 3) + 1.0)
    m.zeroGradParams()
    np.testing.assert_array_equal(w.grad.get(), 0)


def test_variable():
    a = Variable(to_gpu(np.ones(3)))
    b = Variable(to_gpu(np.ones(3)))
    assert a.name != b.name and int(b.name) == int(a.name) + 1  # unnamed variables are numbered
    assert (a.learnRate, a.momRate, a.wc) == (1.0, 1.0, 0.0)
    assert not a.hasUpdater and not a.hasPostUpdater
    assert a.grad.shape == (3,) and a.grad.dtype == np.float32
    np.testing.assert_array_equal(a.grad.get(), 0)
    assert Variable(to_gpu(np.ones(3)), withgrad=False).grad is None

    src = Variable(to_gpu(np.arange(3)), grad=to_gpu(np.full(3, 7.0)))
    a.set(src)
    np.testing.assert_array_equal(a.data.get(), np.arange(3))
    np.testing.assert_array_equal(a.grad.get(), 7.0)

    with pytest.raises(ValueError, match="grad has shape"):
        Variable(to_gpu(np.ones(3)), grad=to_gpu(np.ones(4)))

    calls = []
    u = Variable(to_gpu(np.ones(3)), updater=lambda var, lr: calls.append((var, lr)))
    assert u.hasUpdater and u.grad is None
    u.update(0.1)
    assert calls == [(u, 0.1)]


def test_shared_variables_are_saved_once(tmp_path):
    h5py = pytest.importorskip("h5py")
    a, b = BatchNorm2D(2, name="a"), BatchNorm2D(2, name="b")
    b.setVar("scale", a.vars["scale"])  # b's scale IS a's scale
    path = str(tmp_path / "shared.hdf")
    with h5py.File(path, "w") as f:
        links = {}
        a.save(f, varlinks=links)
        b.save(f, varlinks=links)
        assert f.id.valid  # a file the caller opened stays open
    with h5py.File(path, "r") as f:
        assert sorted(f["params"]) == ["0", "1", "2"]
        assert {k: int(f["links"][k][()]) for k in f["links"]} == {"a.scale": 0, "a.bias": 1, "b.scale": 0,
                                                                    "b.bias": 2}
