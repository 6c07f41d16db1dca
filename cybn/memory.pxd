from cuda.bindings cimport cydriver

cdef class MemoryPool

cdef class DeviceBuffer:
    cdef readonly unsigned long long ptr
    cdef readonly size_t nbytes
    cdef size_t block          # bytes really allocated (the pool's size class); 0 if not owned
    cdef size_t stream_key     # CUstream the block was taken on: it goes back to that stream's free list
    cdef MemoryPool pool       # None: freed with cuMemFree
    cdef bint owns
    cdef object owner          # keep-alive for external memory

cdef class MemoryPool:
    cdef dict free_lists       # (stream handle, block size) -> [device pointers]
    cdef size_t used
    cdef size_t held
    cdef unsigned long long _take(self, size_t block, size_t stream_key) except 0
    cdef void _give_back(self, unsigned long long ptr, size_t block, size_t stream_key) noexcept
    cpdef DeviceBuffer malloc(self, size_t nbytes, stream=*)

cdef class PinnedBuffer:
    cdef void* ptr_
    cdef readonly size_t nbytes

cdef size_t size_class(size_t nbytes) noexcept nogil
cdef MemoryPool default_pool_c()
