"""The kernel cache: each kernel program is compiled at most once per process (in-process memo) and,
across processes, loaded from a user-private disk cache instead of running NVRTC again.

Disk layout: one file per program, `<sha256 key>.cybnk`, in paths.cache_dir() (CYBN_CACHE_DIR, else
$XDG_CACHE_HOME/cybn, else ~/.cache/cybn), a directory created with mode 0700. The key hashes everything
that can change the output: the source and its name, the content of every header it includes (found by
cybn.includes), the full NVRTC command line, the name expressions, the NVRTC library's identity and
version, target and architecture, and cybn's version. An entry is a fixed header (magic, format version,
its own key, payload length, payload sha256) and a payload (JSON metadata: lowered names, log, kind,
arch; then the image). Entries are written atomically (temporary file, fsync, os.replace), so racing
processes leave one valid entry; anything that fails verification is deleted and recompiled, never
loaded. A directory owned by another user or writable by group/others is not used at all (warned once).
CYBN_CACHE=0 turns the disk cache off (the in-process memo stays).

Loading a hit does not load NVRTC (that alone costs ~100 ms): see nvrtc_options and paths."""
import glob
import hashlib
import json
import os
import stat
import struct
import sys
import threading
import warnings

from . import includes, nvrtc_options, paths
from .image import CompiledImage

FORMAT_VERSION = 1
SUFFIX = ".cybnk"
_MAGIC = b"CYBNKC\x00\x01"
_HEADER = struct.Struct("<8sI32sQ32s")  # magic, format version, key digest, payload length, payload sha256
_META = struct.Struct("<I")  # length of the JSON metadata that starts the payload

_lock = threading.Lock()
_memo = {}  # request tuple -> CompiledImage
_key_locks = {}  # request tuple -> Lock, so threads asking for the same program compile it once
_warned = set()
_stats = dict(memory_hits=0, disk_hits=0, compiles=0, discarded=0, writes=0)
_tls = threading.local()


def enabled():
    """Is the disk cache on? (CYBN_CACHE=0 turns it off.)"""
    return os.environ.get("CYBN_CACHE", "1").strip() != "0"


def stats():
    """Counters for this process: memory_hits, disk_hits, compiles, discarded (bad entries deleted),
    writes (entries stored)."""
    with _lock:
        return dict(_stats)


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


def _warn_once(tag, msg):
    with _lock:
        if tag in _warned:
            return
        _warned.add(tag)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


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

    field("format", str(FORMAT_VERSION))
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


# ---- the directory -------------------------------------------------------------------------------

def _usable_dir():
    """The cache directory if it is safe to use (created 0700 if missing), else None (warned once)."""
    path = paths.cache_dir()
    try:
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)  # the umask may have taken bits away; never adds any
        st = os.stat(path)
    except OSError as exc:
        _warn_once(("mkdir", path), f"cybn: kernel disk cache disabled: cannot create {path}: {exc}")
        return None
    if not stat.S_ISDIR(st.st_mode):
        _warn_once(("notdir", path), f"cybn: kernel disk cache disabled: {path} is not a directory")
        return None
    if st.st_uid != os.getuid():
        _warn_once(("owner", path), f"cybn: kernel disk cache disabled: {path} is owned by uid {st.st_uid}, "
                                    f"not by you (uid {os.getuid()}); set CYBN_CACHE_DIR to a private directory")
        return None
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        _warn_once(("mode", path), f"cybn: kernel disk cache disabled: {path} is writable by group or others "
                                   f"(mode {stat.S_IMODE(st.st_mode):04o}), so its entries can't be trusted; "
                                   f"fix it with: chmod 700 {path}")
        return None
    return path


def entry_path(key_hex, directory=None):
    """Where the entry for `key_hex` lives."""
    return os.path.join(directory or paths.cache_dir(), key_hex + SUFFIX)


# ---- entries -------------------------------------------------------------------------------------

def _encode(key, img):
    meta = json.dumps(dict(kind=img.kind, arch=img.arch, name=img.name, lowered=img.lowered, log=img.log),
                      sort_keys=True).encode()
    payload = _META.pack(len(meta)) + meta + img.image
    return _HEADER.pack(_MAGIC, FORMAT_VERSION, key, len(payload), hashlib.sha256(payload).digest()) + payload


def _decode(key, data, target, arch):
    """The CompiledImage in `data`, or None if anything about it is off."""
    if len(data) < _HEADER.size:
        return None
    magic, version, stored_key, length, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if (magic != _MAGIC or version != FORMAT_VERSION or stored_key != key or length != len(payload)
            or hashlib.sha256(payload).digest() != digest or length < _META.size):
        return None
    (meta_len,) = _META.unpack_from(payload)
    try:
        meta = json.loads(payload[_META.size:_META.size + meta_len])
        img = CompiledImage(payload[_META.size + meta_len:], meta["kind"], meta["arch"], meta["lowered"],
                            meta["log"], meta["name"])
    except (ValueError, KeyError, TypeError):
        return None
    if img.kind != target or img.arch != arch or not img.image:
        return None
    return img


def _load(directory, key, target, arch):
    path = entry_path(key.hex(), directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # e.g. a symlink planted in place of an entry
        _discard(path, None)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read() if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() else b""
    img = _decode(key, data, target, arch)
    if img is None:
        _discard(path, st.st_ino)
    return img


def _discard(path, inode):
    """Delete a bad entry, unless another process has meanwhile replaced it with a new file."""
    try:
        if inode is None or os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
    _count("discarded")


def _store(directory, key, img):
    import tempfile  # only writers need it (keeps the warm path's imports small)
    data = _encode(key, img)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX + ".part", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, entry_path(key.hex(), directory))  # atomic: readers see the old file or the new
        tmp = None
        _fsync_dir(directory)
        _count("writes")
    except OSError as exc:
        _warn_once(("write", directory), f"cybn: could not write to the kernel disk cache {directory}: {exc}")
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    directory = _usable_dir() if enabled() else None
    if directory is not None:
        key = _key(source_text, source_name, options, name_expressions, target, arch, headers, source_dir)
        img = _load(directory, key, target, arch)
        if img is not None:
            _count("disk_hits")
            _tls.outcome = "disk"
            return img
    from . import nvrtc
    img = nvrtc.compile(source_text, source_name, options, headers, name_expressions, target, arch)
    _count("compiles")
    _tls.outcome = "compiled"
    if directory is not None:
        _store(directory, key, img)
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
