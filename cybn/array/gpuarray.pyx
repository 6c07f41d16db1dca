# distutils: language = c++
"""GPUArray: a C-contiguous n-d array in device memory, with zero-copy interop
(__cuda_array_interface__ v3, DLPack) and wrapping of external device pointers."""
import numpy as np

from cpython.pycapsule cimport (PyCapsule_New, PyCapsule_IsValid, PyCapsule_GetPointer, PyCapsule_SetName,
                                PyCapsule_CheckExact)
from cpython.ref cimport Py_INCREF, Py_DECREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport malloc, free

from cuda.bindings cimport cydriver
from cybn.driver.device cimport ensure_context, current_ordinal
from cybn.driver.memory cimport DeviceBuffer, default_pool_c
from cybn.driver.status cimport check
from cybn.driver.function cimport register_pointer_type
from cybn.driver.stream cimport Stream, resolve_stream, current_stream_c

_KINDS = "biufc"


def _as_dtype(dtype):
    dt = np.dtype(dtype)
    if dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None or not dt.isnative:
        raise TypeError(f"unsupported dtype {dt!r}: GPUArray holds bool, integer, float or complex "
                        f"numbers in native byte order")
    return dt


def _as_shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        if isinstance(shape, (str, bytes)) or any(not isinstance(d, (int, np.integer)) for d in shape):
            raise TypeError
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


# Bytes per element are at most 32 (clongdouble): below this many elements, nbytes fits in Py_ssize_t.
cdef Py_ssize_t _MAX_ELEMENTS = (<Py_ssize_t>1 << 58)


cdef Py_ssize_t _prod(tuple shape) except -1:
    # Python ints: a C product would silently wrap (2**32 x 2**32 -> 0 elements) and hand out a tiny buffer.
    n = 1
    for d in shape:
        n *= d
    if n > _MAX_ELEMENTS:
        raise ValueError(f"shape {shape} has {n} elements: too large for device memory")
    return n


cdef GPUArray wrap(DeviceBuffer buf, unsigned long long ptr, tuple shape, object dtype):
    cdef GPUArray a = GPUArray.__new__(GPUArray)
    a.shape = shape
    a.dtype = dtype
    a.gpudata = buf
    a.ptr_ = ptr
    a.itemsize = dtype.itemsize
    a.size = _prod(shape)
    a.nbytes = a.size * a.itemsize
    return a


cdef GPUArray _alloc(tuple shape, dtype, stream=None):
    cdef Py_ssize_t size = _prod(shape)
    cdef DeviceBuffer buf = default_pool_c().malloc(size * dtype.itemsize, stream)
    return wrap(buf, buf.ptr, shape, dtype)


cdef class GPUArray:
    """GPUArray(shape, dtype=float32, gpudata=None): uninitialised memory from default_pool(), or a
    view of `gpudata` (a DeviceBuffer of at least the array's nbytes)."""

    def __init__(self, shape, dtype=np.float32, DeviceBuffer gpudata=None):
        shape = _as_shape(shape)
        dtype = _as_dtype(dtype)
        cdef Py_ssize_t nbytes = _prod(shape) * dtype.itemsize
        if gpudata is None:
            gpudata = default_pool_c().malloc(nbytes)
        elif gpudata.nbytes < <size_t>nbytes:
            raise ValueError(f"gpudata has {gpudata.nbytes} bytes, shape {shape} of {dtype} needs {nbytes}")
        self.shape = shape
        self.dtype = dtype
        self.gpudata = gpudata
        self.ptr_ = gpudata.ptr
        self.itemsize = dtype.itemsize
        self.size = _prod(shape)
        self.nbytes = nbytes

    @staticmethod
    def from_pointer(ptr, shape, dtype, owner):
        """Wrap external device memory (no copy); `owner` is kept alive while any view exists."""
        shape = _as_shape(shape)
        dtype = _as_dtype(dtype)
        ptr = int(ptr)
        cdef Py_ssize_t nbytes = _prod(shape) * dtype.itemsize
        if ptr == 0 and nbytes:
            raise ValueError("from_pointer: NULL pointer for a non-empty array")
        if ptr % dtype.alignment:
            raise ValueError(f"from_pointer: pointer {ptr:#x} is not aligned to {dtype} ({dtype.alignment} bytes)")
        buf = DeviceBuffer.external(ptr, nbytes, owner)
        return wrap(buf, ptr, shape, dtype)

    # ---------------------------------------------------------------- properties
    @property
    def ptr(self):
        return self.ptr_

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def strides(self):
        strides = []
        cdef Py_ssize_t s = self.itemsize
        for d in reversed(self.shape):
            strides.append(s)
            s *= max(d, 1)
        return tuple(reversed(strides))

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d GPUArray")
        return self.shape[0]

    def __repr__(self):
        return "GPUArray(" + np.array2string(self.get(), separator=", ", prefix="GPUArray(") + \
            f", dtype={self.dtype.name})"

    def __str__(self):
        # As PyCUDA's and PuzzleLib's GPUArray: print(a) shows the values as numpy prints them.
        return str(self.get())

    # ---------------------------------------------------------------- copies
    def __reduce__(self):
        # pickle and copy.deepcopy copy the device data (through the host; waits for the current stream's
        # work); the copy is a new, contiguous array on the current device. A shallow copy.copy does the same.
        return to_gpu, (self.get(),)

    def get(self, ary=None, stream=None, async_=False, out=None):
        """Copy to the host: into `ary` (or `out`, the same; a C-contiguous numpy array of the same shape and
        dtype) or a new array. async_=True only enqueues the copy (host memory must be pinned, e.g.
        PinnedBuffer.array, and not read before the stream is synchronised)."""
        if out is not None:
            if ary is not None:
                raise TypeError("get: pass the destination as ary or out, not both")
            ary = out
        if ary is None:
            ary = np.empty(self.shape, self.dtype)
        else:
            _check_host(ary, self, "get")
            if not ary.flags.writeable:
                raise ValueError("get: the destination array is read-only")
        cdef cydriver.CUstream s = resolve_stream(stream)
        cdef size_t dst = ary.ctypes.data
        cdef size_t n = self.nbytes
        cdef unsigned long long src = self.ptr_
        cdef bint wait = not async_
        if n:
            ensure_context()
            with nogil:
                check(cydriver.cuMemcpyDtoHAsync(<void*>dst, src, n, s), "cuMemcpyDtoHAsync")
                if wait:
                    check(cydriver.cuStreamSynchronize(s), "cuStreamSynchronize")
        return ary

    def set(self, ary, stream=None, async_=False):
        """Copy from a host array (numpy; made contiguous if it is not) or another GPUArray of the same
        shape and dtype. async_: see get()."""
        if isinstance(ary, GPUArray):
            _check_same(self, ary, "set")
            _copy_d2d(self.ptr_, (<GPUArray>ary).ptr_, self.nbytes, stream)
            return self
        if not isinstance(ary, np.ndarray):
            raise TypeError(f"set: expected a numpy array or GPUArray, got {type(ary).__name__}")
        ary = np.asarray(ary, order="C")  # not ascontiguousarray: it turns a 0-d array into shape (1,)
        _check_host(ary, self, "set")
        cdef cydriver.CUstream s = resolve_stream(stream)
        cdef size_t src = ary.ctypes.data
        cdef size_t n = self.nbytes
        cdef unsigned long long dst = self.ptr_
        cdef bint wait = not async_
        if n:
            ensure_context()
            with nogil:
                check(cydriver.cuMemcpyHtoDAsync(dst, <const void*>src, n, s), "cuMemcpyHtoDAsync")
                if wait:  # the source may be a temporary (or pinned) array: finish before returning
                    check(cydriver.cuStreamSynchronize(s), "cuStreamSynchronize")
        return self

    def copy(self, stream=None):
        """A new array with the same contents (device-to-device copy)."""
        cdef GPUArray out = _alloc(self.shape, self.dtype, stream)
        _copy_d2d(out.ptr_, self.ptr_, self.nbytes, stream)
        return out

    def fill(self, value, stream=None):
        """Set every element to `value` (converted to the dtype as numpy would). Returns self."""
        from cybn.array import elementwise
        elementwise.fill(self, value, stream=stream)
        return self

    def astype(self, dtype, stream=None):
        """A converted copy (float16/float32/float64 on the device; same dtype: a copy)."""
        dtype = _as_dtype(dtype)
        if dtype == self.dtype:
            return self.copy(stream)
        from cybn.array import elementwise
        for what, dt in (("from", self.dtype), ("to", dtype)):
            if not elementwise.can_cast(dt):  # refused before anything is allocated
                raise TypeError(f"astype: cannot cast {what} {dt} (float16, float32 and float64 convert; "
                                f"any dtype copies to itself)")
        out = _alloc(self.shape, dtype, stream)
        elementwise.cast(self, out, stream=stream)
        return out

    # ---------------------------------------------------------------- views
    def reshape(self, *shape):
        """A view with a new shape (one dimension may be -1)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        if isinstance(shape, (str, bytes)) or any(not isinstance(d, (int, np.integer)) for d in shape):
            raise TypeError(f"reshape: expected ints, got {shape!r}")
        shape = tuple(int(d) for d in shape)
        unknown = [i for i, d in enumerate(shape) if d == -1]
        if len(unknown) > 1 or any(d < -1 for d in shape):
            raise ValueError(f"reshape: invalid shape {shape} (at most one -1, no other negatives)")
        known = 1
        for d in shape:
            if d != -1:
                known *= d
        if unknown:
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
            shape = shape[:unknown[0]] + (self.size // known,) + shape[unknown[0] + 1:]
        elif known != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
        return wrap(self.gpudata, self.ptr_, shape, self.dtype)

    def ravel(self):
        return wrap(self.gpudata, self.ptr_, (self.size,), self.dtype)

    def view(self, dtype):
        """The same bytes as another dtype (the last dimension scales, as numpy's view)."""
        dtype = _as_dtype(dtype)
        if dtype.itemsize == self.itemsize:
            return wrap(self.gpudata, self.ptr_, self.shape, dtype)
        if not self.shape:
            raise ValueError(f"view: cannot view a 0-d {self.dtype} array as {dtype} (different itemsize)")
        last = self.shape[-1] * self.itemsize
        if last % dtype.itemsize:
            raise ValueError(f"view: last dimension ({self.shape[-1]} x {self.itemsize} bytes) is not a "
                             f"multiple of {dtype}'s {dtype.itemsize} bytes")
        if self.ptr_ % dtype.alignment:
            raise ValueError(f"view: data is not aligned to {dtype}")
        return wrap(self.gpudata, self.ptr_, self.shape[:-1] + (last // dtype.itemsize,), dtype)

    def __getitem__(self, key):
        """Basic indexing as numpy's (ints, slices with any step, ..., None). A result that is contiguous in
        memory (a[i], a[i:j], a[i, j:k] on the last axis, ...) is a view sharing this array's memory; any
        other (a[:, ::2], a[:, 1:3] of a 2-d array) is a copy, since a GPUArray is always C-contiguous."""
        offset, shape, strides = _index(self.shape, key)
        if _is_c_contiguous(shape, strides, 1):
            return wrap(self.gpudata, self.ptr_ + offset * self.itemsize, shape, self.dtype)
        from cybn.array import elementwise
        out = _alloc(shape, self.dtype, None)
        return elementwise.strided_copy(self, offset, strides, out, 0, _elem_strides(shape), shape)

    def __setitem__(self, key, value):
        """a[key] = value: a scalar, a numpy array or a GPUArray of the selection's shape (numpy arrays and
        scalars broadcast to it), written in place."""
        cdef GPUArray src
        offset, shape, strides = _index(self.shape, key)
        if isinstance(value, GPUArray):
            src = <GPUArray>value
            if src.shape != shape or src.dtype != self.dtype:
                raise ValueError(f"setitem: the value is {src.shape} {src.dtype}, the selection is {shape} "
                                 f"{self.dtype} (same shape and dtype; convert with .astype)")
            if src.ptr_ < self.ptr_ + self.nbytes and self.ptr_ < src.ptr_ + src.nbytes:
                src = src.copy()  # a[1:] = a[:-1]: read everything before anything is overwritten
            if _is_c_contiguous(shape, strides, 1):
                wrap(self.gpudata, self.ptr_ + offset * self.itemsize, shape, self.dtype).set(src)
                return
        elif _is_c_contiguous(shape, strides, 1) and np.ndim(value) == 0 and self.dtype.itemsize <= 8:
            wrap(self.gpudata, self.ptr_ + offset * self.itemsize, shape, self.dtype).fill(value)
            return
        else:
            src = to_gpu(np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=self.dtype), shape)))
        from cybn.array import elementwise
        elementwise.strided_copy(src, 0, _elem_strides(shape), self, offset, strides, shape)

    def transpose(self, *axes):
        """A transposed copy (numpy's axes argument; default: reversed). A GPUArray is always C-contiguous,
        so unlike numpy's (and PyCUDA's) this copies, except for 0-d and 1-d arrays (returned as views)."""
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = tuple(axes[0]) if axes[0] is not None else ()
        nd = len(self.shape)
        axes = tuple(range(nd))[::-1] if not axes else tuple(int(a) + nd if a < 0 else int(a) for a in axes)
        if sorted(axes) != list(range(nd)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {nd} dimensions")
        shape = tuple(self.shape[a] for a in axes)
        if nd <= 1 or axes == tuple(range(nd)):
            return wrap(self.gpudata, self.ptr_, shape, self.dtype)
        from cybn.array import elementwise
        src = _elem_strides(self.shape)
        out = _alloc(shape, self.dtype, None)
        return elementwise.strided_copy(self, 0, tuple(src[a] for a in axes), out, 0, _elem_strides(shape), shape)

    @property
    def T(self):
        """transpose(): a copy for 2-d and more dimensions (see transpose)."""
        return self.transpose()

    # ---------------------------------------------------------------- arithmetic
    # float16/32/64, with a real scalar or a GPUArray of the same shape and dtype (cybn.elementwise.arithmetic).
    # numpy defers to these operators (np.float32(2) * a is a GPUArray; a + host_array is a TypeError).
    __array_ufunc__ = None

    def __add__(self, other):
        return _arith("add", self, other, False)

    def __radd__(self, other):
        return _arith("add", self, other, False)

    def __sub__(self, other):
        return _arith("sub", self, other, False)

    def __rsub__(self, other):
        return _arith("rsub", self, other, False)

    def __mul__(self, other):
        return _arith("mul", self, other, False)

    def __rmul__(self, other):
        return _arith("mul", self, other, False)

    def __truediv__(self, other):
        return _arith("div", self, other, False)

    def __rtruediv__(self, other):
        return _arith("rdiv", self, other, False)

    def __iadd__(self, other):
        return _arith("add", self, other, True)

    def __isub__(self, other):
        return _arith("sub", self, other, True)

    def __imul__(self, other):
        return _arith("mul", self, other, True)

    def __itruediv__(self, other):
        return _arith("div", self, other, True)

    def __neg__(self):
        return _arith("mul", self, -1, False)

    # ---------------------------------------------------------------- interop
    @property
    def __cuda_array_interface__(self):
        cdef Stream s = current_stream_c()
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr_, False), "version": 3,
                "strides": None, "descr": [("", self.dtype.str)],
                # 0 is not allowed in v3 ("ambiguous"): 1 names the legacy default stream.
                "stream": <size_t>s.stream if s.stream != NULL else 1}

    def __dlpack_device__(self):
        return (KDL_CUDA, current_ordinal())

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A "dltensor" capsule (DLPack 0.8 layout). `stream` is the consumer's stream: our current stream's
        work is made visible on it with an event (-1: no synchronisation; 1: legacy; 2: per-thread)."""
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"__dlpack__: cannot export to device {tuple(dl_device)}, the data is on "
                              f"{self.__dlpack_device__()}")
        src = self.copy() if copy else self
        if stream is None:
            stream = 1  # the protocol: no stream given means the consumer uses the legacy default stream
        if stream != -1:
            if not isinstance(stream, int) or stream == 0:
                raise ValueError(f"__dlpack__: stream must be a CUstream int, 1 (legacy), 2 (per-thread) or -1; "
                                 f"0 is ambiguous (got {stream!r})")
            _order_streams(current_stream_c().stream, _consumer_stream(stream))
        return _export_capsule(src)


# ------------------------------------------------------------------------------ module functions
def _arith(op, GPUArray a, other, bint in_place):
    if not isinstance(other, (GPUArray, int, float, np.integer, np.floating)) or isinstance(other, (bool, np.bool_)):
        return NotImplemented
    from cybn.array import elementwise
    return elementwise.arithmetic(op, a, other, out=a if in_place else None)


def _elem_strides(shape):
    """C-contiguous strides of shape, in elements."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _index(shape, key):
    """numpy's basic indexing of a C-contiguous array: -> (offset, shape, strides), in elements."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        used = sum(k is not None for k in key) - 1
        key = key[:i] + (slice(None),) * (len(shape) - used) + key[i + 1:]
    if sum(k is not None for k in key) > len(shape):
        raise IndexError(f"too many indices: {sum(k is not None for k in key)} for {len(shape)} dimensions")
    strides = _elem_strides(shape)
    offset, out_shape, out_strides, dim = 0, [], [], 0
    for k in key + (slice(None),) * (len(shape) - sum(k is not None for k in key)):
        if k is None:
            out_shape.append(1)
            out_strides.append(0)
            continue
        n = shape[dim]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            count = len(range(start, stop, step))
            offset += start * strides[dim] if count else 0
            out_shape.append(count)
            out_strides.append(step * strides[dim])
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {dim} with size {n}")
            offset += (i + n if i < 0 else i) * strides[dim]
        else:
            raise IndexError(f"GPUArray supports basic indexing only (ints, slices, ..., None), got "
                             f"{type(k).__name__}; index on the host with .get()")
        dim += 1
    return offset, tuple(out_shape), tuple(out_strides)


cdef _check_host(ary, GPUArray a, str what):
    if not isinstance(ary, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array, got {type(ary).__name__}")
    if ary.dtype != a.dtype:
        raise TypeError(f"{what}: dtype mismatch: host array is {ary.dtype}, GPUArray is {a.dtype}")
    if ary.shape != a.shape:
        raise ValueError(f"{what}: shape mismatch: host array is {ary.shape}, GPUArray is {a.shape}")
    if not ary.flags.c_contiguous:
        raise ValueError(f"{what}: the host array must be C-contiguous")


cdef _check_same(GPUArray a, GPUArray b, str what):
    if a.dtype != b.dtype:
        raise TypeError(f"{what}: dtype mismatch: {b.dtype} vs {a.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{what}: shape mismatch: {b.shape} vs {a.shape}")


cdef _copy_d2d(unsigned long long dst, unsigned long long src, size_t n, stream):
    cdef cydriver.CUstream s = resolve_stream(stream)
    if n:
        ensure_context()
        with nogil:
            check(cydriver.cuMemcpyDtoDAsync(dst, src, n, s), "cuMemcpyDtoDAsync")


def to_gpu(ary, stream=None):
    """A new GPUArray holding a copy of `ary` (numpy or anything np.asarray accepts; non-contiguous is
    fine). A GPUArray argument is copied on the device."""
    if isinstance(ary, GPUArray):
        return ary.copy(stream)
    if hasattr(ary, "__cuda_array_interface__") and not isinstance(ary, np.ndarray):
        return _from_cai(ary, True).copy(stream)  # only read: read-only data is fine
    ary = np.asarray(ary, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray makes them (1,))
    out = _alloc(ary.shape, _as_dtype(ary.dtype), stream)
    out.set(ary, stream)
    return out


def empty(shape, dtype=np.float32, stream=None):
    return _alloc(_as_shape(shape), _as_dtype(dtype), stream)


def zeros(shape, dtype=np.float32, stream=None):
    cdef GPUArray a = _alloc(_as_shape(shape), _as_dtype(dtype), stream)
    cdef cydriver.CUstream s = resolve_stream(stream)
    if a.nbytes:
        ensure_context()
        with nogil:
            check(cydriver.cuMemsetD8Async(a.ptr_, 0, a.nbytes, s), "cuMemsetD8Async")
    return a


def empty_like(GPUArray a not None, dtype=None, stream=None):
    """An uninitialised array of a's shape (and dtype, unless given), as PyCUDA's gpuarray.empty_like."""
    return _alloc(a.shape, a.dtype if dtype is None else _as_dtype(dtype), stream)


def zeros_like(GPUArray a not None, dtype=None, stream=None):
    """A zeroed array of a's shape (and dtype, unless given), as PyCUDA's gpuarray.zeros_like."""
    return zeros(a.shape, a.dtype if dtype is None else dtype, stream)


cdef cydriver.CUstream _consumer_stream(size_t value):
    # The interop protocols' stream numbers: 1 = legacy default stream, 2 = per-thread default stream.
    if value == 1:
        return <cydriver.CUstream>NULL
    if value == 2:
        return <cydriver.CUstream>cydriver.CU_STREAM_PER_THREAD
    return <cydriver.CUstream>value


cdef _order_streams(cydriver.CUstream producer, cydriver.CUstream consumer):
    """Make work later queued on `consumer` wait for everything queued so far on `producer`."""
    if producer == consumer:
        return
    from cybn.driver.event import Event
    ev = Event(timing=False)
    ev.record(<size_t>producer)
    cdef size_t h = ev.handle
    ensure_context()
    check(cydriver.cuStreamWaitEvent(consumer, <cydriver.CUevent>h, 0), "cuStreamWaitEvent")


def from_cuda_array_interface(obj):
    """Wrap (no copy) a foreign device array exposing __cuda_array_interface__ (v2/v3); it is kept alive.
    Only C-contiguous, writable data is accepted (a GPUArray has no read-only mode; cybn.to_gpu(obj) copies
    read-only data); a v3 `stream` is waited on by the current stream."""
    return _from_cai(obj, False)


def _from_cai(obj, bint readonly_ok):
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{type(obj).__name__} has no __cuda_array_interface__") from None
    shape = _as_shape(cai["shape"])
    dtype = _as_dtype(cai["typestr"])
    if cai.get("mask") is not None:
        raise ValueError("__cuda_array_interface__ with a mask is not supported")
    strides = cai.get("strides")
    if strides is not None and len(strides) != len(shape):
        raise ValueError(f"__cuda_array_interface__: {len(strides)} strides {tuple(strides)} for the "
                         f"{len(shape)} dimensions of shape {shape}")
    if strides is not None and not _is_c_contiguous(shape, tuple(strides), dtype.itemsize):
        raise ValueError(f"__cuda_array_interface__: strides {tuple(strides)} for shape {shape} are not "
                         f"C-contiguous; make a contiguous copy first")
    data = cai.get("data")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"__cuda_array_interface__: data must be a (pointer, readonly) tuple, got {data!r}")
    if data[1] and not readonly_ok:
        raise ValueError("__cuda_array_interface__: the data is read-only and a GPUArray is always writable; "
                         "use cybn.to_gpu(obj) for a copy")
    ptr = int(data[0])
    stream = cai.get("stream")
    if stream is not None:
        if stream == 0:
            raise ValueError("__cuda_array_interface__: stream 0 is not allowed (v3); use 1 for the legacy stream")
        _order_streams(_consumer_stream(stream), current_stream_c().stream)
    return GPUArray.from_pointer(ptr, shape, dtype, obj)


def _is_c_contiguous(shape, strides, itemsize):
    if 0 in shape:
        return True  # no element is ever addressed, so any strides describe the same (empty) array
    expected = itemsize
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


# ------------------------------------------------------------------------------ DLPack
cdef enum:
    KDL_CPU = 1
    KDL_CUDA = 2
    KDL_CUDA_HOST = 3
    KDL_CUDA_MANAGED = 13
    KDL_INT = 0
    KDL_UINT = 1
    KDL_FLOAT = 2
    KDL_COMPLEX = 5
    KDL_BOOL = 6

_DL_DEVICE_NAMES = {1: "kDLCPU", 2: "kDLCUDA", 3: "kDLCUDAHost", 4: "kDLOpenCL", 7: "kDLVulkan", 8: "kDLMetal",
                    10: "kDLROCM", 13: "kDLCUDAManaged", 14: "kDLOneAPI"}
_DL_CODES = {"i": KDL_INT, "u": KDL_UINT, "f": KDL_FLOAT, "c": KDL_COMPLEX, "b": KDL_BOOL}
_DL_KINDS = {v: k for k, v in _DL_CODES.items()}


ctypedef struct DLDevice:
    int32_t device_type
    int32_t device_id

ctypedef struct DLDataType:
    uint8_t code
    uint8_t bits
    uint16_t lanes

ctypedef struct DLTensor:
    void* data
    DLDevice device
    int32_t ndim
    DLDataType dtype
    int64_t* shape
    int64_t* strides
    uint64_t byte_offset

cdef struct DLManagedTensor:
    DLTensor dl_tensor
    void* manager_ctx
    void (*deleter)(DLManagedTensor*) noexcept


cdef void _export_deleter(DLManagedTensor* m) noexcept with gil:
    # manager_ctx holds a reference to the exported GPUArray; shape/strides live in the same block.
    Py_DECREF(<object>m.manager_ctx)
    free(m)


cdef void _capsule_destructor(object capsule) noexcept:
    # Still named "dltensor": nobody consumed it, so the producer (us) must release it.
    cdef DLManagedTensor* m
    if PyCapsule_IsValid(capsule, b"dltensor"):
        m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
        if m.deleter != NULL:
            m.deleter(m)


cdef object _export_capsule(GPUArray a):
    if a.dtype in (np.dtype(np.longdouble), np.dtype(np.clongdouble)):
        raise BufferError(f"__dlpack__: {a.dtype} (x87 extended precision) has no DLPack type")
    cdef int ndim = len(a.shape)
    cdef DLManagedTensor* m = <DLManagedTensor*>malloc(sizeof(DLManagedTensor) + 2 * max(ndim, 1) * sizeof(int64_t))
    if m == NULL:
        raise MemoryError()
    cdef int64_t* dims = <int64_t*>(m + 1)
    cdef int i
    strides = a.strides
    for i in range(ndim):
        dims[i] = a.shape[i]
        dims[ndim + i] = strides[i] // a.itemsize   # DLPack strides count elements
    m.dl_tensor.data = <void*>a.ptr_
    m.dl_tensor.device.device_type = KDL_CUDA
    m.dl_tensor.device.device_id = current_ordinal()
    m.dl_tensor.ndim = ndim
    m.dl_tensor.dtype.code = _DL_CODES[a.dtype.kind]
    m.dl_tensor.dtype.bits = a.itemsize * 8
    m.dl_tensor.dtype.lanes = 1
    m.dl_tensor.shape = dims
    m.dl_tensor.strides = dims + ndim
    m.dl_tensor.byte_offset = 0
    Py_INCREF(a)
    m.manager_ctx = <void*>a
    m.deleter = _export_deleter
    try:
        return PyCapsule_New(m, b"dltensor", _capsule_destructor)
    except BaseException:
        _export_deleter(m)
        raise


cdef class _DLPackOwner:
    """Keeps an imported DLManagedTensor alive; calls its producer's deleter when collected."""
    cdef DLManagedTensor* m

    def __dealloc__(self):
        if self.m != NULL and self.m.deleter != NULL:
            self.m.deleter(self.m)
        self.m = NULL


def from_dlpack(obj):
    """Wrap (no copy) a CUDA array from any object with __dlpack__ or a raw "dltensor" capsule.
    Host (kDLCPU) data is refused (use to_gpu), as are non-contiguous layouts and unsupported dtypes."""
    if PyCapsule_CheckExact(obj):
        capsule = obj
    elif hasattr(obj, "__dlpack__"):
        if hasattr(obj, "__dlpack_device__"):
            dev = tuple(obj.__dlpack_device__())
            if dev[0] not in (KDL_CUDA, KDL_CUDA_MANAGED):
                raise BufferError(f"from_dlpack: {type(obj).__name__} lives on "
                                  f"{_DL_DEVICE_NAMES.get(dev[0], dev[0])}, not a CUDA device; use to_gpu() "
                                  f"for host arrays")
        s = <size_t>current_stream_c().stream
        capsule = obj.__dlpack__(stream=s if s else 1)
    else:
        raise TypeError(f"from_dlpack: {type(obj).__name__} supports neither __dlpack__ nor is a DLPack capsule")
    if not PyCapsule_IsValid(capsule, b"dltensor"):
        raise ValueError("from_dlpack: not an unconsumed \"dltensor\" capsule (already used, or a versioned one)")
    cdef DLManagedTensor* m = <DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor")
    cdef DLTensor* t = &m.dl_tensor
    cdef int i
    if t.device.device_type not in (KDL_CUDA, KDL_CUDA_MANAGED):
        raise BufferError(f"from_dlpack: the tensor is on {_DL_DEVICE_NAMES.get(t.device.device_type, t.device.device_type)}"
                          f", not a CUDA device; use to_gpu() for host arrays")
    dtype = None
    if t.dtype.lanes == 1 and t.dtype.code in _DL_KINDS and t.dtype.bits % 8 == 0:
        try:
            dtype = np.dtype(f"{_DL_KINDS[t.dtype.code]}{t.dtype.bits // 8}")  # kDLBool: 8 bits, numpy's bool
        except TypeError:  # sizes numpy has no type for, e.g. float8 or int24
            pass
        if dtype is not None and dtype in (np.dtype(np.longdouble), np.dtype(np.clongdouble)):
            dtype = None  # DLPack's 128-bit float is IEEE binary128, numpy's 'f16' is x87 extended precision
    if dtype is None:
        raise TypeError(f"from_dlpack: unsupported DLPack dtype (code {t.dtype.code}, bits {t.dtype.bits}, "
                        f"lanes {t.dtype.lanes})")
    dtype = _as_dtype(dtype)
    if t.ndim < 0:
        raise ValueError(f"from_dlpack: negative ndim {t.ndim}")
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if t.strides != NULL:
        strides = tuple(t.strides[i] * dtype.itemsize for i in range(t.ndim))
        if not _is_c_contiguous(shape, strides, dtype.itemsize):
            raise ValueError(f"from_dlpack: strides {tuple(t.strides[i] for i in range(t.ndim))} (elements) for "
                             f"shape {shape} are not C-contiguous; make a contiguous copy first")
    ptr = <size_t>t.data + t.byte_offset
    owner = _DLPackOwner()
    # Renaming marks the capsule consumed: from here on the owner's __dealloc__ calls the deleter.
    PyCapsule_SetName(capsule, b"used_dltensor")
    (<_DLPackOwner>owner).m = m
    return GPUArray.from_pointer(ptr, shape, dtype, owner)


cdef unsigned long long _pointer_of(object a) except? 0:
    return (<GPUArray>a).ptr_


register_pointer_type(GPUArray, _pointer_of)  # kernel launches take a GPUArray argument as its pointer
