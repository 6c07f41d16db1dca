"""cybn.nvrtc: PTX and CUBIN output, name expressions, compile errors, the wheels' CUDA headers."""
import os
import re
import struct

import pytest

from cybn import nvrtc, paths
from cybn.errors import CompileError
from nvrtc_helpers import last_json, run_py

SRC = r"""
#include <cuda_fp16.h>
template <typename T, int N>
__global__ void k(T* x) { x[threadIdx.x] = T(N); }

extern "C" __global__ void plain(float* x, const __half* h) { x[0] = __half2float(h[0]) * 2.0f; }
"""


def ptx_entries(ptx):
    return set(re.findall(r"\.entry\s+([A-Za-z0-9_$]+)\s*\(", ptx))


def test_ptx_for_the_software_gpu():
    img = nvrtc.compile(SRC, "k.cu", name_expressions=["k<float, 4>", "k<int, 7>"])
    assert img.kind == "ptx" and img.arch == "compute_80" and img.name == "k.cu"
    assert img.image.endswith(b"\0")  # cuModuleLoadData needs NUL-terminated PTX
    ptx = img.image[:-1].decode()
    assert re.search(r"^\.target sm_80$", ptx, re.M)
    assert re.search(r"^\.version 9\.\d+$", ptx, re.M)
    # Itanium mangling, written out by hand: _Z 1k I <f|i> L i <N> E E v P T_
    assert img.lowered == {"k<float, 4>": "_Z1kIfLi4EEvPT_", "k<int, 7>": "_Z1kIiLi7EEvPT_"}
    assert ptx_entries(ptx) == {"_Z1kIfLi4EEvPT_", "_Z1kIiLi7EEvPT_", "plain"}
    assert img.symbol("k<int, 7>") == "_Z1kIiLi7EEvPT_" and img.symbol("plain") == "plain"


@pytest.mark.parametrize("sm", [75, 86, 90])
def test_cubin_for_a_real_device(sm):
    img = nvrtc.compile(SRC, "k.cu", name_expressions=["k<float, 4>"], target="cubin", arch=f"sm_{sm}")
    elf = img.image
    assert img.kind == "cubin"
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit ELF
    assert struct.unpack_from("<H", elf, 18)[0] == 190  # e_machine EM_CUDA
    assert (struct.unpack_from("<I", elf, 48)[0] >> 8) & 0xFF == sm  # e_flags carry the SM number
    assert b"_Z1kIfLi4EEvPT_" in elf and b"plain" in elf


def test_compile_error_names_file_and_line():
    bad = "extern \"C\" __global__ void f(float* x) {\n    x[0] = 1.0f;\n    int y = ;\n}\n"
    with pytest.raises(CompileError) as info:
        nvrtc.compile(bad, "broken_kernel.cu")
    err = info.value
    assert err.name == "broken_kernel.cu"
    assert re.search(r"broken_kernel\.cu\(3\): error", err.log), err.log
    assert "broken_kernel.cu(3)" in str(err)


def test_unknown_name_expression_is_a_compile_error():
    with pytest.raises(CompileError) as info:
        nvrtc.compile(SRC, "k.cu", name_expressions=["no_such_kernel<float>"])
    assert "no_such_kernel" in str(info.value)


def test_in_memory_headers_and_options():
    src = '#include "consts.h"\nextern "C" __global__ void f(float* x) { x[0] = SCALE * OFFSET; }\n'
    img = nvrtc.compile(src, "f.cu", options=["-DOFFSET=3.0f"], headers={"consts.h": "#define SCALE 2.0f\n"})
    ptx = img.image.decode(errors="replace")
    # 6.0f (bits 0x40C00000) folded from the header's SCALE and the -D option
    assert re.search(r"mov\.[bfu]32\s+%[rf]\d+,\s*(1086324736|0f40C00000);", ptx), ptx
    with pytest.raises(CompileError):
        nvrtc.compile(src, "f.cu")  # without the header it really doesn't compile


def test_bad_requests_raise_before_compiling():
    before = nvrtc.compile_count()
    with pytest.raises(ValueError, match="target"):
        nvrtc.compile(SRC, "k.cu", target="fatbin")
    with pytest.raises(ValueError, match="real architecture"):
        nvrtc.compile(SRC, "k.cu", target="cubin", arch="compute_80")
    with pytest.raises(ValueError, match="arch"):
        nvrtc.compile(SRC, "k.cu", arch="sm80")
    with pytest.raises(ValueError, match="not supported"):
        nvrtc.compile(SRC, "k.cu", arch="sm_20")
    with pytest.raises(ValueError, match="arch="):
        nvrtc.compile(SRC, "k.cu", options=["--gpu-architecture=sm_70"])
    with pytest.raises(TypeError, match="options"):
        nvrtc.compile(SRC, "k.cu", options="-DX=1")
    with pytest.raises(TypeError, match="name_expressions"):
        nvrtc.compile(SRC, "k.cu", name_expressions=[b"k<float, 4>"])
    with pytest.raises(TypeError, match="headers"):
        nvrtc.compile(SRC, "k.cu", headers={"a.h": 3})
    with pytest.raises(TypeError, match="source"):
        nvrtc.compile(SRC.encode(), "k.cu")
    assert nvrtc.compile_count() == before


def test_compile_count_counts_nvrtc_runs():
    before = nvrtc.compile_count()
    nvrtc.compile(SRC, "k.cu")
    nvrtc.compile(SRC, "k.cu")
    assert nvrtc.compile_count() == before + 2


def test_version_and_supported_archs():
    major, minor = nvrtc.version()
    assert major >= 12 and minor >= 0
    archs = nvrtc.supported_archs()
    assert archs == sorted(archs) and 80 in archs and all(isinstance(a, int) for a in archs)


def _is_system_cuda(path):
    real = os.path.realpath(path)
    return real.startswith("/usr/local/cuda") or real.startswith("/opt/cuda") or real.startswith("/usr/include")


def test_headers_come_from_the_wheel_not_a_system_cuda():
    dirs = nvrtc.include_dirs()
    assert dirs
    for d in dirs:
        assert not _is_system_cuda(d)
        assert "site-packages" in d.split(os.sep) or "dist-packages" in d.split(os.sep)
        assert os.path.isfile(os.path.join(d, "cuda_fp16.h"))
    # The same directory cuda.pathfinder finds in the installed wheels.
    from cuda.pathfinder import locate_nvidia_header_directory
    located = locate_nvidia_header_directory("cudart")
    assert located.found_via == "site-packages"
    assert os.path.realpath(located.abs_path) == dirs[0]


def test_a_system_cuda_is_never_picked_up(tmp_path):
    """With CUDA_HOME/CUDA_PATH pointing at a system CUDA, the include dirs, the effective options and the
    NVRTC library actually loaded all stay inside the Python environment."""
    proc = run_py("""
        import json, os
        from cybn import nvrtc, nvrtc_options
        img = nvrtc.compile('#include <cuda_fp16.h>\\nextern "C" __global__ void f(__half* h) { h[0] = __float2half(1.0f); }', "f.cu")
        maps = open("/proc/self/maps").read()
        libs = sorted({l.split()[-1] for l in maps.splitlines() if "libnvrtc" in l})
        print(json.dumps(dict(dirs=nvrtc.include_dirs(), opts=nvrtc_options.effective_options((), "compute_80"),
                              libs=libs)))
    """, env={"CUDA_HOME": "/usr/local/cuda-13.0", "CUDA_PATH": "/usr/local/cuda-13.0"})
    out = last_json(proc)
    assert out["libs"], "libnvrtc not loaded?"
    for path in out["dirs"] + out["libs"]:
        assert not _is_system_cuda(path), path
    for opt in out["opts"]:
        assert "/usr/local/cuda" not in opt
    wheel = paths.nvrtc_library()
    assert wheel is not None and os.path.realpath(wheel[0]) in out["libs"]


def test_kernel_dir_is_on_the_include_path(kernel_dir):
    (kernel_dir / "common_test.cuh").write_text("#define FROM_KERNEL_DIR 5\n")
    src = '#include "common_test.cuh"\nextern "C" __global__ void f(int* x) { x[0] = FROM_KERNEL_DIR; }\n'
    img = nvrtc.compile(src, "f.cu")
    assert re.search(r"mov\.[bu]32\s+%r\d+,\s*5;", img.image.decode()), img.image.decode()


def test_threads_compile_in_parallel_without_interference():
    from concurrent.futures import ThreadPoolExecutor
    srcs = [f'extern "C" __global__ void f{i}(int* x) {{ x[0] = {i}; }}\n' for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        imgs = list(pool.map(lambda s: nvrtc.compile(s, "t.cu"), srcs))
    for i, img in enumerate(imgs):
        assert ptx_entries(img.image.decode()) == {f"f{i}"}


def test_nvrtc_works_with_the_software_gpu_loaded():
    """NVRTC dlopen()s libcuda.so.1 while compiling; with the software GPU as libcuda it must still work
    (it needs cuGetExportTable to exist)."""
    proc = run_py("""
        import json
        from cybn import softgpu
        softgpu.load()
        from cybn import nvrtc
        img = nvrtc.compile('extern "C" __global__ void f(float* x) { x[0] = 1.0f; }', "f.cu")
        print(json.dumps(dict(active=softgpu.active(), ptx=img.image.decode(errors="replace"))))
    """, check=False)
    assert proc.returncode == 0, proc.stderr
    out = last_json(proc)
    assert out["active"] and ".entry f(" in out["ptx"]


def test_target_for_a_device():
    from cybn.nvrtc_options import target_for
    supported = nvrtc.supported_archs()
    assert target_for((8, 0), software=True) == ("ptx", "compute_80")
    assert target_for((8, 6)) == ("cubin", "sm_86")
    assert target_for((9, 0)) == ("cubin", "sm_90")
    assert target_for((8, 5)) == ("ptx", "compute_80")  # no sm_85: PTX of the newest arch below it
    newest = max(supported)
    assert target_for((99, 9)) == ("ptx", f"compute_{newest}")  # a future GPU JITs the newest PTX
    with pytest.raises(ValueError, match="older"):
        target_for((3, 5))
