"""Chooses the CUDA driver once per process: the real libcuda.so.1 or cybn's software GPU.

CYBN_DEVICE=auto (default) | cuda | softgpu. This must run before the first cuda.bindings driver call:
cuda.bindings dlopen()s "libcuda.so.1" once and keeps whatever it found, so the software GPU has to be
loaded (RTLD_GLOBAL, same soname) before that happens."""
import ctypes
import sys
import threading

_lock = threading.Lock()
_name = None
CHOICES = ("auto", "cuda", "softgpu")


def _probe_real_driver():
    """(ok, reason): does the system's libcuda.so.1 load and report at least one device?"""
    try:
        lib = ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return False, f"libcuda.so.1 not loadable ({exc})"
    count = ctypes.c_int(0)
    rc = lib.cuInit(0)
    if rc == 0:
        rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc == 0 and count.value > 0:
        return True, f"{count.value} device(s)"
    # Unload it again so the software GPU's libcuda.so.1 is the one cuda.bindings finds by soname.
    import _ctypes
    _ctypes.dlclose(lib._handle)
    return False, f"libcuda.so.1 reports no device (cuInit/cuDeviceGetCount returned {rc})"


def _softgpu_already_loaded():
    try:
        from cybn import softgpu
    except ImportError:
        return False
    return bool(softgpu.active())


def _load_softgpu():
    from cybn import softgpu
    softgpu.load()


def init():
    """Select and load the driver (once; later calls are a cheap check). Returns name()."""
    global _name
    if _name is not None:
        return _name
    with _lock:
        if _name is not None:
            return _name
        from cybn import env
        mode = env.choice("CYBN_DEVICE", CHOICES, "auto")
        if _softgpu_already_loaded():
            # Someone (the test suite, a user) loaded the software GPU explicitly: it owns the soname now.
            if mode == "cuda":
                raise RuntimeError("CYBN_DEVICE=cuda, but the software GPU is already loaded in this process")
            _name = "softgpu"
            return _name
        if mode == "softgpu":
            _load_softgpu()
            _name = "softgpu"
            return _name
        ok, reason = _probe_real_driver()
        if ok:
            _name = "cuda"
        elif mode == "cuda":
            raise RuntimeError(f"CYBN_DEVICE=cuda, but no usable CUDA driver: {reason}")
        else:
            _load_softgpu()
            print(f"cybn: no CUDA device ({reason}); using the software GPU", file=sys.stderr)
            _name = "softgpu"
        return _name


def name():
    """"cuda" or "softgpu" (initialising on first use)."""
    return init()
