"""The .cu/.cuh kernel sources (package data, compiled at run time by cybn.jit).

`cybn.kernels.get_function(...)` (and get_module, loaded_modules, target) was the old module cybn/kernels.py,
now cybn.jit.functions: its names are re-exported here, loaded on first use so that finding the sources
imports nothing."""

_MOVED = ("get_function", "get_module", "loaded_modules", "target")


def __getattr__(name):
    if name in _MOVED:
        from cybn.jit import functions
        return getattr(functions, name)
    raise AttributeError(f"module 'cybn.kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MOVED))
