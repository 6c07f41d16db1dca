"""The software GPU keeps nvJitLink's register counts between processes (src/softgpu/runtime/jit_cache.cpp),
as the CUDA driver keeps its JIT output: a second process loads the counts instead of running ptxas again, and
gets the same counts as ptxas itself reports (NVRTC's CUBIN build with -v, an independent run). An entry is
untrusted: a malformed one, another key's, one that is not a regular file (a link, a FIFO: never waited on),
or one in a directory others can write or reached through a link is not used, and the counts are ptxas'
again."""
import hashlib
import json
import os
import stat

import pytest

from cybn import nvrtc, softgpu
from cybn.testing.cubin_report import ptxas_report
from fresh import run_fresh

SRC = r"""
extern "C" __global__ void scale_add(const float* x, float* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i] * x[n - 1 - i];
}
"""

SCRIPT = r"""
import json
from cybn import softgpu
softgpu.load()
from cuda.bindings import driver as cu
from cybn import nvrtc
def ok(r):
    assert int(r[0]) == 0, r
    return r[1] if len(r) == 2 else r[1:]
assert int(cu.cuInit(0)[0]) == 0
dev = ok(cu.cuDeviceGet(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(dev))
assert int(cu.cuCtxSetCurrent(ctx)[0]) == 0
ptx = nvrtc.compile(%r, "jit_cache_probe.cu").image
mod = ok(cu.cuModuleLoadData(ptx.rstrip(b"\0") + b"\0"))
f = ok(cu.cuModuleGetFunction(mod, b"scale_add"))
print(json.dumps(dict(regs=softgpu.function_registers(f), stats=softgpu.jit_cache_stats())))
""" % SRC


def probe(jit_dir, **env):
    env.setdefault("CYBN_SOFTGPU_JIT_CACHE", str(jit_dir))
    env["CYBN_SOFTGPU_PROFILE"] = "a100"  # sm_80, the architecture ptxas_count() builds for
    r = run_fresh(SCRIPT, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ptxas_count():
    """scale_add's registers as ptxas reports them for sm_80 in NVRTC's own CUBIN build."""
    img = nvrtc.compile(SRC, "jit_cache_probe.cu", ("--ptxas-options=-v",), target="cubin", arch="sm_80")
    (facts,) = ptxas_report(img.log).values()
    return facts["registers"]


def entry_files(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".regs"))


def test_sha256_matches_hashlib():
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 1000):
        data = bytes((i * 7 + 3) % 256 for i in range(n))
        assert softgpu.sha256_hex(data) == hashlib.sha256(data).hexdigest(), n


def test_a_second_process_loads_the_counts(tmp_path, ptxas_count):
    d = tmp_path / "jit"
    first = probe(d)
    assert first["stats"] == dict(compiles=1, hits=0, refused=0)
    assert first["regs"]["exact"] == ptxas_count == first["regs"]["registers"]
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and len(entry_files(d)) == 1
    assert stat.S_IMODE(os.stat(d / entry_files(d)[0]).st_mode) == 0o600
    second = probe(d)
    assert second["stats"] == dict(compiles=0, hits=1, refused=0)
    assert second["regs"] == first["regs"]


def test_off_and_default_locations(tmp_path, ptxas_count):
    off = probe(tmp_path / "unused", CYBN_SOFTGPU_JIT_CACHE="0")
    assert off["stats"]["compiles"] == 1 and off["regs"]["exact"] == ptxas_count
    assert not (tmp_path / "unused").exists()
    kernel_cache = tmp_path / "kcache"
    where = "import os; from cybn import softgpu; softgpu.load(); print(os.environ.get('CYBN_SOFTGPU_JIT_CACHE'))"
    unset = "import os; os.environ.pop('CYBN_SOFTGPU_JIT_CACHE', None); "  # run_fresh passes this process's
    r = run_fresh(unset + where, CYBN_CACHE_DIR=str(kernel_cache))
    assert r.stdout.strip() == str(kernel_cache / "softgpu-jit"), r.stderr
    r = run_fresh(unset + where, CYBN_CACHE_DIR=str(kernel_cache), CYBN_CACHE="0")
    assert r.stdout.strip() == "None", r.stderr


def _garbage(p):
    p.write_bytes(b"\x00\xffnot an entry\n")


def _other_key(p):
    lines = p.read_text().splitlines()
    lines[1] = "0" * 64
    p.write_text("\n".join(lines) + "\n")


def _count_out_of_range(p):
    lines = p.read_text().splitlines()
    lines[3] = "999 " + lines[3].split(" ", 1)[1]
    p.write_text("\n".join(lines) + "\n")


def _wrong_count(p):
    lines = p.read_text().splitlines()
    lines[3] = "7 " + lines[3].split(" ", 1)[1]  # well-formed: a fact nobody can check here, but not ptxas'
    p.write_text("\n".join(lines) + "\n")


def _other_spelling(p):
    lines = p.read_text().splitlines()
    lines[3] = "+" + lines[3]  # the same count, written as no writer writes it
    p.write_text("\n".join(lines) + "\n")


def _trailing(p):
    p.write_text(p.read_text() + "extra\n")


def _oversized(p):
    p.write_text(p.read_text() + " " * (1 << 21))


def _symlink(p):
    real = p.with_name("elsewhere")
    os.rename(p, real)
    os.symlink(real, p)


def _fifo(p):
    os.unlink(p)
    os.mkfifo(p)


@pytest.mark.parametrize("corrupt", [_garbage, _other_key, _count_out_of_range, _other_spelling, _trailing,
                                     _oversized, _symlink, _fifo])
def test_an_untrusted_entry_is_not_used(tmp_path, ptxas_count, corrupt):
    d = tmp_path / "jit"
    probe(d)
    (name,) = entry_files(d)
    corrupt(d / name)
    got = probe(d)
    assert got["stats"] == dict(compiles=1, hits=0, refused=1)
    assert got["regs"]["exact"] == ptxas_count
    assert probe(d)["stats"] == dict(compiles=0, hits=1, refused=0)  # the entry was written again


def test_a_directory_others_can_write_is_not_used(tmp_path, ptxas_count):
    d = tmp_path / "jit"
    probe(d)
    (name,) = entry_files(d)
    _wrong_count(d / name)
    assert probe(d)["regs"]["exact"] == 7  # the entry is what a trusted directory serves
    os.chmod(d, 0o777)
    got = probe(d)
    assert got["stats"] == dict(compiles=1, hits=0, refused=0) and got["regs"]["exact"] == ptxas_count
    os.chmod(d, 0o700)


def test_a_linked_directory_is_not_used(tmp_path, ptxas_count):
    real = tmp_path / "real"
    probe(real)
    os.symlink(real, tmp_path / "link")
    for path in (tmp_path / "link", str(tmp_path / "link") + "/"):
        got = probe(tmp_path, CYBN_SOFTGPU_JIT_CACHE=str(path))
        assert got["stats"] == dict(compiles=1, hits=0, refused=0) and got["regs"]["exact"] == ptxas_count
