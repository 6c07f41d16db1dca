"""The import paths of before the package was split by layer (cybn.stream, cybn.gpuarray, cybn.cache, ...).

`import cybn.stream` gives the very module object cybn.driver.stream (not a copy), so monkeypatching,
isinstance checks and `with cybn.stream(s):` behave exactly as before. A meta-path finder instead of one
shim file per old name keeps the top of the package to the layers."""
import importlib
import importlib.abc
import importlib.machinery
import sys

# old submodule of cybn -> its home now (cybn.batchnorm, cybn.capi and cybn.kernels are packages that
# re-export their old names themselves)
MOVED = {
    "status": "driver.status", "device": "driver.device", "stream": "driver.stream", "event": "driver.event",
    "memory": "driver.memory", "module": "driver.function",
    "nvrtc": "jit.nvrtc", "nvrtc_options": "jit.nvrtc_options", "includes": "jit.includes", "cache": "jit.cache",
    "diskcache": "jit.diskcache", "variants": "jit.variants", "warmup": "jit.warmup", "image": "jit.image",
    "gpuarray": "array.gpuarray", "elementwise": "array.elementwise",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # module_from_spec pointed the module's __spec__ at the alias: give it back its own.
        module.__spec__ = module.__spec__.loader_state


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        parent, _, leaf = fullname.rpartition(".")
        if parent != __package__ or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(f"{__package__}.{MOVED[leaf]}"))


def install():
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
