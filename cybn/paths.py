"""Where cybn finds its kernels, the CUDA headers and NVRTC library from the wheels, and its disk cache.

Plain Python and cheap (no cuda.bindings, no cuda.pathfinder import): the warm kernel-cache path runs
through here in every process, and importing cuda.pathfinder alone costs ~60 ms. The CUDA headers and
NVRTC come ONLY from the installed NVIDIA wheels (nvidia-cuda-runtime, nvidia-cuda-nvrtc), never from a
system CUDA (CUDA_HOME, CUDA_PATH and /usr/local/cuda* are deliberately ignored)."""
import functools
import glob
import importlib.util
import os

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))

# Wheel layouts: CUDA 13 wheels install everything under nvidia/cu13; CUDA 12 wheels used one
# package per component.
_HEADER_PACKAGES = ("nvidia.cu13", "nvidia.cuda_runtime")
_NVRTC_PACKAGES = ("nvidia.cu13", "nvidia.cuda_nvrtc")


def package_dir():
    """The installed cybn package directory."""
    return _PKG_DIR


def kernel_dir():
    """The directory holding the .cu/.cuh kernel sources: cybn/kernels/ (package data)."""
    return os.path.join(_PKG_DIR, "kernels")


def _package_dirs(names):
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            yield from spec.submodule_search_locations


@functools.lru_cache(maxsize=None)
def _cuda_include_dirs():
    for base in _package_dirs(_HEADER_PACKAGES):
        inc = os.path.join(base, "include")
        if os.path.isfile(os.path.join(inc, "cuda_runtime.h")) and os.path.isfile(os.path.join(inc, "cuda_fp16.h")):
            return (os.path.realpath(inc),)
    # Another wheel layout: ask cuda.pathfinder (slow to import, hence not first), accepting only what it
    # found in site-packages - its later steps would fall back to CUDA_HOME and system installs.
    try:
        from cuda.pathfinder import locate_nvidia_header_directory
        found = locate_nvidia_header_directory("cudart")
    except Exception:
        found = None
    if found is not None and found.found_via == "site-packages" and found.abs_path:
        return (os.path.realpath(found.abs_path),)
    raise RuntimeError("the CUDA headers (cuda_runtime.h, cuda_fp16.h) were not found in the installed "
                       "Python packages: install the nvidia-cuda-runtime wheel (cybn never uses a system CUDA)")


def cuda_include_dirs():
    """The include directories of the nvidia-cuda-runtime wheel (a list; raises RuntimeError if absent)."""
    return list(_cuda_include_dirs())


@functools.lru_cache(maxsize=None)
def nvrtc_library():
    """(libnvrtc path, [libnvrtc-builtins paths]) from the nvidia-cuda-nvrtc wheel, or None if the wheel
    layout isn't found (cuda.bindings then finds NVRTC by its own search)."""
    for base in _package_dirs(_NVRTC_PACKAGES):
        libs = sorted(glob.glob(os.path.join(base, "lib", "libnvrtc.so.*")), key=len)
        if libs:
            builtins = sorted(glob.glob(os.path.join(base, "lib", "libnvrtc-builtins.so*")))
            return os.path.realpath(libs[0]), [os.path.realpath(b) for b in builtins]
    return None


def cache_dir():
    """The kernel disk-cache directory: $CYBN_CACHE_DIR, else $XDG_CACHE_HOME/cybn, else ~/.cache/cybn.
    Only the path: cybn.cache creates it (mode 0700) and checks who owns it before use."""
    explicit = os.environ.get("CYBN_CACHE_DIR")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are invalid and must be ignored
        return os.path.join(xdg, "cybn")
    return os.path.join(os.path.expanduser("~"), ".cache", "cybn")
