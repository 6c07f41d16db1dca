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
    cdef list streams          # other streams it was used on (record_stream): reuse waits for their work
    cdef int _used_on(self, size_t stream) except -1

cdef class MemoryPool:
    cdef dict free_lists       # (stream handle, block size) -> [device pointers]
    cdef list pending          # [ptr, block, stream key, [events]]: freed, in use on other streams until the events
    cdef size_t used
    cdef size_t held
    cdef unsigned long long _take(self, size_t block, size_t stream_key) except 0
    cdef void _give_back(self, unsigned long long ptr, size_t block, size_t stream_key, list streams,
                         size_t freeing_stream) noexcept
    cdef void _collect(self) noexcept
    cpdef DeviceBuffer malloc(self, size_t nbytes, stream=*)

cdef class PinnedBuffer:
    cdef void* ptr_
    cdef readonly size_t nbytes

cdef size_t size_class(size_t nbytes) noexcept nogil
cdef MemoryPool default_pool_c()
