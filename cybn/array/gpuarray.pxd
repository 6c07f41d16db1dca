from cybn.driver.memory cimport DeviceBuffer

cdef class GPUArray:
    cdef readonly tuple shape
    cdef readonly object dtype
    cdef readonly DeviceBuffer gpudata   # the allocation (or a non-owning wrapper of external memory)
    cdef unsigned long long ptr_         # first element (== gpudata.ptr: views share the allocation)
    cdef readonly Py_ssize_t size
    cdef readonly size_t nbytes
    cdef readonly int itemsize

# A GPUArray over `buf` (no copy, no checks beyond the size): for Cython callers.
cdef GPUArray wrap(DeviceBuffer buf, unsigned long long ptr, tuple shape, object dtype)
