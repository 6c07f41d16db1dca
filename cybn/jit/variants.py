"""The registry of kernel variants: every (kernel file, options, name expression) cybn may launch, so
`python -m cybn warmup` can compile them all ahead of time and the build check can compile each for
every real architecture.

How to register (at import time of the module that launches the kernels, e.g. cybn/batchnorm/prepared.pxi):

    from cybn.jit.variants import register_variants
    register_variants("batchnorm.cu", [
        (["bn_forward<float, 4>", "bn_forward<__half, 4>"], ()),      # (name expressions, options)
        (["bn_forward<float, 8>"], ("-DBN_BLOCK=512",)),
        (["bn_stats"], ()),                                             # extern "C" kernels work too
    ])

Launch them through cybn.kernels (which compiles via cybn.cache.compile_kernel): a file is compiled
once per (options, target, arch) with ALL the name expressions registered for that file and those
options, so warmup and the running program share one cache entry. Registering the same thing twice is
harmless. warmup imports the modules listed in REGISTERING_MODULES to collect the registrations."""
import threading

from . import nvrtc_options

# Modules whose import registers variants; warmup imports each (skipping only those not written yet).
REGISTERING_MODULES = ("cybn.array.elementwise", "cybn.batchnorm")

_lock = threading.Lock()
_registry = {}  # (source file name, options tuple) -> {name expression: None} (insertion-ordered set)


def register_variants(source, variants):
    """Declare the variants of kernel file `source` (a file name in the kernel directory, e.g.
    "batchnorm.cu"): `variants` is a list of (name_expressions, options) pairs, each a sequence of str."""
    if not isinstance(source, str) or not source.endswith((".cu", ".cuh")) or "/" in source:
        raise ValueError(f"source must be a kernel file name like 'batchnorm.cu', got {source!r}")
    checked = []
    for i, entry in enumerate(variants):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"variant {i} of {source}: expected a (name_expressions, options) pair, got {entry!r}")
        options, names = nvrtc_options.check_request(entry[1], entry[0], "ptx", "compute_80")
        if not names:
            raise ValueError(f"variant {i} of {source}: no name expressions given")
        checked.append((options, names))
    with _lock:  # all or nothing: a bad entry above registered none of them
        for options, names in checked:
            _registry.setdefault((source, options), {}).update(dict.fromkeys(names))


def expressions_for(source, options=()):
    """The name expressions registered for kernel file `source` compiled with `options` (a tuple)."""
    with _lock:
        return tuple(_registry.get((source, tuple(options)), ()))


def programs():
    """Every registered program: a sorted list of (source file name, options, name expressions)."""
    with _lock:
        return sorted((src, opts, tuple(names)) for (src, opts), names in _registry.items())


def load_all():
    """Import the registering modules. Returns the names that don't exist yet (only a missing module of
    exactly that name is tolerated: any other import failure is a bug and propagates)."""
    import importlib
    missing = []
    for mod in REGISTERING_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            missing.append(mod)
    return missing
