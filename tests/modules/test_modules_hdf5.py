"""save/load in PuzzleLib's HDF5 layout: round trips, files written directly with h5py, failures that change nothing."""
import sys

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")  # the test extra installs it; without it these tests cannot run at all

from modules_helpers import assert_unchanged, snapshot, to_gpu  # noqa: E402
from cybn.modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, ModuleError  # noqa: E402


def trained_bn2d(name="bn"):
    bn = BatchNorm2D(3, name=name, sscale=0.2)
    for _ in range(2):
        bn(to_gpu(np.random.randn(4, 3, 2, 2) * 2 + 1))
    bn.backward(to_gpu(np.random.randn(4, 3, 2, 2)))
    bn.updateParams(-0.5)  # parameters no longer at their initial values
    return bn


def values(bn):
    return {n: getattr(bn, n).get() for n in ("scale", "bias", "mean", "var")}


def test_save_writes_puzzlelib_layout(tmp_path):
    bn = trained_bn2d()
    path = str(tmp_path / "sub" / "bn.hdf")
    assert bn.save(path) is None
    want = values(bn)
    with h5py.File(path, "r") as f:
        assert set(f) == {"params", "links", "attrs"}
        links = {k: int(f["links"][k][()]) for k in f["links"]}
        assert links == {"bn.scale": 0, "bn.bias": 1}
        np.testing.assert_array_equal(f["params"]["0"][()], want["scale"])
        np.testing.assert_array_equal(f["params"]["1"][()], want["bias"])
        assert set(f["attrs"]) == {"bn.mean", "bn.var"}
        np.testing.assert_array_equal(f["attrs"]["bn.mean"][()], want["mean"])
        np.testing.assert_array_equal(f["attrs"]["bn.var"][()], want["var"])


def test_round_trip_through_file_and_bytes(tmp_path):
    bn = trained_bn2d()
    want = values(bn)
    path = str(tmp_path / "bn.hdf")
    bn.save(path)
    image = bn.save()  # no file: the bytes of an in-memory HDF5 file
    assert isinstance(image, bytes) and image[:8] == b"\x89HDF\r\n\x1a\n"

    for source in (path, image):
        other = BatchNorm2D(3, name="bn")
        other.load(source)
        for n, v in values(other).items():
            np.testing.assert_array_equal(v, want[n], err_msg=n)


def test_load_into_empty_module_creates_the_tensors(tmp_path):
    bn = trained_bn2d()
    image = bn.save()
    empty = BatchNorm2D(3, name="bn", empty=True)
    empty.load(image)
    for n, v in values(bn).items():
        np.testing.assert_array_equal(getattr(empty, n).get(), v, err_msg=n)
    assert set(empty.vars) == {"scale", "bias"} and empty.vars["scale"].grad is not None
    # The loaded module computes: an eval forward with the loaded statistics.
    empty.evalMode()
    x = np.random.randn(2, 3, 2, 2).astype(np.float32)
    bn.evalMode()
    np.testing.assert_allclose(empty(to_gpu(x)).get(), bn(to_gpu(x)).get(), rtol=1e-6, atol=1e-6)


def test_loads_a_file_written_in_puzzlelib_layout(tmp_path):
    """A file as PuzzleLib writes it (float32 (1, C, 1, 1) tensors; a module inside a container names its
    entries "<container>.<module>.<var>"), built here with h5py alone."""
    rng = np.random.default_rng(5)
    t = {n: rng.random((1, 4, 1, 1), dtype=np.float32) + 0.5 for n in ("scale", "bias", "mean", "var")}
    path = str(tmp_path / "puzzlelib.hdf")
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_group("params")
        f["params"].create_dataset("7", data=t["scale"], compression="gzip")
        f["params"].create_dataset("8", data=t["bias"], compression="gzip")
        f.create_group("links")
        f["links"]["net.bn1.scale"] = 7
        f["links"]["net.bn1.bias"] = 8
        f.create_group("attrs")
        f["attrs"].create_dataset("net.bn1.mean", data=t["mean"])
        f["attrs"].create_dataset("net.bn1.var", data=t["var"])

    for cls in (BatchNorm2D, BatchNorm1D, BatchNorm):
        bn = cls(4, name="net.bn1")
        bn.load(path)
        for n, v in t.items():
            np.testing.assert_array_equal(getattr(bn, n).get(), v, err_msg=n)

    # Opened by the caller: the module reads it and leaves it open.
    bn = BatchNorm2D(4)
    with h5py.File(path, "r") as f:
        bn.load(f, name="net.bn1")
        assert f.id.valid
    np.testing.assert_array_equal(bn.mean.get(), t["mean"])


def test_failed_load_changes_nothing(tmp_path):
    src = BatchNorm2D(5, name="bn")
    image = src.save()
    for bad in (BatchNorm2D(3, name="bn"), BatchNorm2D(5, name="other")):
        snap = snapshot(bad)
        with pytest.raises(ModuleError, match="load error"):
            bad.load(image)
        assert_unchanged(bad, snap)

    for source in (str(tmp_path / "missing.hdf"), b"not an HDF5 file"):
        bad = BatchNorm2D(5, name="bn")
        snap = snapshot(bad)
        with pytest.raises(ModuleError, match="load error: cannot open"):
            bad.load(source)
        assert_unchanged(bad, snap)
    with pytest.raises(TypeError, match="expected a file path"):
        BatchNorm2D(5).load(12)

    # A lossy dtype (float64 parameters into float32 tensors) is refused too.
    path = str(tmp_path / "f64.hdf")
    with h5py.File(path, "w") as f:
        for g in ("params", "links", "attrs"):
            f.create_group(g)
        f["params"]["0"] = np.ones((1, 2, 1, 1))
        f["params"]["1"] = np.ones((1, 2, 1, 1), np.float32)
        f["links"]["bn.scale"], f["links"]["bn.bias"] = 0, 1
        f["attrs"]["bn.mean"] = np.ones((1, 2, 1, 1), np.float32)
        f["attrs"]["bn.var"] = np.ones((1, 2, 1, 1), np.float32)
    bn = BatchNorm2D(2, name="bn")
    snap = snapshot(bn)
    with pytest.raises(ModuleError, match="without loss"):
        bn.load(path)
    assert_unchanged(bn, snap)


def test_blueprint_saved_alongside():
    bn = BatchNorm2D(3, name="bn", epsilon=1e-3)
    assert bn.getBlueprint() == {"classname": "BatchNorm2D", "scheme": {
        "maps": 3, "epsilon": 1e-3, "initFactor": 1.0, "minFactor": 0.1, "sscale": 0.01, "affine": True,
        "name": "bn", "empty": False, "inplace": False}}
    import json
    image = bn.save(withBlueprint=True)
    with h5py.File(__import__("io").BytesIO(image), "r") as f:
        assert json.loads(f["blueprint"][()]) == bn.getBlueprint()


def test_missing_h5py_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes "import h5py" raise ImportError
    bn = BatchNorm2D(2)
    with pytest.raises(ModuleError, match="needs h5py"):
        bn.save()
    with pytest.raises(ModuleError, match="needs h5py"):
        bn.load(b"whatever")



def test_load_into_empty_module_checks_the_file_against_its_maps():
    """An empty module has no tensors to compare the file's with: it checks them against its maps, so a
    file written for 3 maps is refused by an empty 4-map module, which stays empty."""
    image = trained_bn2d().save()
    other = BatchNorm2D(4, name="bn", empty=True)
    with pytest.raises(ModuleError, match="'scale' has shape"):
        other.load(image)
    assert other.scale is None and other.mean is None and not other.vars and not other.attrs
    # Same number of values in another layout: loaded in the module's own parameter shape.
    same = BatchNorm3D(3, name="bn", empty=True)
    same.load(image)
    assert same.scale.shape == (1, 3, 1, 1, 1) and same.var.shape == (1, 3, 1, 1, 1)
