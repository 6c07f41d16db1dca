"""The kernel cache: each kernel program is compiled at most once per process (in-process memo) and,
across processes, loaded from a user-private disk cache (cybn.diskcache) instead of running NVRTC again.

The disk key hashes everything that can change the output: the source and its name, the content of
every header it includes (found by cybn.includes), the full NVRTC command line, the name expressions,
the NVRTC library's identity and version, target and architecture, and cybn's version.
CYBN_CACHE=0 turns the disk cache off (the in-process memo stays).

A disk hit does not load NVRTC (that alone costs ~100 ms): see nvrtc_options and paths."""
import glob
import hashlib
import os
import sys
import threading

from .. import env, paths
from . import diskcache, includes, nvrtc_options

_lock = threading.Lock()
_memo = {}  # request tuple -> CompiledImage
_key_locks = {}  # request tuple -> Lock, so threads asking for the same program compile it once
_stats = dict(memory_hits=0, disk_hits=0, compiles=0)
_tls = threading.local()


def enabled():
    """Is the disk cache on? (CYBN_CACHE=0/off/false/no turns it off; another value raises ValueError.)"""
    return env.flag("CYBN_CACHE", True)


def stats():
    """Counters for this process: memory_hits, disk_hits, compiles, discarded (bad entries deleted),
    writes (entries stored)."""
    with _lock:
        return dict(_stats, **diskcache.counters)


def last_outcome():
    """How this thread's last compile_cached call was served: "memory", "disk" or "compiled"."""
    return getattr(_tls, "outcome", None)


def clear_memory():
    """Forget the in-process memo (the disk cache is untouched); for tests and benchmarks."""
    with _lock:
        _memo.clear()
        _key_locks.clear()


def _count(what):
    with _lock:
        _stats[what] += 1


# ---- the key -------------------------------------------------------------------------------------

def _cybn_version():
    mod = sys.modules.get("cybn")
    ver = getattr(mod, "__version__", None)
    if ver:
        return str(ver)
    try:  # slow (~50 ms), so only when the package doesn't say
        from importlib.metadata import version
        return version("cybn")
    except Exception:
        return "unknown"


_identity = None


def _nvrtc_identity():
    """Which NVRTC compiles: the wheel's library files (path, size, mtime) and distribution version,
    found without loading NVRTC; cybn.nvrtc loads exactly that file. Without the wheel layout, ask the
    loaded NVRTC for its version."""
    global _identity
    if _identity is None:
        found = paths.nvrtc_library()
        if found is None:
            from . import nvrtc
            ident = ["loaded", "%d.%d" % nvrtc.version()]
        else:
            lib, builtins = found
            ident = []
            for f in [lib, *builtins]:
                st = os.stat(f)
                ident.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
            site = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(lib))))
            ident += sorted(os.path.basename(p) for p in glob.glob(os.path.join(site, "nvidia_cuda_nvrtc-*.dist-info")))
        _identity = "\n".join(ident + ["cybn " + _cybn_version()])
    return _identity


def cache_key(source_text, source_name, options=(), name_expressions=(), target="ptx", arch="compute_80",
              headers=None, source_dir=None):
    """The hex sha256 naming this program's disk entry (see the module docstring for what goes in)."""
    options, name_expressions = nvrtc_options.check_request(options, name_expressions, target, arch, headers)
    return _key(source_text, source_name, options, tuple(sorted(set(name_expressions))), target, arch,
                headers, source_dir).hex()


def _key(source_text, source_name, options, name_expressions, target, arch, headers, source_dir):
    full = nvrtc_options.effective_options(options, arch)
    h = hashlib.sha256()

    def field(label, data):
        if isinstance(data, str):
            data = data.encode()
        h.update(b"%s %d\n" % (label.encode(), len(data)))
        h.update(data)

    field("format", str(diskcache.FORMAT_VERSION))
    field("nvrtc", _nvrtc_identity())
    field("target", target)
    field("arch", arch)
    field("name", source_name)
    field("source", source_text)
    for opt in full:
        field("option", opt)
    for expr in name_expressions:
        field("expression", expr)
    for name, text in sorted((headers or {}).items()):
        field("header", name)
        field("header-text", text)
    deps = includes.dependencies(source_text, source_dir, headers, nvrtc_options.include_dirs_of(full),
                                 nvrtc_options.pre_includes_of(full))
    for name, resolved, content in deps:
        field("include", name)
        field("resolved", resolved or "<not found>")
        field("content", hashlib.sha256(content).digest())
    return h.digest()


# ---- compiling -----------------------------------------------------------------------------------

def compile_cached(source_text, source_name, options=(), name_expressions=(), target="ptx", arch="compute_80",
                   headers=None, source_dir=None):
    """cybn.nvrtc.compile with the memo and the disk cache in front. Same arguments, plus source_dir:
    the directory of the source file, where its quoted #includes are looked up first (for the key).
    name_expressions are compiled as a set (order and duplicates don't matter)."""
    if not isinstance(source_text, str):
        raise TypeError(f"source_text must be str, got {type(source_text).__name__}")
    if not isinstance(source_name, str) or not source_name:
        raise TypeError(f"source_name must be a non-empty str, got {source_name!r}")
    options, name_expressions = nvrtc_options.check_request(options, name_expressions, target, arch, headers)
    name_expressions = tuple(sorted(set(name_expressions)))
    request = (source_text, source_name, options, name_expressions, target, arch,
               tuple(sorted((headers or {}).items())), source_dir)
    with _lock:
        img = _memo.get(request)
        if img is not None:
            _stats["memory_hits"] += 1
            _tls.outcome = "memory"
            return img
        key_lock = _key_locks.setdefault(request, threading.Lock())
    with key_lock:
        with _lock:
            img = _memo.get(request)
        if img is not None:
            _count("memory_hits")
            _tls.outcome = "memory"
            return img
        img = _compile_or_load(source_text, source_name, options, name_expressions, target, arch, headers,
                               source_dir)
        with _lock:
            _memo[request] = img
        return img


def _compile_or_load(source_text, source_name, options, name_expressions, target, arch, headers, source_dir):
    directory = diskcache.usable_dir() if enabled() else None
    if directory is not None:
        key = _key(source_text, source_name, options, name_expressions, target, arch, headers, source_dir)
        img = diskcache.load(directory, key, target, arch)
        if img is not None:
            _count("disk_hits")
            _tls.outcome = "disk"
            return img
    from . import nvrtc
    img = nvrtc.compile(source_text, source_name, options, headers, name_expressions, target, arch)
    _count("compiles")
    _tls.outcome = "compiled"
    if directory is not None:
        diskcache.store(directory, key, img)
    return img


def resolve_source(source):
    """(text, name, directory) for a kernel file name (looked up in paths.kernel_dir()), a path, or an
    inline source string (named inline_<hash>.cu, no directory)."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a kernel file name or CUDA source text, got {source!r}")
    if "\n" not in source and source.endswith((".cu", ".cuh")):
        path = source if os.path.isabs(source) else os.path.join(paths.kernel_dir(), source)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"kernel source {source!r} not found (looked in {paths.kernel_dir()})") from None
        return text, os.path.basename(path), os.path.dirname(path)
    return source, "inline_%s.cu" % hashlib.sha256(source.encode()).hexdigest()[:12], None


def compile_kernel(source, name_expressions=(), options=(), target="ptx", arch="compute_80"):
    """What cybn.kernels and `python -m cybn warmup` both call, so they hit the same cache entries.

    source: a kernel file name ("batchnorm.cu"), a path, or inline source text. The program is compiled
    with the union of `name_expressions` and every name expression registered in cybn.variants for this
    file and these options: one NVRTC run per (file, options, target, arch) serves all its variants."""
    text, name, directory = resolve_source(source)
    options, name_expressions = nvrtc_options.check_request(options, name_expressions, target, arch)
    if directory is not None:
        from . import variants
        name_expressions += variants.expressions_for(name, options)
    return compile_cached(text, name, options, name_expressions, target, arch, source_dir=directory)
