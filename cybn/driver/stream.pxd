from cuda.bindings cimport cydriver

cdef class Stream:
    cdef cydriver.CUstream stream
    cdef bint owned
    cdef object owner    # keeps a wrapped external stream's owner alive

# The Stream launches and copies use on this thread when none is given (default: the legacy stream).
cdef Stream current_stream_c()
# The CUstream for a `stream=` argument: None -> current_stream(), a Stream, or a raw handle int.
cdef cydriver.CUstream resolve_stream(object stream) except? NULL
