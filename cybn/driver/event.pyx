# distutils: language = c++
"""CUDA events: ordering between streams and elapsed time between two records."""
from cuda.bindings cimport cydriver
from cybn.driver.device cimport ensure_context
from cybn.driver.status cimport check
from cybn.driver.stream cimport resolve_stream
from cybn.errors import CudaError


cdef class Event:
    """Event(timing=True, blocking=False): blocking=True makes synchronize() sleep instead of spin."""

    def __cinit__(self, bint timing=True, bint blocking=False):
        self.event = NULL
        self.timing = timing
        self.recorded = False
        cdef unsigned int flags = 0
        if not timing:
            flags |= cydriver.CU_EVENT_DISABLE_TIMING
        if blocking:
            flags |= cydriver.CU_EVENT_BLOCKING_SYNC
        ensure_context()
        with nogil:
            check(cydriver.cuEventCreate(&self.event, flags), "cuEventCreate")

    def __dealloc__(self):
        if self.event != NULL:
            try:
                ensure_context()
                cydriver.cuEventDestroy(self.event)
            except Exception:  # interpreter shutdown: nothing left to report to
                pass

    @property
    def handle(self):
        return <size_t>self.event

    def record(self, stream=None):
        """Record on `stream` (default: the current stream); returns self."""
        ensure_context()
        cdef cydriver.CUstream s = resolve_stream(stream)
        with nogil:
            check(cydriver.cuEventRecord(self.event, s), "cuEventRecord")
        self.recorded = True
        return self

    def synchronize(self):
        """Block (GIL released) until the work before the last record() has completed."""
        ensure_context()
        with nogil:
            check(cydriver.cuEventSynchronize(self.event), "cuEventSynchronize")

    def query(self):
        """True if the recorded work has completed."""
        ensure_context()
        cdef cydriver.CUresult r = cydriver.cuEventQuery(self.event)
        if r == cydriver.CUDA_ERROR_NOT_READY:
            return False
        check(r, "cuEventQuery")
        return True

    def elapsed_ms(self, Event end not None):
        """Milliseconds between this event's record and `end`'s (both completed, both timing events)."""
        if not self.timing or not end.timing:
            raise ValueError("elapsed_ms needs two events created with timing=True")
        cdef float ms = 0
        cdef cydriver.CUresult r
        ensure_context()
        with nogil:
            r = cydriver.cuEventElapsedTime(&ms, self.event, end.event)
        if r != cydriver.CUDA_SUCCESS:
            try:
                check(r, "cuEventElapsedTime")
            except CudaError as e:
                # The driver says "invalid resource handle" for an event never recorded: say which one.
                unrecorded = [w for w, ev in (("start", self), ("end", end)) if not (<Event>ev).recorded]
                if r == cydriver.CUDA_ERROR_INVALID_HANDLE and unrecorded:
                    note = (f"elapsed_ms: the {' and '.join(unrecorded)} event"
                            + (" was" if len(unrecorded) == 1 else "s were") + " never recorded")
                    raise CudaError(e.code, e.name, e.description, e.call,
                                    note + ("\n" + e.detail if e.detail else "")) from None
                raise
        return ms

    def __repr__(self):
        return f"<cybn.Event handle={<size_t>self.event:#x} timing={bool(self.timing)}>"
