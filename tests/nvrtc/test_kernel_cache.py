"""cybn.cache: in-process memo, the disk cache (keys, verification, atomic writes, racing processes) and
the safety checks on the cache directory."""
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from cybn import cache, diskcache, includes, nvrtc, paths, variants
from nvrtc_helpers import REPO_ROOT, entries, last_json, run_py

SRC = r"""
#include <cuda_fp16.h>
template <typename T>
__global__ void k(T* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * T(2) + T(1);
}
"""
EXPRS = ["k<float>", "k<__half>"]

# Prints the outcome of compiling SRC in a fresh process as JSON.
CHILD = """
import hashlib, json, sys
from cybn import cache
img = cache.compile_cached(%r, "cache_test.cu", name_expressions=%r)
nvrtc_imported = "cybn.jit.nvrtc" in sys.modules
from cybn import nvrtc
print(json.dumps(dict(compiles=nvrtc.compile_count(), stats=cache.stats(), nvrtc_imported=nvrtc_imported,
                      sha=hashlib.sha256(img.image).hexdigest(), lowered=img.lowered)))
""" % (SRC, EXPRS)


def compile_src(**kw):
    return cache.compile_cached(SRC, "cache_test.cu", name_expressions=EXPRS, **kw)


def the_entry(cache_dir):
    names = entries(cache_dir)
    assert len(names) == 1, names
    return cache_dir / names[0]


def test_cold_compile_then_warm_in_process(cache_dir):
    before = nvrtc.compile_count()
    img = compile_src()
    assert nvrtc.compile_count() == before + 1
    assert img.lowered == {"k<float>": "_Z1kIfEvPT_i", "k<__half>": "_Z1kI6__halfEvPT_i"}
    key = cache.cache_key(SRC, "cache_test.cu", name_expressions=EXPRS)
    assert entries(cache_dir) == [key + ".cybnk"]
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(the_entry(cache_dir)).st_mode) & 0o077 == 0
    again = cache.compile_cached(SRC, "cache_test.cu", name_expressions=list(reversed(EXPRS)) + ["k<float>"])
    assert again is img  # order and duplicates of name expressions don't matter
    assert nvrtc.compile_count() == before + 1


def test_warm_from_disk_in_a_fresh_process(cache_dir):
    img = compile_src()
    out = last_json(run_py(CHILD))
    assert out["compiles"] == 0 and out["stats"]["disk_hits"] == 1 and out["stats"]["compiles"] == 0
    assert out["nvrtc_imported"] is False  # a hit doesn't even load NVRTC
    assert out["sha"] == hashlib.sha256(img.image).hexdigest()
    assert out["lowered"] == img.lowered


def _flip_payload_byte(data):
    i = len(data) - 40  # inside the image, well past the header
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def _flip_magic(data):
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _tamper(data):
    """A well-formed entry whose image was edited (same length, valid text) but whose checksum wasn't."""
    assert b"ret;" in data
    return data.replace(b"ret;", b"trap", 1)


def _other_key(data):
    """A fully valid entry (checksum and all) for a different program, renamed to this key."""
    other = cache.compile_cached(SRC.replace("T(1)", "T(3)"), "cache_test.cu", name_expressions=EXPRS)
    return diskcache.encode(hashlib.sha256(b"some other key").digest(), other)


MUTATIONS = {
    "flipped byte": _flip_payload_byte,
    "bad magic": _flip_magic,
    "tampered image": _tamper,
    "entry of another key": _other_key,
    "truncated": lambda d: d[: len(d) // 2],
    "truncated header": lambda d: d[:20],
    "empty": lambda d: b"",
    "trailing garbage": lambda d: d + b"\0junk",
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_bad_entries_are_discarded_and_recompiled(cache_dir, mutation):
    img = compile_src()
    path = the_entry(cache_dir)
    good = path.read_bytes()
    path.write_bytes(MUTATIONS[mutation](good))
    assert path.read_bytes() != good
    for f in os.listdir(cache_dir):  # keep only the damaged entry (_other_key compiled another program)
        if os.path.join(cache_dir, f) != str(path):
            os.unlink(os.path.join(cache_dir, f))
    cache.clear_memory()
    before, stats0 = nvrtc.compile_count(), cache.stats()
    again = compile_src()
    assert nvrtc.compile_count() == before + 1  # recompiled, not loaded
    assert cache.stats()["discarded"] == stats0["discarded"] + 1
    assert again.image == img.image and again.lowered == img.lowered
    assert path.read_bytes() == good  # rewritten as a valid entry
    cache.clear_memory()
    compile_src()
    assert nvrtc.compile_count() == before + 1  # and that one loads


def test_a_symlink_in_place_of_an_entry_is_not_followed(cache_dir, tmp_path):
    compile_src()
    path = the_entry(cache_dir)
    target = tmp_path / "elsewhere"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    cache.clear_memory()
    before = nvrtc.compile_count()
    compile_src()
    assert nvrtc.compile_count() == before + 1
    assert not path.is_symlink() and target.exists()


def test_the_key_covers_every_included_header(cache_dir, kernel_dir, tmp_path):
    inc = tmp_path / "extra_include"
    inc.mkdir()
    (kernel_dir / "a.cu").write_text('#include "b.cuh"\nextern "C" __global__ void f(float* x) { x[0] = VALUE; }\n')
    (kernel_dir / "b.cuh").write_text("#pragma once\n#include <c.cuh>\n")
    (inc / "c.cuh").write_text("#define VALUE 1.0f\n")
    opts = ("-I" + str(inc),)
    text, name, directory = cache.resolve_source("a.cu")

    def key(options=opts, exprs=()):
        return cache.cache_key(text, name, options, exprs, source_dir=directory)

    k1 = key()
    assert key() == k1
    (inc / "c.cuh").write_text("#define VALUE 2.0f\n")  # two levels down, via -I
    k2 = key()
    assert k2 != k1
    (kernel_dir / "b.cuh").write_text("#pragma once\n#include <c.cuh>\n// edited\n")
    k3 = key()
    assert k3 not in (k1, k2)
    assert key(opts + ("-DX=1",)) != k3
    assert key(exprs=("f",)) != k3
    assert cache.cache_key(text + " ", name, opts, source_dir=directory) != k3
    assert cache.cache_key(text, name, opts, target="cubin", arch="sm_80", source_dir=directory) != k3
    # A program really is recompiled after a header edit, and the new value is in the image.
    before = nvrtc.compile_count()
    img1 = cache.compile_kernel("a.cu", options=opts)
    (inc / "c.cuh").write_text("#define VALUE 4.0f\n")
    cache.clear_memory()
    img2 = cache.compile_kernel("a.cu", options=opts)
    assert nvrtc.compile_count() == before + 2 and len(entries(cache_dir)) == 2
    assert b"1073741824" in img1.image and b"1082130432" in img2.image  # 2.0f and 4.0f as u32 bits


def test_wheel_headers_are_followed_transitively(monkeypatch, tmp_path):
    deps = includes.dependencies("#include <cuda_fp16.h>\n", None, {}, paths.cuda_include_dirs())
    resolved = {name: path for name, path, _ in deps}
    wheel = paths.cuda_include_dirs()[0]
    assert resolved["cuda_fp16.h"] == os.path.join(wheel, "cuda_fp16.h")
    assert resolved["cuda_fp16.hpp"] == os.path.join(wheel, "cuda_fp16.hpp")  # included by cuda_fp16.h
    # And the key moves when a header inside the CUDA include dir changes (a stand-in dir, since the real
    # wheel must not be edited).
    fake = tmp_path / "fake_cuda_include"
    fake.mkdir()
    (fake / "cuda_fp16.h").write_text('#include "cuda_fp16.hpp"\n')
    (fake / "cuda_fp16.hpp").write_text("// v1\n")
    monkeypatch.setattr(paths, "cuda_include_dirs", lambda: [str(fake)])
    k1 = cache.cache_key(SRC, "x.cu")
    (fake / "cuda_fp16.hpp").write_text("// v2\n")
    assert cache.cache_key(SRC, "x.cu") != k1


RACER = """
import hashlib, json, os, sys, time
from cybn import cache, nvrtc  # NVRTC loaded before the barrier, so both reach the cache lookup together
nvrtc.version()
barrier, me = os.environ["BARRIER"], os.environ["RACER"]
open(os.path.join(barrier, "ready-" + me), "w").close()
deadline = time.time() + 60
while len(os.listdir(barrier)) < 2 and time.time() < deadline:
    time.sleep(0.001)
img = cache.compile_cached(%r, "race.cu", name_expressions=%r)
print(json.dumps(dict(stats=cache.stats(), sha=hashlib.sha256(img.image).hexdigest())))
""" % (SRC, EXPRS)


def test_two_processes_compiling_at_once_leave_one_valid_entry(cache_dir, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, BARRIER=str(barrier), PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", RACER], env=dict(env, RACER=str(i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["stats"]["compiles"] for r in results] == [1, 1]  # both really raced: neither found an entry
    assert results[0]["sha"] == results[1]["sha"]
    assert os.listdir(cache_dir) == entries(cache_dir) and len(entries(cache_dir)) == 1  # no temp files left
    cache.clear_memory()
    before = nvrtc.compile_count()
    img = cache.compile_cached(SRC, "race.cu", name_expressions=EXPRS)
    assert nvrtc.compile_count() == before and cache.last_outcome() == "disk"
    assert hashlib.sha256(img.image).hexdigest() == results[0]["sha"]


def test_threads_asking_at_once_compile_once():
    before = nvrtc.compile_count()
    results, start = [], threading.Barrier(4)

    def ask():
        start.wait()
        results.append(compile_src())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert nvrtc.compile_count() == before + 1
    assert all(r is results[0] for r in results)


def test_new_cache_dir_is_private_whatever_the_umask(tmp_path, monkeypatch):
    d = tmp_path / "deep" / "er" / "cache"
    monkeypatch.setenv("CYBN_CACHE_DIR", str(d))
    old = os.umask(0)
    try:
        compile_src()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert len(entries(d)) == 1


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_group_or_world_writable_dir_is_not_used(cache_dir, mode):
    compile_src()
    path = the_entry(cache_dir)
    before_listing, before_mtime = os.listdir(cache_dir), path.stat().st_mtime_ns
    os.chmod(cache_dir, mode)
    cache.clear_memory()
    before = nvrtc.compile_count()
    with pytest.warns(RuntimeWarning, match="writable by group or others"):
        compile_src()
    assert nvrtc.compile_count() == before + 1  # the (valid) entry there was not trusted
    assert os.listdir(cache_dir) == before_listing and path.stat().st_mtime_ns == before_mtime  # nothing written
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        cache.compile_cached(SRC, "other.cu")
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == mode  # refused, not silently changed


def test_a_dir_owned_by_someone_else_is_not_used(cache_dir, monkeypatch):
    compile_src()
    cache.clear_memory()
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 4242)
    before = nvrtc.compile_count()
    with pytest.warns(RuntimeWarning, match="owned by uid"):
        compile_src()
    assert nvrtc.compile_count() == before + 1
    assert len(entries(cache_dir)) == 1


def test_a_file_where_the_dir_should_be(tmp_path, monkeypatch):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    monkeypatch.setenv("CYBN_CACHE_DIR", str(f))
    with pytest.warns(RuntimeWarning, match="cannot create|not a directory"):
        img = compile_src()
    assert img.lowered["k<float>"] == "_Z1kIfEvPT_i" and f.read_text() == "x"


def test_cybn_cache_0_disables_the_disk_but_not_the_memo(cache_dir, monkeypatch):
    monkeypatch.setenv("CYBN_CACHE", "0")
    before = nvrtc.compile_count()
    img = compile_src()
    assert compile_src() is img
    assert nvrtc.compile_count() == before + 1
    assert not cache_dir.exists()
    out = last_json(run_py(CHILD, env={"CYBN_CACHE": "0"}))
    assert out["compiles"] == 1 and not cache_dir.exists()


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CYBN_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == str(tmp_path / "explicit")
    monkeypatch.delenv("CYBN_CACHE_DIR")
    assert paths.cache_dir() == str(tmp_path / "xdg" / "cybn")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == str(tmp_path / "home" / ".cache" / "cybn")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.cache_dir() == str(tmp_path / "home" / ".cache" / "cybn")


def test_compile_kernel_shares_entries_with_registered_variants(cache_dir, kernel_dir, monkeypatch):
    monkeypatch.setattr(variants, "_registry", {})
    (kernel_dir / "v.cu").write_text("template <typename T> __global__ void k(T* x) { x[0] = T(1); }\n")
    variants.register_variants("v.cu", [(["k<float>", "k<int>"], ())])
    before = nvrtc.compile_count()
    warm = cache.compile_kernel("v.cu")  # what warmup does
    assert set(warm.lowered) == {"k<float>", "k<int>"}
    assert cache.compile_kernel("v.cu", ["k<int>"]) is warm  # what a launch of one variant does
    assert nvrtc.compile_count() == before + 1
    extra = cache.compile_kernel("v.cu", ["k<double>"])  # unregistered: compiled along with the rest
    assert set(extra.lowered) == {"k<float>", "k<int>", "k<double>"}
    with pytest.raises(FileNotFoundError, match="missing.cu"):
        cache.compile_kernel("missing.cu")


def test_inline_sources_get_a_stable_name():
    text, name, directory = cache.resolve_source(SRC)
    assert text == SRC and directory is None
    assert name == cache.resolve_source(SRC)[1] != cache.resolve_source(SRC + "\n")[1]
    with pytest.raises(TypeError, match="source"):
        cache.compile_cached(b"bytes", "x.cu")
