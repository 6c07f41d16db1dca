# distutils: language = c++
"""Streams, the per-thread current stream, and `with cybn.stream(s):` (this module is callable)."""
import sys
import threading
import types

from cpython.object cimport PyObject
from cuda.bindings cimport cydriver
from cybn.driver.device cimport ensure_context
from cybn.driver.status cimport check

_tls = threading.local()
cdef Stream _legacy = None
# Called with the handle before a stream cybn owns is destroyed (layers above keep per-stream resources).
_destroy_hooks = []


cdef class Stream:
    """A CUDA stream. Stream() creates and owns one; Stream.external() wraps a handle it does not own."""

    def __cinit__(self, bint non_blocking=True, int priority=0, *, _wrap=False):
        self.stream = NULL
        self.owned = False
        if _wrap:
            return
        ensure_context()
        cdef unsigned int flags = cydriver.CU_STREAM_NON_BLOCKING if non_blocking else cydriver.CU_STREAM_DEFAULT
        with nogil:
            check(cydriver.cuStreamCreateWithPriority(&self.stream, flags, priority), "cuStreamCreateWithPriority")
        self.owned = True

    def __dealloc__(self):
        if self.owned and self.stream != NULL:
            try:
                ensure_context()
                for hook in _destroy_hooks:  # e.g. BatchNorm drops this stream's workspaces
                    try:
                        hook(<size_t>self.stream)
                    except Exception:  # a hook's failure must not leak the stream
                        pass
                cydriver.cuStreamDestroy(self.stream)
            except Exception:  # interpreter shutdown: the context may be gone; nothing to report to
                pass

    @staticmethod
    def external(handle, owner=None):
        """Wrap an existing CUstream without owning it: an int, an object with __cuda_stream__()
        (cuda.core's protocol) or .handle, or a cuda.bindings CUstream. `owner` is kept alive."""
        if hasattr(handle, "__cuda_stream__"):
            handle = handle.__cuda_stream__()[1]
        elif hasattr(handle, "handle"):
            handle = handle.handle
        if not isinstance(handle, int):
            try:
                handle = int(handle)  # a cuda.bindings CUstream converts with int()
            except (TypeError, ValueError):
                raise TypeError(f"Stream.external: expected a CUstream (an int, an object with __cuda_stream__ "
                                f"or .handle, or a cuda.bindings CUstream), got {type(handle).__name__}") from None
        if handle < 0:
            raise ValueError(f"Stream.external: a CUstream handle is not negative, got {handle}")
        cdef Stream s = Stream(_wrap=True)
        s.stream = <cydriver.CUstream><size_t>handle
        s.owner = owner
        return s

    @staticmethod
    def legacy():
        """The legacy default stream (handle 0): synchronises with every blocking stream."""
        global _legacy
        if _legacy is None:
            _legacy = Stream(_wrap=True)
        return _legacy

    @property
    def handle(self):
        return <size_t>self.stream

    def __cuda_stream__(self):
        """(protocol version 0, CUstream as int): lets cuda.core and others use this stream."""
        return (0, <size_t>self.stream)

    def synchronize(self):
        """Block (GIL released) until all work queued on the stream is done."""
        ensure_context()
        with nogil:
            check(cydriver.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def query(self):
        """True if all queued work is done, False if some is still running."""
        ensure_context()
        cdef cydriver.CUresult r = cydriver.cuStreamQuery(self.stream)
        if r == cydriver.CUDA_ERROR_NOT_READY:
            return False
        check(r, "cuStreamQuery")
        return True

    def wait(self, event):
        """Make later work on this stream wait until `event` (a cybn Event) has completed."""
        cdef size_t ev = _event_handle(event)
        ensure_context()
        with nogil:
            check(cydriver.cuStreamWaitEvent(self.stream, <cydriver.CUevent>ev, 0), "cuStreamWaitEvent")

    def record(self, event=None):
        """Record `event` (a new Event if None) on this stream and return it."""
        if event is None:
            from cybn.driver.event import Event
            event = Event()
        event.record(self)
        return event

    def __enter__(self):
        _push(self)
        return self

    def __exit__(self, *exc):
        _pop(self)
        return False

    def __eq__(self, other):
        return isinstance(other, Stream) and (<Stream>other).stream == self.stream

    def __hash__(self):
        return hash(("cybn.Stream", <size_t>self.stream))

    def __repr__(self):
        kind = "owned" if self.owned else ("legacy" if self.stream == NULL else "external")
        return f"<cybn.Stream {kind} handle={<size_t>self.stream:#x}>"


cdef size_t _event_handle(event) except? 0:
    if event is None or not hasattr(event, "handle"):
        raise TypeError(f"expected a cybn Event, got {type(event).__name__}")
    return <size_t>int(event.handle)


cdef extern from *:
    """
    /* The top of this thread's `with cybn.stream(s)` stack, borrowed (the stack list in _tls holds the
       reference): launches read it without a threading.local lookup. NULL: the legacy stream. */
    static __thread PyObject* cybn_tls_stream = NULL;
    """
    PyObject* cybn_tls_stream


cdef Stream current_stream_c():
    if cybn_tls_stream != NULL:
        return <Stream>cybn_tls_stream
    if _legacy is not None:
        return _legacy
    return Stream.legacy()


cdef cydriver.CUstream resolve_stream(object stream) except? NULL:
    if stream is None:
        return current_stream_c().stream
    if isinstance(stream, Stream):
        return (<Stream>stream).stream
    if isinstance(stream, int):
        return <cydriver.CUstream><size_t>stream
    raise TypeError(f"stream must be a cybn Stream, a CUstream int or None, got {type(stream).__name__}")


def current_stream():
    """The Stream cybn uses on this thread when none is given."""
    return current_stream_c()


cdef _push(Stream s):
    global cybn_tls_stream
    stack = getattr(_tls, "stack", None)
    if stack is None:
        stack = _tls.stack = []
    stack.append(s)
    cybn_tls_stream = <PyObject*>s


cdef _pop(Stream s):
    global cybn_tls_stream
    stack = getattr(_tls, "stack", None)
    if not stack or stack[-1] is not s:
        raise RuntimeError("cybn.stream contexts exited out of order")
    stack.pop()
    cybn_tls_stream = <PyObject*>stack[-1] if stack else NULL


def use(s):
    """Context manager making `s` (a Stream; None = the legacy stream) current on this thread."""
    if s is None:
        s = Stream.legacy()
    if not isinstance(s, Stream):
        raise TypeError(f"cybn.stream() takes a cybn Stream or None, got {type(s).__name__}")
    return s


class _CallableModule(types.ModuleType):
    """`cybn.stream` is this module and also `with cybn.stream(s):` (api.md names both)."""

    def __call__(self, s):
        return use(s)


sys.modules[__name__].__class__ = _CallableModule
