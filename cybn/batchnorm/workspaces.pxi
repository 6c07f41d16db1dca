# The Python face's workspaces: one per (context, stream, thread), kept, reused, and dropped with
# their stream or thread. Included by batchnorm.pyx.

# (context, stream, thread) -> _Workspace, least recently used first. Each one is used on one stream by one
# thread, in stream order, so it can carry its counters' armed extent (scratch.pxi's rule): a split call on a
# workspace the previous call left armed needs no memset. A fresh allocation starts at 0 (unknown contents).
# Lifetime: a cybn Stream's entries go when it is destroyed (cybn.stream's destroy hook), a thread's when the
# thread exits (_ThreadWorkspaces), and at most MAX_WORKSPACES stay (foreign handles cannot grow the table).
# A call holds its buffer (_busy) from _finish_desc to the end of its launches; nothing frees a held buffer.
cdef dict _workspaces = {}
cdef dict _busy = {}  # id(buffer) -> calls in flight using it
cdef list _retired = []  # replaced by a larger one: queued work may still use them
_ws_lock = threading.RLock()  # reentrant: a Stream collected while it is held runs the destroy hook
_ws_tls = threading.local()
MAX_WORKSPACES = 32


cdef _workspace_key(cydriver.CUcontext ctx, cydriver.CUstream stream):
    # Per thread too, for every stream: a split call enqueues two launches that share the workspace's
    # partials and (shift, mean), so two threads on one stream (the legacy default stream, most often)
    # could enqueue A1 B1 A2 B2 and A's normalisation would read B's mean. (The per-thread default
    # stream, handle 2, is moreover a different stream in every thread.)
    return (<size_t>ctx, <size_t>stream, threading.get_ident())


class _ThreadWorkspaces:
    """Kept in each calling thread's local storage: collected when the thread exits, it drops the thread's
    workspaces."""

    def __init__(self, ident):
        self.ident = ident

    def __del__(self):
        try:
            _drop_workspaces(lambda key, ident=self.ident: key[2] == ident, 0)
        except Exception:  # interpreter shutdown: nothing to report to
            pass


cdef class _Workspace(DeviceBuffer):
    """A kept workspace: its allocation plus the bytes at its start that hold armed (zero) counters. The core
    reads and updates `armed` through bn_desc.counters_armed while the caller holds the workspace."""
    cdef size_t armed


def _counters_armed(stream=None):
    """The calling thread's workspace on `stream` (None: the current stream): its counters' armed extent in
    bytes, or None when it has none. For tests of the counter contract."""
    cdef cydriver.CUstream s = resolve_stream(stream)
    with _ws_lock:
        ws = _workspaces.get(_workspace_key(ensure_context(), s))
    return None if ws is None else (<_Workspace>ws).armed


cdef DeviceBuffer _workspace(cydriver.CUcontext ctx, cydriver.CUstream stream, size_t nbytes):
    """The stream's (and thread's) workspace of at least nbytes, held (_busy) until _release."""
    if getattr(_ws_tls, "owner", None) is None:
        _ws_tls.owner = _ThreadWorkspaces(threading.get_ident())
    key = _workspace_key(ctx, stream)
    cdef DeviceBuffer buf
    with _ws_lock:
        buf = _workspaces.pop(key, None)
        if buf is not None and buf.nbytes >= nbytes:
            _workspaces[key] = buf  # now the most recently used
            _busy[id(buf)] = _busy.get(id(buf), 0) + 1
            return buf
        if buf is not None:
            _retired.append(buf)
    cdef size_t size = 1 << 16
    while size < nbytes:
        size *= 2
    buf = _Workspace(size)
    with _ws_lock:
        _workspaces[key] = buf
        _busy[id(buf)] = _busy.get(id(buf), 0) + 1
        over = len(_workspaces) - MAX_WORKSPACES
    if over > 0:
        _evict_oldest(over)
    return buf


cdef void _release(DeviceBuffer buf):
    if buf is None:
        return
    with _ws_lock:
        n = _busy.pop(id(buf)) - 1
        if n:
            _busy[id(buf)] = n


def _evict_oldest(n):
    oldest = list(_workspaces)[:n]
    _drop_workspaces(lambda key: key in oldest, 0)


def _drop_workspaces(predicate, size_t stream):
    """Drop the idle entries whose key matches, after their work is done (that stream synchronised, or the
    whole context when stream is 0)."""
    with _ws_lock:
        keys = [k for k, b in _workspaces.items() if predicate(k) and id(b) not in _busy]
        if not keys:
            return
        ensure_context()
        with nogil:
            if stream:
                cydriver.cuStreamSynchronize(<cydriver.CUstream>stream)
            else:
                cydriver.cuCtxSynchronize()
        dropped = [_workspaces.pop(k) for k in keys]
    del dropped


def _on_stream_destroyed(size_t handle):
    """cybn.stream calls it before destroying a stream it owns."""
    _drop_workspaces(lambda key: key[1] == handle, handle)


def workspace_count():
    """(workspaces kept, retired ones): for tests of their lifetime."""
    with _ws_lock:
        return len(_workspaces), len(_retired)


def free_workspaces():
    """Free the kept workspaces (after synchronising the context, so no queued launch still uses them);
    the next split launch allocates fresh ones. A workspace a call in another thread is using right now is
    kept (freed by a later call). For leak accounting in tests and at shutdown."""
    with _ws_lock:
        if not _workspaces and not _retired:
            return
        ensure_context()
        with nogil:
            check(cydriver.cuCtxSynchronize(), "cuCtxSynchronize")
        keep = {k: b for k, b in _workspaces.items() if id(b) in _busy}
        dropped = list(_workspaces.values()) + _retired[:]
        _workspaces.clear()
        _workspaces.update(keep)
        _retired[:] = [b for b in dropped if id(b) in _busy and b not in keep.values()]
    del dropped


import sys as _sys
import cybn.driver.stream  # noqa: E402 - registers the destroy hook (cybn.stream is a callable module)
_sys.modules["cybn.driver.stream"]._destroy_hooks.append(_on_stream_destroyed)
