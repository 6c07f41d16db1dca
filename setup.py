"""Build: the Cython extensions in cybn/'s layer subpackages and the software GPU
(src/softgpu -> cybn/_softgpu/libcuda.so.1); the .cu kernels are package data in cybn/kernels/."""
import glob
import os
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_include_dir():
    """cuda.h from the nvidia-cuda-runtime wheel of the build environment, never a system CUDA."""
    import importlib.util
    for mod in ("nvidia.cu13", "nvidia.cuda_runtime", "nvidia"):
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for base in spec.submodule_search_locations:
            for cand in (os.path.join(base, "include"), os.path.join(base, "cu13", "include"),
                         os.path.join(base, "cuda_runtime", "include")):
                if os.path.exists(os.path.join(cand, "cuda.h")):
                    return cand
    raise RuntimeError("cuda.h not found: the build needs the nvidia-cuda-runtime wheel (see pyproject.toml)")


class BuildExt(build_ext):
    """Also builds the software GPU shared library with soname libcuda.so.1."""

    def run(self):
        if wanted("softgpu"):
            self.build_softgpu()
        super().run()

    def softgpu_target(self):
        if self.inplace:
            return os.path.join(HERE, "cybn", "_softgpu", "libcuda.so.1")
        return os.path.join(self.build_lib, "cybn", "_softgpu", "libcuda.so.1")

    def build_softgpu(self):
        sources = sorted(glob.glob(os.path.join(HERE, "src", "softgpu", "*.cpp")))
        if not sources:
            return
        target = self.softgpu_target()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        headers = glob.glob(os.path.join(HERE, "src", "softgpu", "*.h*"))
        newest = max(os.path.getmtime(p) for p in sources + headers)
        if os.path.exists(target) and os.path.getmtime(target) >= newest and not self.force:
            return
        cxx = os.environ.get("CXX", "g++")
        objdir = os.path.join(self.build_temp, "softgpu")
        os.makedirs(objdir, exist_ok=True)
        inc = cuda_include_dir()
        flags = ["-std=c++17", "-O2", "-g0", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-unused-function",
                 "-I", inc, "-I", os.path.join(HERE, "src", "softgpu")]
        flags += os.environ.get("SOFTGPU_CXXFLAGS", "").split()
        # Two cores on the CI machines: compile the translation units in parallel.
        procs, objs = [], []
        for src in sources:
            obj = os.path.join(objdir, os.path.basename(src) + ".o")
            objs.append(obj)
            procs.append((src, subprocess.Popen([cxx, *flags, "-c", src, "-o", obj])))
            if len(procs) >= (os.cpu_count() or 2):
                self._wait(procs)
        self._wait(procs)
        subprocess.check_call([cxx, "-shared", "-o", target, *objs, "-Wl,-soname,libcuda.so.1",
                               "-Wl,--exclude-libs,ALL", "-lpthread", "-ldl"])

    @staticmethod
    def _wait(procs):
        failed = [src for src, p in procs if p.wait() != 0]
        procs.clear()
        if failed:
            raise RuntimeError("software GPU: compiling failed: " + ", ".join(failed))


def wanted(name):
    """CYBN_BUILD_ONLY=stream,event,softgpu limits a development build to those parts (the extensions'
    last name: stream is cybn.driver.stream)."""
    only = os.environ.get("CYBN_BUILD_ONLY")
    return not only or name in only.split(",")


def extensions():
    import numpy
    exts = []
    for pyx in sorted(glob.glob(os.path.join("cybn", "*", "*.pyx"))):
        name = os.path.splitext(pyx)[0].replace(os.sep, ".")
        if not wanted(name.split(".")[-1]):
            continue
        exts.append(Extension(name, [pyx], include_dirs=[numpy.get_include(), os.path.join("cybn", "include"), os.path.join("cybn", "kernels"),
                                                             cuda_include_dir()],
                              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]))
    if not exts:
        return []
    from Cython.Build import cythonize
    return cythonize(exts, language_level=3, nthreads=os.cpu_count() or 1,
                     compiler_directives={"embedsignature": True})


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
