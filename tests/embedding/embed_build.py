"""Builds the tiny test extensions of tests/embedding/ext/ the way a user would: a C (or C++) compiler
with Python's, cybn's (cybn.get_include()) and the CUDA wheel's include dirs; Cython for the .pyx."""
import importlib.util
import os
import subprocess
import sys
import sysconfig

EXT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext")


def include_dirs():
    import cybn
    from cybn import paths
    return [sysconfig.get_paths()["include"], cybn.get_include(), *paths.cuda_include_dirs()]


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("build failed: %s\n%s%s" % (" ".join(cmd), proc.stdout, proc.stderr))


def compile_extension(sources, out_dir, name, cxx=False, includes=None, defines=(), strict=True):
    """Compiles sources into the extension module `name` in out_dir (-O0: build time, not speed)."""
    out = os.path.join(out_dir, name + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = os.environ.get("CXX", "c++") if cxx else os.environ.get("CC", "cc")
    flags = ["-shared", "-fPIC", "-O0", "-g0", "-Wall"] + (["-Wextra", "-Werror"] if strict else [])
    lang = ["-x", "c++"] if cxx else []
    cmd = [cc, *flags, *("-I" + d for d in (includes or include_dirs())), *("-D" + d for d in defines),
           *lang, *sources, *(["-x", "none"] if cxx else []), "-o", out, "-ldl"]
    _run(cmd)
    return out


def cythonize(pyx, out_dir):
    """The .pyx to C++ with cybn's .pxd files found like an installed package's (through sys.path)."""
    import cybn
    root = os.path.dirname(os.path.dirname(os.path.abspath(cybn.__file__)))
    cpp = os.path.join(out_dir, os.path.splitext(os.path.basename(pyx))[0] + ".cpp")
    _run([sys.executable, "-m", "cython", "-3", "--cplus", "-I", root, pyx, "-o", cpp])
    return cpp


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
