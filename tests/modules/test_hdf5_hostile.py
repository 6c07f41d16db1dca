"""Hostile and careless model files: load() reads nothing but the file itself, never blocks, checks declared
shapes before reading, refuses unusable values, touches no global state; save() never follows a planted link."""
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from modules_helpers import assert_unchanged, snapshot  # noqa: E402
from cybn.modules import BatchNorm2D, ModuleError  # noqa: E402

C = 4


def write_model(path, replace=None, values_=None):
    """A valid PuzzleLib-layout file for BatchNorm2D(C, name="bn"); replace[key](group, name) writes that
    entry instead ("scale", "bias" -> params/0, params/1; "mean", "var" -> attrs; "links" -> the links group)."""
    replace = replace or {}
    values = dict(scale=np.full((1, C, 1, 1), 2, np.float32), bias=np.full((1, C, 1, 1), 3, np.float32),
                  mean=np.full((1, C, 1, 1), 4, np.float32), var=np.full((1, C, 1, 1), 5, np.float32))
    values.update(values_ or {})
    with h5py.File(path, "w") as f:
        params, attrs = f.create_group("params"), f.create_group("attrs")
        for key, (group, dname) in dict(scale=(params, "0"), bias=(params, "1"),
                                        mean=(attrs, "bn.mean"), var=(attrs, "bn.var")).items():
            if key in replace:
                replace[key](group, dname)
            else:
                group[dname] = values[key]
        if "links" in replace:
            replace["links"](f)
        else:
            f.create_group("links")
            f["links"]["bn.scale"], f["links"]["bn.bias"] = 0, 1
    return path


def refused(path, match, **kwargs):
    bn = BatchNorm2D(C, name="bn")
    snap = snapshot(bn)
    with pytest.raises(ModuleError, match=match):
        bn.load(path, **kwargs)
    assert_unchanged(bn, snap)


def test_external_raw_storage_is_refused_before_reading(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    path = write_model(str(tmp_path / "m.hdf"), {"var": lambda g, n: g.create_dataset(
        n, (1, C, 1, 1), np.float32, external=[(str(secret), 0, 4 * C)])})
    refused(path, "bn.var' keeps its data in external files")
    # also the environment of this process, the issue's example
    path = write_model(str(tmp_path / "e.hdf"), {"scale": lambda g, n: g.create_dataset(
        n, (1, C, 1, 1), np.float32, external=[("/proc/self/environ", 0, 4 * C)])})
    refused(path, "params/0' keeps its data in external files")


@pytest.mark.parametrize("where", ["mean", "scale", "links"])
def test_external_and_soft_links_are_refused(tmp_path, where):
    other = write_model(str(tmp_path / "other.hdf"))
    if where == "links":
        make = {"links": lambda f: f.__setitem__("links", h5py.ExternalLink(other, "/links"))}
    elif where == "mean":
        make = {"mean": lambda g, n: g.__setitem__(n, h5py.ExternalLink(other, "/attrs/bn.mean"))}
    else:
        make = {"scale": lambda g, n: g.__setitem__(n, h5py.SoftLink("/params/1"))}
    path = write_model(str(tmp_path / "m.hdf"), make)
    refused(path, "is a (ExternalLink|SoftLink); cybn loads only objects stored in the file itself")


def test_virtual_dataset_is_refused(tmp_path):
    other = write_model(str(tmp_path / "other.hdf"))

    def virtual(group, name):
        layout = h5py.VirtualLayout(shape=(1, C, 1, 1), dtype=np.float32)
        layout[...] = h5py.VirtualSource(other, "/attrs/bn.var", shape=(1, C, 1, 1))
        group.create_virtual_dataset(name, layout)
    refused(write_model(str(tmp_path / "m.hdf"), {"var": virtual}), "is a virtual dataset")


def test_declared_size_bomb_is_refused_from_metadata(tmp_path):
    """A few KB on disk declaring 50 M floats (never written: fill values): refused before any read."""
    path = write_model(str(tmp_path / "bomb.hdf"), {"mean": lambda g, n: g.create_dataset(
        n, (50_000_000,), np.float32, chunks=(1 << 20,), compression="gzip")})
    assert os.path.getsize(path) < 64 * 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        refused(path, r"'mean' has shape \(50000000,\) in the file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the 200 MB the declaration asks for were never allocated
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("bad", ["string", "compound", "scalar_link_array"])
def test_non_numeric_or_misshapen_metadata_is_refused(tmp_path, bad):
    if bad == "string":
        make = {"bias": lambda g, n: g.create_dataset(n, (1, C, 1, 1), h5py.string_dtype())}
        match = "expected numbers"
    elif bad == "compound":
        make = {"var": lambda g, n: g.create_dataset(n, (1, C, 1, 1), np.dtype([("a", "f4"), ("b", "f4")]))}
        match = "expected numbers"
    else:
        def links(f):
            f.create_group("links")
            f["links"]["bn.scale"], f["links"]["bn.bias"] = np.zeros(1 << 20, np.int64), 1
        make, match = {"links": links}, "must hold one integer"
    refused(write_model(str(tmp_path / "m.hdf"), make), match)


def test_special_files_never_block(tmp_path):
    """load() on a FIFO, and a dataset whose external storage is a FIFO: refused at once (a subprocess, so
    a regression hangs only it)."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    ext = write_model(str(tmp_path / "ext.hdf"), {"var": lambda g, n: g.create_dataset(
        n, (1, C, 1, 1), np.float32, external=[(fifo, 0, 4 * C)])})
    script = textwrap.dedent(f"""
        from cybn import softgpu; softgpu.load()
        from cybn.modules import BatchNorm2D, ModuleError
        for path, want in (({fifo!r}, "not a regular file"), ({ext!r}, "external files")):
            try:
                BatchNorm2D({C}, name="bn").load(path)
            except ModuleError as e:
                assert want in str(e), e
            else:
                raise SystemExit("loaded " + path)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("key,value,match", [
    ("scale", np.full((1, C, 1, 1), np.nan, np.float32), "parameter 'scale' holds NaN or Inf"),
    ("bias", np.array([[[[0]], [[np.inf]], [[0]], [[0]]]], np.float32), "parameter 'bias' holds NaN or Inf"),
    ("var", np.array([[[[1]], [[-1]], [[1]], [[1]]]], np.float32), "attribute 'var' holds negative values"),
    ("var", np.full((1, C, 1, 1), np.nan, np.float32), "attribute 'var' holds NaN or Inf"),
    ("mean", np.full((1, C, 1, 1), -np.inf, np.float32), "attribute 'mean' holds NaN or Inf"),
])
def test_unusable_values_are_refused_unless_asked(tmp_path, key, value, match):
    path = write_model(str(tmp_path / "m.hdf"), values_={key: value})
    refused(path, match)
    bn = BatchNorm2D(C, name="bn")
    bn.load(path, checkValues=False)  # the explicit opt-in
    np.testing.assert_array_equal(getattr(bn, key).get(), value)


def test_load_leaves_warnings_filters_alone_in_threads(tmp_path):
    path = write_model(str(tmp_path / "m.hdf"))
    before = list(warnings.filters)
    errors, barrier = [], threading.Barrier(3)

    def loader():
        try:
            barrier.wait()
            for _ in range(20):
                bn = BatchNorm2D(C, name="bn", empty=True)
                bn.load(path)
                np.testing.assert_array_equal(bn.var.get(), np.full((1, C, 1, 1), 5, np.float32))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert warnings.filters == before


def test_save_refuses_a_symlinked_or_special_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "model.hdf"
    link.symlink_to(victim)
    bn = BatchNorm2D(C, name="bn")
    with pytest.raises(ModuleError, match="save error: cannot open .*symbolic link"):
        bn.save(str(link))
    assert victim.read_bytes() == b"precious" and link.is_symlink()
    fifo = str(tmp_path / "fifo.hdf")
    os.mkfifo(fifo)
    with pytest.raises(ModuleError, match="not a regular file"):
        bn.save(fifo)


def test_failed_save_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "m.hdf")
    good = BatchNorm2D(C, name="bn")
    good.save(path)
    before = open(path, "rb").read()
    bad = BatchNorm2D(C, name="bn")
    bad.attrs["mean"] = object()  # h5py cannot write it: the save fails half-way
    with pytest.raises(ModuleError, match="save error"):
        bad.save(path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.hdf"]  # no temporary file left behind
    os.chmod(path, 0o640)
    good.save(path)  # a successful save keeps the file's permissions
    assert os.stat(path).st_mode & 0o777 == 0o640
