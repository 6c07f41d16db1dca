"""The kernel cache's on-disk store: a user-private directory of verified entries.

Directory: paths.cache_dir(), created with mode 0700; a directory owned by another user or writable by
group/others is not used at all (warned once), since anyone who can write there could plant code.
Entry: `<sha256 key>.cybnk` = a fixed header (magic, format version, the entry's own key, payload length,
payload sha256) + a payload (JSON metadata: kind, arch, name, lowered names, log; then the image).
Writes are atomic (temporary file in the same directory, fsync, os.replace), so racing writers leave
one valid entry and readers never see half a file. An entry that is truncated, corrupted, tampered with
or stored under the wrong name fails verification and is deleted, never loaded."""
import hashlib
import json
import os
import stat
import struct
import threading
import warnings

from . import paths
from .image import CompiledImage

FORMAT_VERSION = 1
SUFFIX = ".cybnk"
_MAGIC = b"CYBNKC\x00\x01"
_HEADER = struct.Struct("<8sI32sQ32s")  # magic, format version, key digest, payload length, payload sha256
_META = struct.Struct("<I")  # length of the JSON metadata that starts the payload

_lock = threading.Lock()
_warned = set()
counters = dict(discarded=0, writes=0)


def _count(what):
    with _lock:
        counters[what] += 1


def _warn_once(tag, msg):
    with _lock:
        if tag in _warned:
            return
        _warned.add(tag)
    warnings.warn(msg, RuntimeWarning, stacklevel=5)


def usable_dir():
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


def encode(key, img):
    meta = json.dumps(dict(kind=img.kind, arch=img.arch, name=img.name, lowered=img.lowered, log=img.log),
                      sort_keys=True).encode()
    payload = _META.pack(len(meta)) + meta + img.image
    return _HEADER.pack(_MAGIC, FORMAT_VERSION, key, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(key, data, target, arch):
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


def load(directory, key, target, arch):
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
    img = decode(key, data, target, arch)
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


def store(directory, key, img):
    import tempfile  # only writers need it (keeps the warm path's imports small)
    data = encode(key, img)
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
