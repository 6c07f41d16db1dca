from cuda.bindings cimport cydriver

cdef class Event:
    cdef cydriver.CUevent event
    cdef readonly bint timing
    cdef bint recorded  # by record(); only explains a failed elapsed_ms (foreign code may record the handle)
