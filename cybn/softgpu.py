"""The software GPU: a libcuda.so.1 that runs PTX in an interpreter with memcheck, racecheck,
initcheck and streamcheck, and counts every kernel's traffic exactly.

Load it before anything touches ``cuda.bindings.driver``::

    from cybn import softgpu
    softgpu.load()                      # preloads cybn/_softgpu/libcuda.so.1 (or $CYBN_SOFTGPU_LIBRARY)
    with softgpu.measure() as m:
        ...                             # launches
    m.counters["total"]["global_load_bytes"]

Plain Python over ctypes: imports no other cybn module and not cuda.bindings.
"""
import contextlib
import ctypes
import json
import os

__all__ = [
    "library_path", "load", "active", "counters", "reset_counters", "measure", "Measurement",
    "checks", "set_checks", "checks_set", "seed", "set_seed", "get_seed", "fail_alloc_after",
    "alloc_budget", "fail_module_loads", "last_report", "live_allocations", "live_pinned_allocations",
    "PROFILES", "profile", "profile_info", "nvjitlink_path", "ptxas_path", "register_source", "function_registers",
    "jit_cache_stats", "sha256_hex",
    "set_function_registers",
    "async_mode", "set_async", "async_seed", "sticky", "pool_block",
]

_IDENTITY = 0x53475055  # softgpuIdentify(): "SGPU"
_MEMCHECK, _RACECHECK, _INITCHECK, _STREAMCHECK = 1, 2, 4, 8
_CHECKS = (("memcheck", _MEMCHECK), ("racecheck", _RACECHECK), ("initcheck", _INITCHECK),
           ("streamcheck", _STREAMCHECK))
_lib = None


def library_path():
    """The software GPU library: $CYBN_SOFTGPU_LIBRARY if set, else the packaged cybn/_softgpu/libcuda.so.1."""
    env = os.environ.get("CYBN_SOFTGPU_LIBRARY")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_softgpu", "libcuda.so.1")


def _loaded_libcuda_paths():
    """Paths of every libcuda.so* mapped into this process (from /proc/self/maps)."""
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith("libcuda.so"):
                    paths.add(parts[5].strip())
    except OSError:
        pass
    return paths


def _is_softgpu(path):
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL | os.RTLD_NOLOAD)
        ident = lib.softgpuIdentify
    except (OSError, AttributeError):
        return False
    ident.restype = ctypes.c_int
    return ident() == _IDENTITY


def load(path=None):
    """Preload the software GPU so cuda.bindings' dlopen("libcuda.so.1") finds it. Idempotent.

    Raises RuntimeError if a real CUDA driver is already loaded in this process (it would win),
    and FileNotFoundError if the library has not been built.
    """
    global _lib
    if _lib is not None:
        return _lib
    path = os.path.abspath(path or library_path())
    for other in _loaded_libcuda_paths():
        if not _is_softgpu(other):
            raise RuntimeError(
                "a real CUDA driver (%s) is already loaded in this process; the software GPU must be "
                "loaded before anything initialises CUDA (import cybn.softgpu and call load() first)" % other)
    if not os.path.exists(path) and os.environ.get("CYBN_SOFTGPU_LIBRARY") and path == os.path.abspath(library_path()):
        raise FileNotFoundError("software GPU library not found: CYBN_SOFTGPU_LIBRARY=%r does not exist (accepted: "
                                "the path of a built software GPU libcuda.so.1, or unset for the packaged one)"
                                % os.environ["CYBN_SOFTGPU_LIBRARY"])
    if not os.path.exists(path):
        raise FileNotFoundError(
            "software GPU library not found at %s: build it (pip install . builds src/softgpu into "
            "cybn/_softgpu/libcuda.so.1) or set CYBN_SOFTGPU_LIBRARY" % path)
    _configure_nvjitlink()
    _configure_ptxas()
    _configure_jit_cache()
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    try:
        ident = lib.softgpuIdentify
    except AttributeError:
        raise RuntimeError("%s is not the cybn software GPU (no softgpuIdentify)" % path) from None
    ident.restype = ctypes.c_int
    if ident() != _IDENTITY:
        raise RuntimeError("%s is not the cybn software GPU (softgpuIdentify mismatch)" % path)
    _declare(lib)
    if lib.softgpuProfileName() is None:  # a bad CYBN_SOFTGPU_PROFILE: refuse before anything runs
        raise ValueError(lib.softgpuProfileError().decode())
    _check_bindings_driver()
    _lib = lib
    return lib


def _check_bindings_driver():
    """If cuda.bindings already resolved a driver, it must be this one (it never reloads)."""
    import sys
    if "cuda.bindings.driver" not in sys.modules:
        return
    driver = sys.modules["cuda.bindings.driver"]
    err, name = driver.cuDeviceGetName(64, 0)
    if int(err) == 0 and not bytes(name).startswith(b"cybn software GPU"):
        raise RuntimeError("cuda.bindings is already initialised against another CUDA driver; "
                           "load the software GPU before first using cuda.bindings.driver")


def _declare(lib):
    u64, i64 = ctypes.c_ulonglong, ctypes.c_longlong
    sigs = {
        "softgpuCountersJSON": (ctypes.c_char_p, []),
        "softgpuResetCounters": (None, []),
        "softgpuGetChecks": (ctypes.c_uint, []),
        "softgpuSetChecks": (None, [ctypes.c_uint]),
        "softgpuSetSeed": (None, [u64]),
        "softgpuGetSeed": (u64, []),
        "softgpuFailAllocAfter": (None, [i64]),
        "softgpuSetAllocBudget": (None, [i64]),
        "softgpuFailModuleLoads": (None, [ctypes.c_int]),
        "softgpuLastReport": (ctypes.c_char_p, []),
        "softgpuLiveAllocations": (None, [ctypes.POINTER(u64), ctypes.POINTER(u64)]),
        "softgpuLivePinnedAllocations": (None, [ctypes.POINTER(u64), ctypes.POINTER(u64)]),
        "softgpuProfileName": (ctypes.c_char_p, []),
        "softgpuProfileError": (ctypes.c_char_p, []),
        "softgpuProfileJSON": (ctypes.c_char_p, []),
        "softgpuRegisterSource": (ctypes.c_char_p, []),
        "softgpuJitCacheStats": (None, [ctypes.POINTER(ctypes.c_int)]),
        "softgpuSha256Hex": (None, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]),
        "softgpuFunctionRegisters": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]),
        "softgpuSetFunctionRegisters": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
        "softgpuSetAsync": (ctypes.c_int, [ctypes.c_int]),
        "softgpuGetAsync": (ctypes.c_int, []),
        "softgpuSetAsyncSeed": (None, [u64]),
        "softgpuSetSticky": (ctypes.c_int, [ctypes.c_int]),
        "softgpuPoolBlock": (ctypes.c_int, [u64, u64, ctypes.c_void_p]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def active():
    """True if the software GPU has been loaded in this process."""
    return _lib is not None


def _need():
    if _lib is None:
        raise RuntimeError("the software GPU is not loaded: call cybn.softgpu.load() first")
    return _lib


# ---------------------------------------------------------------- counters
def counters():
    """All counters as a dict: total, per_kernel, launches (recent), memcpy, memset, live_allocations."""
    return json.loads(_need().softgpuCountersJSON().decode())


def reset_counters():
    _need().softgpuResetCounters()


def _diff(after, before):
    """after - before for nested dicts of numbers (missing keys in before count as zero)."""
    if isinstance(after, dict):
        before = before if isinstance(before, dict) else {}
        return {k: _diff(v, before.get(k)) for k, v in after.items()}
    if isinstance(after, (int, float)) and not isinstance(after, bool):
        return after - (before or 0)
    return after


class Measurement:
    """Counters over a `measure()` block, filled in when the block exits.

    counters: {"total", "per_kernel", "memcpy", "memset"} as differences; launches: the launch
    records made inside the block; plus shortcuts launches_count, instructions, load_bytes, store_bytes.
    """

    def __init__(self):
        self.counters = None
        self.launches = None

    @property
    def total(self):
        return self.counters["total"]

    @property
    def per_kernel(self):
        return self.counters["per_kernel"]

    @property
    def launches_count(self):
        return self.total["launches"]

    @property
    def instructions(self):
        return self.total["thread_instructions"]

    @property
    def load_bytes(self):
        return self.total["global_load_bytes"]

    @property
    def store_bytes(self):
        return self.total["global_store_bytes"]


@contextlib.contextmanager
def measure():
    """Context manager yielding a Measurement of the counters' change over the block."""
    before = counters()
    m = Measurement()
    try:
        yield m
    finally:
        after = counters()
        diff = {k: _diff(after[k], before.get(k)) for k in ("total", "memcpy", "memset")}
        # Kernels whose counts did not change are not part of the block.
        diff["per_kernel"] = {name: _diff(c, before["per_kernel"].get(name))
                              for name, c in after["per_kernel"].items()
                              if c["launches"] != before["per_kernel"].get(name, {}).get("launches", 0)}
        for name, c in diff["per_kernel"].items():  # kernel facts are values, not counts
            for fact in ("registers", "static_smem", "dynamic_smem"):
                c[fact] = after["per_kernel"][name][fact]
        n = diff["total"]["launches"]
        m.launches = after["launches"][-n:] if n else []  # the library keeps the last 4096
        m.counters = diff


# ---------------------------------------------------------------- checks and seed
def checks():
    """The enabled checks: {"memcheck": bool, "racecheck": bool, "initcheck": bool, "streamcheck": bool}."""
    mask = _need().softgpuGetChecks()
    return {name: bool(mask & bit) for name, bit in _CHECKS}


def set_checks(memcheck=None, racecheck=None, initcheck=None, streamcheck=None):
    """Turn checks on (True) or off (False); None leaves a check as it is. Returns the previous state."""
    previous = checks()
    state = dict(previous)
    wanted = {"memcheck": memcheck, "racecheck": racecheck, "initcheck": initcheck, "streamcheck": streamcheck}
    for name, value in wanted.items():
        if value is not None:
            if not isinstance(value, bool):
                raise TypeError("%s must be True, False or None, not %r" % (name, value))
            state[name] = value
    _need().softgpuSetChecks(sum(bit for name, bit in _CHECKS if state[name]))
    return previous


@contextlib.contextmanager
def checks_set(memcheck=None, racecheck=None, initcheck=None, streamcheck=None):
    """Context manager: set_checks(...) for the block, then restore the previous checks."""
    previous = set_checks(memcheck, racecheck, initcheck, streamcheck)
    try:
        yield
    finally:
        set_checks(**previous)


def _check_count(name, n, minimum):
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError("%s must be an integer >= %d, not %r" % (name, minimum, n))


def get_seed():
    return int(_need().softgpuGetSeed())


def set_seed(n):
    """Schedule seed: 0 = deterministic order; otherwise a randomised thread interleaving. Returns the old one."""
    _check_count("seed", n, 0)
    if n >= 1 << 64:
        raise ValueError("seed must fit in 64 bits, not %r" % n)
    previous = get_seed()
    _need().softgpuSetSeed(n)
    return previous


class _Restorer:
    """Return value of setters that also work as context managers (restore on exit)."""

    def __init__(self, restore):
        self._restore = restore

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


def seed(n):
    """Set the schedule seed; as a context manager, restores the previous seed on exit."""
    previous = set_seed(n)
    return _Restorer(lambda: set_seed(previous))


# ---------------------------------------------------------------- async and sticky modes
def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError("%s must be True or False, not %r" % (name, value))


def async_mode():
    """True when stream work runs on the software GPU's worker thread, asynchronously to the host."""
    return bool(_need().softgpuGetAsync())


def set_async(on):
    """Async mode on or off (CYBN_SOFTGPU_ASYNC=1 at start); switching off first waits for all queued work.
    Checks are left as they are (streamcheck is on by default only when the process starts async).
    Returns the previous mode; as a context manager, restores it on exit."""
    _check_bool("on", on)
    previous = bool(_need().softgpuSetAsync(int(on)))
    return _Restorer(lambda: _need().softgpuSetAsync(int(previous)))


def async_seed(n):
    """Async mode: 0 runs ready streams in creation order; otherwise a seeded random choice among the
    ready streams and random delays before each operation (CYBN_SOFTGPU_ASYNC_SEED)."""
    _check_count("seed", n, 0)
    if n >= 1 << 64:
        raise ValueError("seed must fit in 64 bits, not %r" % n)
    _need().softgpuSetAsyncSeed(n)


def sticky(on):
    """Sticky errors (CYBN_SOFTGPU_STICKY=1): after a kernel fault every later call on its context returns
    the error until cuDevicePrimaryCtxReset / cuCtxDestroy. Returns a restorer (context manager)."""
    _check_bool("on", on)
    previous = bool(_need().softgpuSetSticky(int(on)))
    return _Restorer(lambda: _need().softgpuSetSticky(int(previous)))


# ---------------------------------------------------------------- pool-aware memcheck
def pool_block(ptr, nbytes, stream=0):
    """Tell memcheck that the device allocation at `ptr` (a sub-allocator's block) now holds an array of
    `nbytes` (0: free in the pool), in order on `stream` (a CUstream int): accesses past it are reported
    like any out-of-bounds access. Raises ValueError when ptr does not start a device allocation of at
    least nbytes. cybn's MemoryPool calls this itself on the software GPU."""
    r = _need().softgpuPoolBlock(int(ptr), int(nbytes), int(stream) or None)
    if r:
        raise ValueError("softgpu.pool_block(%#x, %d): CUresult %d (not the start of a device allocation of "
                         "at least that many bytes, or no current context)" % (int(ptr), int(nbytes), r))


def _pool_block_function():
    """The raw C function for MemoryPool's hot path, or None when the software GPU is not loaded."""
    return _lib.softgpuPoolBlock if _lib is not None else None


# ---------------------------------------------------------------- fault injection
def fail_alloc_after(n):
    """Make the nth device allocation from now (n >= 1; 1 = the next) fail with CUDA_ERROR_OUT_OF_MEMORY.

    None disables. Usable as a context manager that disables it on exit.
    """
    if n is None:
        _need().softgpuFailAllocAfter(-1)
    else:
        _check_count("n", n, 1)
        _need().softgpuFailAllocAfter(n)
    return _Restorer(lambda: _need().softgpuFailAllocAfter(-1))


def alloc_budget(nbytes):
    """Device allocations that would take live device bytes past nbytes fail with OUT_OF_MEMORY.

    None disables. Usable as a context manager that disables it on exit.
    """
    if nbytes is None:
        _need().softgpuSetAllocBudget(-1)
    else:
        _check_count("nbytes", nbytes, 0)
        _need().softgpuSetAllocBudget(nbytes)
    return _Restorer(lambda: _need().softgpuSetAllocBudget(-1))


def fail_module_loads(n):
    """The next n module loads fail with CUDA_ERROR_INVALID_IMAGE (0 or None disables).

    Usable as a context manager that disables it on exit.
    """
    if n is None:
        n = 0
    _check_count("n", n, 0)
    _need().softgpuFailModuleLoads(n)
    return _Restorer(lambda: _need().softgpuFailModuleLoads(0))


# ---------------------------------------------------------------- reports and leaks
def last_report():
    """Text of the last launch or module-load failure ("" if none)."""
    return _need().softgpuLastReport().decode(errors="replace")


def live_allocations():
    """(count, bytes) of live user device allocations."""
    count, nbytes = ctypes.c_ulonglong(), ctypes.c_ulonglong()
    _need().softgpuLiveAllocations(ctypes.byref(count), ctypes.byref(nbytes))
    return count.value, nbytes.value


def live_pinned_allocations():
    """(count, bytes) of live pinned host allocations (cuMemAllocHost/cuMemHostAlloc/cuMemHostRegister)."""
    count, nbytes = ctypes.c_ulonglong(), ctypes.c_ulonglong()
    _need().softgpuLivePinnedAllocations(ctypes.byref(count), ctypes.byref(nbytes))
    return count.value, nbytes.value


# ---------------------------------------------------------------- device profile and registers
PROFILES = ("small", "a100", "h100", "h200", "l4", "t4", "rtx4090")  # CYBN_SOFTGPU_PROFILE values


def profile():
    """The active device profile's name (CYBN_SOFTGPU_PROFILE, fixed when the library first reads it)."""
    return _need().softgpuProfileName().decode()


def profile_info():
    """The active profile's numbers: compute capability, SMs, per-SM limits, allocation units, L2, clocks."""
    return json.loads(_need().softgpuProfileJSON().decode())


def _wheel_dirs(sub):
    """The nvidia/cu13/<sub> directories of NVIDIA's wheels, in import order."""
    import importlib.util
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "cu13", sub)
        if os.path.isdir(path):
            yield path


def nvjitlink_path():
    """libnvJitLink from NVIDIA's nvidia-nvjitlink wheel (nvidia/cu13/lib), or None when it is not installed."""
    for lib_dir in _wheel_dirs("lib"):
        names = sorted(n for n in os.listdir(lib_dir) if n.startswith("libnvJitLink.so"))
        if names:
            return os.path.join(lib_dir, names[0])
    return None


def _configure_nvjitlink():
    """Point the library at the wheel's libnvJitLink for exact register counts, unless the user chose
    (CYBN_SOFTGPU_NVJITLINK=path, or 0 for the liveness estimate)."""
    if "CYBN_SOFTGPU_NVJITLINK" not in os.environ:
        path = nvjitlink_path()
        if path:
            os.environ["CYBN_SOFTGPU_NVJITLINK"] = path


def ptxas_path():
    """ptxas from NVIDIA's nvidia-cuda-nvcc wheel (nvidia/cu13/bin), or None when it is not installed."""
    for bin_dir in _wheel_dirs("bin"):
        path = os.path.join(bin_dir, "ptxas")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _configure_ptxas():
    """Point the library at the wheel's ptxas for whole-program register counts (what the driver's PTX JIT
    and NVRTC's CUBIN give; nvJitLink's are those of relocatable code), unless the user chose
    (CYBN_SOFTGPU_PTXAS=absolute path, or 0 for nvJitLink's counts)."""
    if "CYBN_SOFTGPU_PTXAS" not in os.environ:
        path = ptxas_path()
        if path:
            os.environ["CYBN_SOFTGPU_PTXAS"] = path


def _configure_jit_cache():
    """Keep the exact register counts (ptxas' or nvJitLink's) between processes, as the CUDA driver keeps its JIT output: in
    softgpu-jit/ of cybn's cache directory, unless the user chose (CYBN_SOFTGPU_JIT_CACHE=absolute path, or 0
    for none); none when the kernel cache is off (CYBN_CACHE=0)."""
    if "CYBN_SOFTGPU_JIT_CACHE" in os.environ:
        return
    from . import env, paths
    try:
        on = env.flag("CYBN_CACHE", True)
    except ValueError:  # the kernel cache reports the bad value where it is used
        on = False
    if on:
        os.environ["CYBN_SOFTGPU_JIT_CACHE"] = os.path.join(paths.cache_dir(), "softgpu-jit")


def jit_cache_stats():
    """This process's use of the register-count disk cache: {"compiles": ptxas or nvJitLink runs, "hits": entries
    loaded, "refused": entries not trusted (malformed, another key's, not a regular file of this user's)}."""
    out = (ctypes.c_int * 3)()
    _need().softgpuJitCacheStats(out)
    return dict(compiles=out[0], hits=out[1], refused=out[2])


def sha256_hex(data):
    """The library's SHA-256 of `data` (bytes), hex: what names its cache entries."""
    out = ctypes.create_string_buffer(65)
    _need().softgpuSha256Hex(data, len(data), out)
    return out.value.decode()


def register_source():
    """Where register counts come from: ("ptxas", path) for whole-program ptxas (the driver's JIT),
    ("nvjitlink", path) for nvJitLink's relocatable compile, or ("estimate", why)."""
    status = _need().softgpuRegisterSource().decode()
    kind, _, path = status.partition(":")
    if kind in ("ptxas", "nvjitlink") and os.path.exists(path):
        return kind, path
    return "estimate", status or ("neither CYBN_SOFTGPU_PTXAS nor CYBN_SOFTGPU_NVJITLINK is set (the "
                                  "nvidia-cuda-nvcc and nvidia-nvjitlink wheels are not installed)")


def function_registers(func):
    """Register facts of a loaded kernel (a CUfunction from cuda.bindings or its integer handle):
    registers (what occupancy uses), estimate (the liveness estimate), exact (ptxas' count or None),
    spill_bytes (per thread, exact counts only), declared (registers the PTX declares)."""
    out = (ctypes.c_int * 5)()
    rc = _need().softgpuFunctionRegisters(ctypes.c_void_p(int(func)), out)
    if rc != 0:
        raise ValueError("function_registers: %r is not a loaded function (CUresult %d)" % (func, rc))
    return {"registers": out[0], "estimate": out[1], "exact": out[0] if out[2] else None,
            "spill_bytes": out[3], "declared": out[4]}


def set_function_registers(func, regs):
    """Tests: occupancy and launches of `func` see `regs` (1..255) registers per thread from now on,
    as if ptxas had allocated that many (for occupancy cases worked out by hand)."""
    _check_count("regs", regs, 1)
    rc = _need().softgpuSetFunctionRegisters(ctypes.c_void_p(int(func)), regs)
    if rc != 0:
        raise ValueError("set_function_registers(%r, %r) refused (CUresult %d): a loaded function and "
                         "1..255 registers are needed" % (func, regs, rc))
