"""Hostile kernel-cache entries: whatever sits where an entry should be is ignored (and removed when safe),
never fatal and never blocking; stale temporary files are cleaned; `python -W error` behaves like the default."""
import os
import stat
import subprocess
import sys
import textwrap
import time


from cybn import cache, diskcache, nvrtc

SRC = "__global__ void k(float* x) { x[threadIdx.x] += 1.0f; }\n"


# cache_dir: tests/nvrtc/conftest.py (a private cache directory and an empty memo per test).


def compile_src():
    return cache.compile_cached(SRC, "hostile.cu")


def entry(cache_dir):
    return cache_dir / (cache.cache_key(SRC, "hostile.cu") + diskcache.SUFFIX)


def replaced_entry(cache_dir, make):
    """Compile once (a valid entry on disk), put make(path, good_bytes) in its place, forget the memo."""
    compile_src()
    path = entry(cache_dir)
    good = path.read_bytes()
    path.unlink()
    make(path, good)
    cache.clear_memory()
    return path, good


def recompiles_and_heals(path, good):
    before = nvrtc.compile_count()
    img = compile_src()
    assert nvrtc.compile_count() == before + 1  # whatever was there was not trusted
    assert img.image
    assert stat.S_ISREG(os.lstat(path).st_mode) and path.read_bytes() == good  # a valid entry again
    cache.clear_memory()
    compile_src()
    assert nvrtc.compile_count() == before + 1  # which loads


def test_a_directory_in_place_of_an_entry(cache_dir):
    def make(path, good):
        path.mkdir()
        (path / "inside").write_bytes(good)
    recompiles_and_heals(*replaced_entry(cache_dir, make))


def test_a_fifo_in_place_of_an_entry_never_blocks(cache_dir):
    """In a subprocess with a timeout, so a regression hangs only it."""
    compile_src()
    path = entry(cache_dir)
    path.unlink()
    os.mkfifo(path)
    code = textwrap.dedent(f"""
        from cybn import cache, nvrtc
        cache.compile_cached({SRC!r}, "hostile.cu")
        assert nvrtc.compile_count() == 1
        import os, stat
        assert stat.S_ISREG(os.lstat({str(path)!r}).st_mode)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CYBN_CACHE_DIR=str(cache_dir)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_hard_linked_entry_is_not_trusted(cache_dir, tmp_path):
    other = tmp_path / "other-name"

    def make(path, good):
        other.write_bytes(good)
        os.link(other, path)
    path, good = replaced_entry(cache_dir, make)
    recompiles_and_heals(path, good)
    assert other.read_bytes() == good  # only the cache's own name was removed


def test_a_world_writable_entry_is_not_trusted(cache_dir):
    def make(path, good):
        path.write_bytes(good)
        os.chmod(path, 0o666)
    recompiles_and_heals(*replaced_entry(cache_dir, make))


def test_a_symlink_to_a_valid_entry_is_not_followed(cache_dir, tmp_path):
    target = tmp_path / "elsewhere"

    def make(path, good):
        target.write_bytes(good)
        path.symlink_to(target)
    recompiles_and_heals(*replaced_entry(cache_dir, make))
    assert target.exists()


def test_stale_temporary_files_of_dead_writers_are_removed(cache_dir):
    compile_src()
    stale = cache_dir / (".tmp-dead" + diskcache.SUFFIX + ".part")
    fresh = cache_dir / (".tmp-busy" + diskcache.SUFFIX + ".part")
    stale.write_bytes(b"half an entry")
    fresh.write_bytes(b"a writer at work")
    old = time.time() - diskcache.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    cache.compile_cached(SRC.replace("1.0f", "2.0f"), "hostile.cu")  # the next writer cleans up
    assert not stale.exists() and fresh.exists()


def test_python_W_error_behaves_like_the_default(tmp_path):
    """An unusable cache directory is a warning, never an exception, on every call, also under -W error."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    code = textwrap.dedent(f"""
        from cybn import cache
        for i in range(2):
            cache.clear_memory()
            cache.compile_cached({SRC!r}, "hostile.cu")
        print("ok")
    """)
    for flags in ([], ["-W", "error"]):
        proc = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, CYBN_CACHE_DIR=str(d)))
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (flags, proc.stderr)
        assert proc.stderr.count("writable by group or others") == 1, (flags, proc.stderr)
