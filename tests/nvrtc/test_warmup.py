"""`python -m cybn warmup`: compiles every registered variant into the disk cache, reports each one, and
leaves exactly the entries a later launch looks up."""
import json
import re
import struct

import pytest

from cybn import cache, nvrtc, variants, warmup
from nvrtc_helpers import entries, last_json, run_py

KERNEL = r"""
#ifndef SCALE
#define SCALE 2
#endif
template <typename T>
__global__ void w(T* x) { x[threadIdx.x] *= T(SCALE); }
"""


@pytest.fixture
def registry(kernel_dir, monkeypatch):
    """An empty registry and no registering modules: each test registers its own kernels."""
    monkeypatch.setattr(variants, "_registry", {})
    monkeypatch.setattr(variants, "REGISTERING_MODULES", ())
    (kernel_dir / "w.cu").write_text(KERNEL)
    variants.register_variants("w.cu", [(["w<float>", "w<int>"], ()), (["w<double>"], ("-DSCALE=3",))])
    return kernel_dir


def test_warmup_compiles_and_reports_every_variant(registry, cache_dir, capsys):
    before = nvrtc.compile_count()
    assert warmup.main(["--arch", "compute_80"]) == 0
    out, err = capsys.readouterr()
    assert nvrtc.compile_count() == before + 2  # one NVRTC run per (file, options)
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for expr in ("w<float>", "w<int>", "w<double>"):
        assert any(re.match(rf"compute_80\s+ptx\s+w\.cu {re.escape(expr)}(  \[.*\])?: compiled", l) for l in lines), out
    assert "[-DSCALE=3]" in [l for l in lines if "w<double>" in l][0]
    assert "\r" not in err and "warmup 2/2 " in err  # not a terminal: plain progress lines, no bar
    assert len(entries(cache_dir)) == 2
    # The entries are exactly what a launch of one variant looks up (cybn.kernels -> compile_kernel).
    cache.clear_memory()
    img = cache.compile_kernel("w.cu", ["w<int>"], (), "ptx", "compute_80")
    assert cache.last_outcome() == "disk" and nvrtc.compile_count() == before + 2
    assert img.lowered["w<int>"] == "_Z1wIiEvPT_"
    # A second warmup in a fresh memo finds everything on disk.
    cache.clear_memory()
    assert warmup.main(["--arch", "compute_80"]) == 0
    out, _ = capsys.readouterr()
    assert nvrtc.compile_count() == before + 2
    assert out.count(": cached") == 3 and ": compiled" not in out


def test_warmup_for_a_named_real_arch_builds_cubin(registry, cache_dir, capsys):
    assert warmup.main(["--arch", "sm_86"]) == 0
    out, _ = capsys.readouterr()
    assert out.count("sm_86") == 3 and "cubin" in out
    cache.clear_memory()
    img = cache.compile_kernel("w.cu", (), ("-DSCALE=3",), "cubin", "sm_86")
    assert cache.last_outcome() == "disk"
    assert img.image[:4] == b"\x7fELF" and (struct.unpack_from("<I", img.image, 48)[0] >> 8) & 0xFF == 86


def test_a_failing_variant_fails_warmup_but_not_the_others(registry, cache_dir, capsys):
    (registry / "bad.cu").write_text('extern "C" __global__ void b(float* x) {\n  x[0] = undefined_name;\n}\n')
    variants.register_variants("bad.cu", [(["b"], ())])
    assert warmup.main(["--arch", "compute_80"]) == 1
    out, err = capsys.readouterr()
    assert "bad.cu b: FAILED" in out and "bad.cu(2): error" in err
    assert out.count(": compiled") == 3 and len(entries(cache_dir)) == 2


def test_bad_arguments(registry, capsys):
    for argv in (["--arch", "gfx90a"], ["--jobs", "0"], ["--bogus"]):
        with pytest.raises(SystemExit) as info:
            warmup.main(argv)
        assert info.value.code == 2
    assert "gfx90a" in capsys.readouterr().err


def test_register_variants_validates():
    with pytest.raises(ValueError, match="kernel file name"):
        variants.register_variants("dir/x.cu", [(["k"], ())])
    with pytest.raises(TypeError, match="pair"):
        variants.register_variants("x.cu", [["k"]])
    with pytest.raises(ValueError, match="no name expressions"):
        variants.register_variants("x.cu", [([], ())])
    with pytest.raises(TypeError, match="options"):
        variants.register_variants("x.cu", [(["k"], "-DX")])
    with pytest.raises(ValueError, match="arch="):
        variants.register_variants("x.cu", [(["k"], ("-arch=sm_80",))])
    assert variants.expressions_for("x.cu") == ()  # nothing half-registered


def test_python_m_cybn_warmup_on_the_real_registry(cache_dir):
    """End to end in a fresh process, on whatever cybn registers (elementwise, batchnorm)."""
    listing = last_json(run_py("""
        import json
        from cybn import variants
        missing = variants.load_all()
        print(json.dumps(dict(missing=missing, programs=variants.programs())))
    """))
    assert listing["missing"] == [], "a registering module is not built"
    proc = run_py("import sys\nfrom cybn.warmup import main\nsys.exit(main(['--arch', 'compute_80']))")
    for src, options, names in listing["programs"]:
        for name in names:
            assert re.search(rf"^compute_80\s+ptx\s+{re.escape(src)} {re.escape(name)}(  \[.*\])?: compiled", proc.stdout,
                             re.M), (name, proc.stdout)
    assert len(entries(cache_dir)) == len(listing["programs"])
    # `python -m cybn warmup` (the documented command) with no --arch targets the current device: here
    # the software GPU, so PTX for compute_80 - all of it already in the cache.
    again = run_py("import runpy, sys\nsys.argv = ['cybn', 'warmup']\nrunpy.run_module('cybn', run_name='__main__')",
                   env={"CYBN_DEVICE": "softgpu"}, check=False)
    assert again.returncode == 0, again.stderr
    assert ": compiled" not in again.stdout
    assert again.stdout.count(": cached") == sum(len(p[2]) for p in listing["programs"])
    assert "compute_80" in again.stdout


def test_all_archs(registry, cache_dir, capsys):
    assert warmup.main(["--all-archs"]) == 0
    out, _ = capsys.readouterr()
    archs = ["compute_80"] + [f"sm_{a}" for a in nvrtc.supported_archs()]
    for arch in archs:
        assert sum(1 for l in out.splitlines() if l.startswith(arch + " ")) == 3, (arch, out)
    assert len(entries(cache_dir)) == 2 * len(archs)
