"""The kernel cache's on-disk store: a user-private directory of verified entries.

Directory: paths.cache_dir(), created with mode 0700; a directory owned by another user or writable by
group/others is not used at all (warned once), since anyone who can write there could plant code.
Entry: `<sha256 key>.cybnk` = a fixed header (magic, format version, the entry's own key, payload length,
payload sha256) + a payload (JSON metadata: kind, arch, name, lowered names, log; then the image).
Writes are atomic (temporary file in the same directory, fsync, os.replace), so racing writers leave
one valid entry and readers never see half a file. An entry that is truncated, corrupted, tampered with
or stored under the wrong name fails verification and is deleted, never loaded. An entry is read only if
fstat shows a regular file owned by the user, not group/world writable, with one link (see load); opening
never follows a link or blocks. Temporary files of writers that died are removed by the next writer."""
import hashlib
import json
import os
import stat
import struct
import sys
import threading
import warnings

from .. import paths
from .image import CompiledImage

FORMAT_VERSION = 1
SUFFIX = ".cybnk"
_MAGIC = b"CYBNKC\x00\x01"
_HEADER = struct.Struct("<8sI32sQ32s")  # magic, format version, key digest, payload length, payload sha256
_META = struct.Struct("<I")  # length of the JSON metadata that starts the payload

MAX_ENTRY_BYTES = 64 << 20  # far above any kernel image; a larger file is not read
STALE_TEMP_SECONDS = 600  # a writer takes milliseconds: an older temporary file's writer died
_TEMP_PREFIX = ".tmp-"
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
    try:
        warnings.warn(msg, RuntimeWarning, stacklevel=5)
    except Warning:  # -W error made it an exception: the disk cache is optional, so say it as by default
        print(f"RuntimeWarning: {msg}", file=sys.stderr)


def usable_dir():
    """The cache directory if it is safe to use (created 0700 if missing), else None (warned once)."""
    path = paths.cache_dir()
    if os.environ.get("CYBN_CACHE_DIR"):  # say where the path came from, and what would be accepted
        path_label = f"CYBN_CACHE_DIR={path!r} (accepted: a directory you own, mode 0700, or a path to create)"
    else:
        path_label = path
    try:
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)  # the umask may have taken bits away; never adds any
        st = os.stat(path)
    except OSError as exc:
        _warn_once(("mkdir", path), f"cybn: kernel disk cache disabled: cannot create {path_label}: {exc}")
        return None
    if not stat.S_ISDIR(st.st_mode):
        _warn_once(("notdir", path), f"cybn: kernel disk cache disabled: {path_label} is not a directory")
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
    """The entry's CompiledImage, or None. The entry is opened without following links or blocking and
    trusted only if fstat shows a regular file owned by this user, not writable by group or others, with one
    link and a sane size; anything else (a symlink, directory, FIFO, device, hard link, 0666 file) is ignored
    and removed when that is safe (the cache directory is private), never fatal."""
    path = entry_path(key.hex(), directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # e.g. a symlink planted in place of an entry (ELOOP): unlink removes the link only
        _discard(path, None)
        return None
    st = None
    try:
        st = os.fstat(fd)
        trusted = (stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_nlink == 1
                   and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and st.st_size <= MAX_ENTRY_BYTES)
        data = _read_all(fd, st.st_size) if trusted else b""
    except OSError:
        data = b""
    finally:
        os.close(fd)
    img = decode(key, data, target, arch)
    if img is None:
        _discard(path, st and st.st_ino, directory=st is not None and stat.S_ISDIR(st.st_mode))
    return img


def _read_all(fd, size):
    chunks, left = [], size + 1  # one byte more than fstat said: a file that grew is caught by decode
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _discard(path, inode, directory=False):
    """Delete a bad entry, unless another process has meanwhile replaced it with a new file. Only this name
    goes: unlink never touches a symlink's target or a hard link's other names; a directory in the private
    cache directory is cybn's to remove (rmtree does not follow links)."""
    try:
        if inode is None or os.lstat(path).st_ino == inode:
            if directory:
                import shutil
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    except OSError:
        pass
    _count("discarded")


def store(directory, key, img):
    import tempfile  # only writers need it (keeps the warm path's imports small)
    data = encode(key, img)
    tmp = None
    try:
        _clean_stale_temporaries(directory)
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=SUFFIX + ".part", dir=directory)
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


def _clean_stale_temporaries(directory):
    """Remove temporary files that writers killed mid-store left behind (older than STALE_TEMP_SECONDS)."""
    import time
    now = time.time()
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_TEMP_PREFIX) and n.endswith(".part")]
    except OSError:
        return
    for n in names:
        p = os.path.join(directory, n)
        try:
            st = os.lstat(p)
            if now - st.st_mtime > STALE_TEMP_SECONDS:
                os.unlink(p)
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
