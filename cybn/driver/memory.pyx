# distutils: language = c++
"""Device memory: DeviceBuffer (one allocation), MemoryPool (the caching allocator behind GPUArray),
PinnedBuffer (page-locked host memory for asynchronous copies)."""
import numpy as np

cimport cython

from cpython.buffer cimport PyBuffer_FillInfo
from cuda.bindings cimport cydriver
from cybn.driver.device cimport ensure_context, current_ordinal
from cybn.driver.status cimport check
from cybn.driver.stream cimport resolve_stream

cdef dict _default_pools = {}
cdef object _pool_block = False  # softgpuPoolBlock when running on the software GPU, None otherwise; False: not looked up


cdef int _extent(unsigned long long ptr, size_t nbytes, size_t stream) except -1:
    """Pool-aware memcheck: tell the software GPU the logical extent of a pooled block (0: free)."""
    global _pool_block
    if _pool_block is False:
        from cybn import softgpu
        _pool_block = softgpu._pool_block_function()
    if _pool_block is not None:
        _pool_block(ptr, nbytes, stream or None)
    return 0


cdef size_t size_class(size_t nbytes) noexcept nogil:
    """Blocks are 512-byte multiples; above 4 KiB, 8 classes per power of two (less than 12.5% waste)
    so freed blocks of similar sizes are reused instead of each size getting its own allocation."""
    cdef size_t p = 512
    if nbytes <= 512:
        return 512
    while p <= nbytes // 2:  # p: the largest power of two <= nbytes
        p <<= 1
    cdef size_t step = p >> 3
    if step < 512:
        step = 512
    if nbytes > <size_t>-1 - step:
        return nbytes  # rounding up would wrap to a tiny block; the driver refuses this size anyway
    return (nbytes + step - 1) // step * step


@cython.no_gc_clear  # __dealloc__ needs self.pool: the GC must not clear it first (a block would bypass the pool)
cdef class DeviceBuffer:
    """One device allocation: DeviceBuffer(nbytes) owns a cuMemAlloc block, DeviceBuffer(nbytes, pool)
    takes one from the pool; either way it is released when the object is collected."""

    def __cinit__(self, size_t nbytes=0, MemoryPool pool=None, *, _empty=False):
        self.ptr = 0
        self.nbytes = 0
        self.block = 0
        self.owns = False
        self.streams = None
        if _empty or nbytes == 0:
            return
        cdef size_t block = size_class(nbytes)
        cdef cydriver.CUdeviceptr p = 0
        cdef cydriver.CUresult r
        if pool is not None:
            self.stream_key = <size_t>resolve_stream(None)
            self.ptr = pool._take(block, self.stream_key)
            self.pool = pool
            _extent(self.ptr, nbytes, self.stream_key)
        else:
            ensure_context()
            block = nbytes
            with nogil:
                r = cydriver.cuMemAlloc(&p, nbytes)
            check(r, "cuMemAlloc")
            self.ptr = p
        self.nbytes = nbytes
        self.block = block
        self.owns = True

    def __dealloc__(self):
        if not self.owns or self.ptr == 0:
            return
        cdef size_t freeing
        if self.pool is not None:
            try:
                freeing = <size_t>resolve_stream(None)
            except Exception:  # interpreter shutdown
                freeing = self.stream_key
            self.pool._give_back(self.ptr, self.block, self.stream_key, self.streams, freeing)
            return
        try:
            ensure_context()
            cydriver.cuMemFree(self.ptr)
        except Exception:  # interpreter shutdown: the context may already be gone
            pass

    def record_stream(self, stream):
        """Tell the pool this block is also used on `stream` (a Stream, CUstream int or None for the current
        one): when it is freed, the pool reuses it only after the work queued on `stream` until then has
        completed (an event per such stream). No effect on blocks the pool does not own."""
        self._used_on(<size_t>resolve_stream(stream))

    cdef int _used_on(self, size_t stream) except -1:
        if self.pool is None or not self.owns or stream == self.stream_key:
            return 0
        if self.streams is None:
            self.streams = [stream]
        elif stream not in self.streams:
            self.streams.append(stream)
        return 0

    @staticmethod
    def external(ptr, size_t nbytes, owner=None):
        """Wrap device memory cybn does not own; `owner` is kept alive as long as the buffer."""
        cdef DeviceBuffer b = DeviceBuffer(_empty=True)
        b.ptr = int(ptr)
        b.nbytes = nbytes
        b.owner = owner
        return b

    @property
    def owned(self):
        return bool(self.owns)

    def __int__(self):
        return self.ptr

    def __repr__(self):
        src = "pool" if self.pool is not None else ("driver" if self.owns else "external")
        return f"<cybn.DeviceBuffer {self.nbytes} bytes at {self.ptr:#x} ({src})>"


cdef class MemoryPool:
    """Caching allocator: freed blocks go to a free list per (stream, size class) and are handed out
    again without a driver call. A block used on other streams than its own (record_stream, or freed
    while another stream is current) waits for an event on each of them before it is reused. On
    CUDA_ERROR_OUT_OF_MEMORY it frees its cached blocks and retries once."""

    def __cinit__(self):
        self.free_lists = {}
        self.pending = []
        self.used = 0
        self.held = 0

    cdef unsigned long long _take(self, size_t block, size_t stream_key) except 0:
        cdef list blocks = self.free_lists.get((stream_key, block))
        cdef cydriver.CUdeviceptr p = 0
        cdef cydriver.CUresult r
        if not blocks and self.pending:
            self._collect()
            blocks = self.free_lists.get((stream_key, block))
        if blocks:
            p = blocks.pop()
        else:
            ensure_context()
            with nogil:
                r = cydriver.cuMemAlloc(&p, block)
            if r == cydriver.CUDA_ERROR_OUT_OF_MEMORY:
                self.free_all()
                with nogil:
                    r = cydriver.cuMemAlloc(&p, block)
            check(r, "cuMemAlloc")
            self.held += block
        self.used += block
        return p

    cdef void _give_back(self, unsigned long long ptr, size_t block, size_t stream_key, list streams,
                         size_t freeing_stream) noexcept:
        self.used -= block
        cdef list others = list(streams) if streams else []
        if freeing_stream != stream_key and freeing_stream not in others:
            others.append(freeing_stream)
        cdef list events = []
        cdef cydriver.CUevent e
        cdef cydriver.CUresult r = cydriver.CUDA_SUCCESS
        for s in others:  # an event after the work queued on each other stream so far
            e = NULL
            r = cydriver.cuEventCreate(&e, cydriver.CU_EVENT_DISABLE_TIMING)
            if r == cydriver.CUDA_SUCCESS:
                events.append(<size_t>e)
                r = cydriver.cuEventRecord(e, <cydriver.CUstream><size_t>s)
            if r != cydriver.CUDA_SUCCESS:
                break
        if r != cydriver.CUDA_SUCCESS:  # no event (a destroyed stream, no context): wait for everything
            for e_ in events:
                cydriver.cuEventDestroy(<cydriver.CUevent><size_t>e_)
            events = []
            cydriver.cuCtxSynchronize()
        if events:  # its extent shrinks when the other streams are done with it (_collect)
            self.pending.append([ptr, block, stream_key, events])
            return
        try:
            _extent(ptr, 0, stream_key)  # after the work queued on its stream so far
        except Exception:
            pass
        key = (stream_key, block)
        blocks = self.free_lists.get(key)
        if blocks is None:
            self.free_lists[key] = [ptr]
        else:
            blocks.append(ptr)

    cdef void _collect(self) noexcept:
        """Pending blocks whose events have all completed go back to their stream's free list."""
        # Take the list first: _extent is a ctypes call that releases the GIL, so another thread's
        # _take/free_all may run _collect meanwhile; iterating a shared list let both move the same
        # block to the free list (one block handed out twice, then freed twice by free_all).
        cdef list items = self.pending
        self.pending = []
        cdef list still = []
        cdef bint done
        for item in items:
            done = True
            for e in item[3]:
                if cydriver.cuEventQuery(<cydriver.CUevent><size_t>e) != cydriver.CUDA_SUCCESS:
                    done = False
                    break
            if not done:
                still.append(item)
                continue
            for e in item[3]:
                cydriver.cuEventDestroy(<cydriver.CUevent><size_t>e)
            try:
                _extent(item[0], 0, item[2])
            except Exception:
                pass
            self.free_lists.setdefault((item[2], item[1]), []).append(item[0])
        if still:  # blocks freed by other threads meanwhile are in self.pending already
            self.pending.extend(still)

    cpdef DeviceBuffer malloc(self, size_t nbytes, stream=None):
        """A DeviceBuffer of at least nbytes, reused from the free list of `stream` (default: current)."""
        cdef DeviceBuffer b = DeviceBuffer(_empty=True)
        if nbytes == 0:
            return b
        b.block = size_class(nbytes)
        b.stream_key = <size_t>resolve_stream(stream)
        b.ptr = self._take(b.block, b.stream_key)
        b.pool = self
        b.nbytes = nbytes
        b.owns = True
        _extent(b.ptr, nbytes, b.stream_key)
        return b

    def free_all(self):
        """Return every cached (unused) block to the driver, after the other-stream work of pending ones.
        Blocks in use are not touched."""
        if not self.free_lists and not self.pending:
            return
        ensure_context()
        for item in self.pending:
            for e in item[3]:
                cydriver.cuEventSynchronize(<cydriver.CUevent><size_t>e)
        self._collect()
        lists, self.free_lists = self.free_lists, {}
        cdef unsigned long long p
        errors = []
        for (stream_key, block), blocks in lists.items():
            for p in blocks:
                r = cydriver.cuMemFree(p)
                self.held -= block
                if r != cydriver.CUDA_SUCCESS:
                    errors.append(r)
        if errors:
            check(errors[0], "cuMemFree")

    @property
    def used_bytes(self):
        """Bytes in blocks currently handed out (size-class rounded)."""
        return self.used

    @property
    def held_bytes(self):
        """Bytes this pool holds from the driver: in use plus cached."""
        return self.held

    @property
    def cached_bytes(self):
        """Bytes in free blocks waiting for reuse (held_bytes - used_bytes)."""
        return self.held - self.used

    @property
    def free_blocks(self):
        """Cached blocks: reusable now, or once the other streams they were used on reach their events."""
        return sum(len(v) for v in self.free_lists.values()) + len(self.pending)

    def __repr__(self):
        return f"<cybn.MemoryPool used={self.used} held={self.held} free_blocks={self.free_blocks}>"


cdef MemoryPool default_pool_c():
    cdef int ordinal = current_ordinal()
    pool = _default_pools.get(ordinal)
    if pool is None:
        pool = _default_pools[ordinal] = MemoryPool()
    return pool


def default_pool():
    """The calling thread's device's pool: GPUArray and the Modules allocate from it."""
    return default_pool_c()


cdef class PinnedBuffer:
    """Page-locked host memory (cuMemHostAlloc): the host side of truly asynchronous copies.
    Supports the buffer protocol; .array(dtype, shape) is a numpy view of it."""

    def __cinit__(self, size_t nbytes):
        self.ptr_ = NULL
        self.nbytes = nbytes
        if nbytes == 0:
            return
        ensure_context()
        with nogil:
            check(cydriver.cuMemHostAlloc(&self.ptr_, nbytes, 0), "cuMemHostAlloc")

    def __dealloc__(self):
        if self.ptr_ != NULL:
            try:
                ensure_context()
                cydriver.cuMemFreeHost(self.ptr_)
            except Exception:
                pass

    @property
    def ptr(self):
        return <size_t>self.ptr_

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr_, self.nbytes, 0, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def array(self, dtype=np.uint8, shape=None):
        """A numpy array viewing this memory (shape None: as many items as fit)."""
        dtype = np.dtype(dtype)
        if shape is None:
            shape = (self.nbytes // dtype.itemsize,)
        elif isinstance(shape, int):
            shape = (shape,)
        shape = tuple(int(d) for d in shape)
        count = 1
        for d in shape:
            if d < 0:
                raise ValueError(f"PinnedBuffer.array: negative dimension in shape {shape}")
            count *= d
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"PinnedBuffer.array: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
                             f"the buffer has {self.nbytes}")
        return np.frombuffer(self, dtype=dtype, count=count).reshape(shape)

    def __len__(self):
        return self.nbytes

    def __repr__(self):
        return f"<cybn.PinnedBuffer {self.nbytes} bytes at {<size_t>self.ptr_:#x}>"
