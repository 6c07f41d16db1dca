# The one place a CUresult is checked: everything else calls check() right after a driver call.
from cuda.bindings cimport cydriver

cdef int raise_error(cydriver.CUresult status, const char* call) except -1

cdef inline int check(cydriver.CUresult status, const char* call) except -1 nogil:
    if status == cydriver.CUDA_SUCCESS:
        return 0
    with gil:
        raise_error(status, call)
    return -1
