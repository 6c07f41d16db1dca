"""The kernel registry: (.cu file or inline source, kernel name, signature) -> a loaded, typed Function.

Compilation goes through cybn.cache.compile_kernel (in-process memo + disk cache, shared with
`python -m cybn warmup`): at most once per (source, options, target, arch) per process. The image is
loaded once per context and the Function is memoised, so a repeated get_function() is a dict lookup."""
import re
import threading

from cybn import backend
from cybn.driver import device
from cybn.jit import cache, nvrtc_options
from cybn.driver.function import Module

_lock = threading.Lock()
_functions = {}  # (context, source, name, signature, options, name_expressions) -> Function
_modules = {}    # (context, id(image)) -> (image, Module): the image is held so its id stays unique
_targets = {}    # device ordinal -> (target, arch)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def target():
    """(target, arch) kernels are compiled for on the calling thread's device: ("ptx", "compute_80") on
    the software GPU; CUBIN for a real device's sm_XY when NVRTC supports it, else PTX."""
    dev = device.get_device()
    t = _targets.get(dev.ordinal)
    if t is None:
        t = _targets[dev.ordinal] = nvrtc_options.target_for(dev.compute_capability,
                                                             software=backend.name() == "softgpu")
    return t


def get_function(source, name, signature, options=(), name_expressions=None):
    """The kernel `name` of `source` (a file in the kernel directory such as "elementwise.cu", or CUDA
    source text) as a Function taking arguments typed by `signature` (see cybn.module).

    `name` is an extern "C" kernel name or a name expression (a template instantiation such as
    "bn_forward<float, 4>", lowered through NVRTC). `options` are NVRTC options; `name_expressions`
    are extra expressions to compile into the same program."""
    ctx = device.current_context().handle
    options = tuple(options)
    exprs = tuple(name_expressions) if name_expressions else ()
    key = (ctx, source, name, signature, options, exprs)
    f = _functions.get(key)
    if f is None:
        with _lock:
            f = _functions.get(key)
            if f is None:
                f = _functions[key] = _load(ctx, source, name, signature, options, exprs)
    return f


def _load(ctx, source, name, signature, options, exprs):
    if not isinstance(name, str) or not name:
        raise TypeError(f"kernel name must be a non-empty str, got {name!r}")
    if not _IDENTIFIER.match(name) and name not in exprs:
        exprs += (name,)  # a template instantiation: NVRTC has to lower it to its mangled symbol
    img, module = _image_and_module(ctx, source, options, exprs)
    return module.function(img.symbol(name), signature, label=name)


def _image_and_module(ctx, source, options, exprs):
    tgt, arch = target()
    img = cache.compile_kernel(source, exprs, options, tgt, arch)
    entry = _modules.get((ctx, id(img)))
    if entry is None:
        entry = _modules[(ctx, id(img))] = (img, Module.from_image(img.image))
    return entry


def get_module(source, options=(), name_expressions=()):
    """(CompiledImage, Module): `source` compiled (or taken from the cache) and loaded in the current
    context, without looking up any kernel; e.g. to precompile, or to read .lowered names."""
    ctx = device.current_context().handle
    with _lock:
        return _image_and_module(ctx, source, tuple(options), tuple(name_expressions))


def loaded_modules():
    """How many (context, image) modules are loaded: lets tests check an image is loaded once."""
    return len(_modules)
