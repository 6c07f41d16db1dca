from cuda.bindings cimport cydriver

cdef class Device:
    cdef readonly int ordinal
    cdef cydriver.CUdevice dev

cdef class Context:
    cdef cydriver.CUcontext ctx
    cdef readonly Device device

# Makes the calling thread's device's primary context current if it isn't (initialising the driver on
# first use) and returns it. Every cybn entry point that touches the driver calls this first.
cdef cydriver.CUcontext ensure_context() except NULL
cdef int current_ordinal() noexcept nogil
