"""The real-GPU build check: every kernel file, with every registered variant instantiated, compiles to
CUBIN for the lowest architecture of each major version the installed NVRTC supports (sm_75, sm_80, sm_90,
sm_100, sm_110, sm_120 with NVRTC 13), without errors and without register spills (ptxas -v report); and the
fused NCHW forward-train and backward kernels stay within their register ceilings on sm_80 and sm_90
(FUSED_REGISTERS, from register_table.py). The sm_80 and sm_90 builds go through the session's kernel cache (its entries keep NVRTC's
log), so the programs the model and register tests compiled for them (tests/kernel_prewarm.py builds them
up front in a full run) are not compiled twice.

Until 2026-12-03 every newer architecture was built (11 in all with NVRTC 13.5): the check dominated CI's
time (17 programs x 11 architectures, 6-9 s of ptxas each for batchnorm.cu on 2 cores). Then one per newer
family (sm_100 for 100/103/107, sm_120 for 120/121, as NVIDIA's family targets sm_100f/sm_120f group them)
besides sm_75/80/86/89/90; later that day one per major version, so sm_86 and sm_89 went too: they share
sm_80's instruction set and register file, and were a quarter of the check's time."""
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from cybn import cache, nvrtc, paths, variants
from cybn.testing.cubin_report import ptxas_report

import register_table

# FUSED_REGISTERS' architectures: always built, and through the kernel cache (cybn.testing.cubin_report's
# builds too); the rest directly
SHARED_ARCHS = (80, 90)

# The fused NCHW kernels' register ceilings per (arch, kernel, data type, EPI): register_table.py (shared with
# test_span_registers, which holds the base program to them exactly).
FUSED_REGISTERS = register_table.fused_ceilings()
REGISTER_AIM = register_table.REGISTER_AIM


def fused_kernel(expr):
    """(kernel, data type, EPI) of a batchnorm.cu name expression of a fused NCHW kernel, else None."""
    m = re.fullmatch(r"(bn_fwd_train|bn_bwd)_spatial<([\w ]+?)(?:, (\d))?>", expr)
    return (m.group(1), m.group(2), int(m.group(3) or 0)) if m else None


def test_fused_kernel_names_are_parsed():
    assert fused_kernel("bn_bwd_spatial<__half>") == ("bn_bwd", "__half", 0)
    assert fused_kernel("bn_fwd_train_spatial<double, 1>") == ("bn_fwd_train", "double", 1)
    assert fused_kernel("bn_bwd_dx_spatial<float>") is None and fused_kernel("bn_bwd_pa<float>") is None
    assert all(r >= REGISTER_AIM for r in FUSED_REGISTERS.values())


def spill_report(log):
    """{function: (spill store bytes, spill load bytes)} from ptxas' -v output in an NVRTC log."""
    report, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            report[current] = (int(m.group(1)), int(m.group(2)))
            current = None
    return report


def test_spill_report_parser():
    log = """ptxas info    : Compiling entry function 'good' for 'sm_86'
ptxas info    : Function properties for good
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z3badIfEvPT_' for 'sm_86'
ptxas info    : Function properties for _Z3badIfEvPT_
ptxas         .     64 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads
"""
    assert spill_report(log) == {"good": (0, 0), "_Z3badIfEvPT_": (24, 16)}


def test_a_spilling_kernel_is_caught():
    """The check would see a real spill: a kernel that needs more registers than -maxrregcount allows."""
    src = r"""
extern "C" __global__ void heavy(const float* in, float* out) {
    float acc[64];
    #pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = in[threadIdx.x + i * 32] * (i + 1);
    float s = 0;
    #pragma unroll
    for (int i = 0; i < 64; ++i) s += acc[i] * acc[63 - i];
    #pragma unroll
    for (int i = 0; i < 64; ++i) out[threadIdx.x + i * 32] = acc[i] * s;
}
"""
    img = nvrtc.compile(src, "heavy.cu", ("--ptxas-options=-v", "--maxrregcount=16"), target="cubin", arch="sm_80")
    stores, loads = spill_report(img.log)["heavy"]
    assert stores > 0 and loads > 0


def architectures(supported=None):
    """The lowest supported architecture of each major version, and sm_80 and sm_90 in any case."""
    supported = nvrtc.supported_archs() if supported is None else supported
    lowest = {}
    for a in sorted(supported):
        lowest.setdefault(a // 10, a)
    return sorted(set(lowest.values()) | set(SHARED_ARCHS))


def test_one_architecture_per_major_version():
    assert architectures([75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121]) == [75, 80, 90, 100, 110, 120]
    assert architectures([75, 80, 86, 89, 90]) == [75, 80, 90]
    assert architectures([86, 89, 90, 103, 121]) == [80, 86, 90, 103, 121]


def programs():
    """(file, options, name expressions) for every kernel file: each registered variant group, and the
    plain file for kernel files nothing registers (their extern "C" kernels)."""
    missing = variants.load_all()
    assert not missing, f"modules that register kernel variants are not built: {missing}"
    registered = variants.programs()
    kdir = paths.kernel_dir()
    files = sorted(f for f in os.listdir(kdir) if f.endswith(".cu"))
    for src, _, _ in registered:
        assert src in files, f"{src} is registered but not in {kdir}"
    used = {src for src, _, _ in registered}
    return registered + [(f, (), ()) for f in files if f not in used]


@pytest.fixture
def cache_dir():
    """This module builds through the session's kernel cache (tests/conftest.py), not the private one the
    other NVRTC tests get (tests/nvrtc/conftest.py): so its sm_80/sm_90 builds are the ones the model and
    register tests made (tests/kernel_prewarm.py builds them up front in a full run)."""
    yield None


def test_every_kernel_compiles_to_cubin_without_spills():
    progs = programs()
    assert progs, "no kernel files found"
    jobs = [(arch, prog) for arch in architectures() for prog in progs]

    def build(job):
        arch, (src, options, names) = job
        text, name, directory = cache.resolve_source(src)
        opts = options + ("--ptxas-options=-v",)
        if arch in SHARED_ARCHS:  # the model's and the register tests' architectures: maybe compiled already
            return job, cache.compile_cached(text, name, opts, names, "cubin", f"sm_{arch}", source_dir=directory)
        return job, nvrtc.compile(text, name, opts, None, names, "cubin", f"sm_{arch}")

    problems, seen = [], set()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # NVRTC runs without the GIL
        for (arch, (src, options, names)), img in pool.map(build, jobs):
            report = spill_report(img.log)
            where = f"{src} {' '.join(options)} sm_{arch}"
            for expr in names:  # each registered variant really went through ptxas for this arch
                if img.lowered[expr] not in report:
                    problems.append(f"{where}: {expr} ({img.lowered[expr]}) missing from the ptxas report")
            if not report:
                problems.append(f"{where}: no kernels compiled")
            regs = ptxas_report(img.log) if arch in SHARED_ARCHS and src == "batchnorm.cu" else {}
            for expr in names if regs else ():
                key = fused_kernel(expr)
                if key is None:
                    continue
                seen.add((arch,) + key)
                got, bound = regs[img.lowered[expr]]["registers"], FUSED_REGISTERS[(arch,) + key]
                if got > bound:
                    problems.append(f"{where}: {expr} uses {got} registers, above its ceiling {bound}")
            for fn, (stores, loads) in sorted(report.items()):
                if stores or loads:
                    problems.append(f"{where}: {fn} spills {stores} bytes stores / {loads} bytes loads")
    missing = sorted(set(FUSED_REGISTERS) - seen)
    assert not missing, f"fused kernels with a register ceiling that were not built: {missing}"
    assert not problems, "\n".join(problems)
