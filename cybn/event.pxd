from cuda.bindings cimport cydriver

cdef class Event:
    cdef cydriver.CUevent event
    cdef readonly bint timing
