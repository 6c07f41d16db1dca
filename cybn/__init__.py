"""cybn: a low-level CUDA batch-normalisation engine (NVRTC kernels, Cython driver-API classes, a
PuzzleLib-compatible Module layer, and a software GPU for machines without one).

Importing cybn is cheap and touches no driver: names load on first use (PEP 562), so
`import cybn.softgpu` works before anything is compiled and the driver is chosen (cybn.backend) only
when the first device call happens."""
import importlib
import os

from cybn import _moved

_moved.install()  # the old import paths (cybn.stream, cybn.gpuarray, ...) of before the layer subpackages

__version__ = "0.1.0"

# public name -> submodule defining it
_EXPORTS = {
    "CudaError": "errors", "CompileError": "errors",
    "Device": "driver.device", "Context": "driver.device", "get_device": "driver.device",
    "device_count": "driver.device",
    "Stream": "driver.stream", "current_stream": "driver.stream",
    "Event": "driver.event",
    "DeviceBuffer": "driver.memory", "MemoryPool": "driver.memory", "PinnedBuffer": "driver.memory",
    "default_pool": "driver.memory",
    "Module": "driver.function", "Function": "driver.function",
    "GPUArray": "array.gpuarray", "to_gpu": "array.gpuarray", "empty": "array.gpuarray", "zeros": "array.gpuarray",
    "empty_like": "array.gpuarray", "zeros_like": "array.gpuarray", "from_dlpack": "array.gpuarray",
    "from_cuda_array_interface": "array.gpuarray",
    "get_function": "jit.functions",
}
# the layers' subpackages, the packages of the faces, and (cybn._moved) the old module names
_SUBMODULES = {"backend", "errors", "softgpu", "paths", "env", "driver", "jit", "kernels", "array", "batchnorm",
               "capi", "modules", "frameworks", "distributed", "testing"} | set(_moved.MOVED)
# short names of submodules: `cybn.mxnet` is cybn.frameworks.mxnet (cybn/mxnet.py makes `import cybn.mxnet` work)
_ALIASES = {"mxnet": "frameworks.mxnet", "paddle": "frameworks.paddle"}

__all__ = sorted(_EXPORTS) + ["get_include", "__version__"]
_EXPORTS["_C_API"] = "capi"  # the C API capsule (cybn/include/cybn.h's cybn_import()), not in __all__


def get_include():
    """The directory of cybn's C headers (cybn/include), for extensions that build against cybn."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def __getattr__(name):
    sub = _EXPORTS.get(name)
    if sub is not None:
        value = getattr(importlib.import_module(f"{__name__}.{sub}"), name)
        globals()[name] = value
        return value
    if name in _ALIASES:
        return importlib.import_module(f"{__name__}.{_ALIASES[name]}")
    if name in _SUBMODULES:
        # `cybn.stream` is both the module and `with cybn.stream(s):` (the module is callable).
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cybn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES | set(_ALIASES))
