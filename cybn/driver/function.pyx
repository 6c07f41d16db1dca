# distutils: language = c++
"""Loaded modules and typed kernel launches.

A Function's signature (one char per argument: P pointer, i int32, I uint32, q int64, Q uint64,
f float32, d float64) is turned into slot offsets once; a call packs the arguments straight into a
C buffer on the stack in one C loop and hands the driver pointers into it, so nothing is launched
unless every argument converted."""
from cpython.long cimport PyLong_AsLongLong, PyLong_AsUnsignedLongLong, PyLong_AsLongLongAndOverflow
from cpython.float cimport PyFloat_AsDouble
from cpython.number cimport PyIndex_Check, PyNumber_Index
from cpython.object cimport PyObject, PyTypeObject
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.stdint cimport int32_t, uint32_t, int64_t, uint64_t
from libc.math cimport isinf
from libc.string cimport memcpy

from cuda.bindings cimport cydriver
from cybn.driver.device cimport ensure_context
from cybn.driver.status cimport check
from cybn.driver.stream cimport resolve_stream
from cybn.driver.memory cimport DeviceBuffer

_CODE_NAMES = {"P": "pointer", "i": "int32", "I": "uint32", "q": "int64", "Q": "uint64",
               "f": "float32", "d": "float64"}
_CODE_SIZES = {"P": 8, "i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}


cdef class Module:
    """A CUmodule loaded in the current context from a PTX/CUBIN image (cuModuleLoadData)."""

    def __init__(self):
        raise TypeError("use Module.from_image(image_bytes)")

    @staticmethod
    def from_image(image):
        """Load a compiled image (PTX text or CUBIN bytes) into the current device's context."""
        if isinstance(image, str):
            image = image.encode()
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise TypeError(f"Module.from_image: expected bytes, got {type(image).__name__}")
        cdef bytes data = bytes(image)  # bytes objects are NUL-terminated, as PTX text must be
        if not data:
            raise ValueError("Module.from_image: empty image")
        cdef Module m = Module.__new__(Module)
        m.ctx = ensure_context()
        m.functions = {}
        cdef const char* p = data
        with nogil:
            check(cydriver.cuModuleLoadData(&m.mod, p), "cuModuleLoadData")
        return m

    def __dealloc__(self):
        if self.mod != NULL:
            try:
                ensure_context()
                cydriver.cuModuleUnload(self.mod)
            except Exception:
                pass

    @property
    def handle(self):
        return <size_t>self.mod

    def function(self, name, signature, label=None):
        """The kernel `name` (its symbol: an extern "C" name or a lowered mangled name) typed by
        `signature`; `label` (default: name) is what error messages call it, e.g. the template expression.
        The same (name, signature) returns the same Function."""
        key = (name, signature)
        f = self.functions.get(key)
        if f is None:
            f = self.functions[key] = _make_function(self, name, signature, label or name)
        return f

    def get_global(self, name):
        """(device pointer, size in bytes) of a module-scope __device__/__constant__ variable."""
        cdef cydriver.CUdeviceptr p = 0
        cdef size_t size = 0
        cdef bytes bname = name.encode()
        ensure_context()
        check(cydriver.cuModuleGetGlobal(&p, &size, self.mod, bname), "cuModuleGetGlobal")
        return p, size


cdef int parse_dims(object d, unsigned int* out, const char* what) except -1:
    cdef Py_ssize_t i, n
    cdef long long v
    cdef int overflow = 0
    out[0] = out[1] = out[2] = 1
    if type(d) is int:
        v = PyLong_AsLongLongAndOverflow(d, &overflow)  # beyond 64 bits: overflow set, no exception
        if overflow or v < 1 or v > 0xFFFFFFFF:
            raise ValueError(f"{what.decode()} must be a positive int below 2**32 (got {d})")
        out[0] = <unsigned int>v
        return 0
    if not isinstance(d, tuple) or not 1 <= len(d) <= 3:
        raise TypeError(f"{what.decode()} must be an int or a tuple of 1 to 3 ints, got {d!r}")
    n = len(d)
    for i in range(n):
        if not isinstance(d[i], int):
            raise TypeError(f"{what.decode()} must be an int or a tuple of 1 to 3 ints, got {d!r}")
        v = PyLong_AsLongLongAndOverflow(d[i], &overflow)
        if overflow or v < 1 or v > 0xFFFFFFFF:
            raise ValueError(f"{what.decode()} dimensions must be positive and below 2**32, got {d!r}")
        out[i] = <unsigned int>v
    return 0


cdef type _array_type = None         # the registered array type (GPUArray) and how to read its pointer
cdef pointer_of_t _array_pointer = NULL


cdef void register_pointer_type(type t, pointer_of_t pointer_of) noexcept:
    global _array_type, _array_pointer
    _array_pointer = pointer_of
    _array_type = t


cdef inline unsigned long long _pointer(object o) except? 0:
    if type(o) is int:
        return PyLong_AsUnsignedLongLong(o)
    if type(o) is _array_type:
        return _array_pointer(o)
    if type(o) is DeviceBuffer:
        return (<DeviceBuffer>o).ptr
    if o is None:
        return 0  # NULL, for optional pointer arguments
    if isinstance(o, int):
        return PyLong_AsUnsignedLongLong(o)
    p = getattr(o, "ptr", None)
    if p is None and PyIndex_Check(o):  # numpy integers and other int-likes
        p = PyNumber_Index(o)
    if p is None:
        raise TypeError(f"expected a device pointer (int, DeviceBuffer, GPUArray or an object with .ptr), "
                        f"got {type(o).__name__}")
    return PyLong_AsUnsignedLongLong(p)


cdef Function _make_function(Module module, str symbol, str signature, str name):
    if not isinstance(signature, str) or any(c not in _CODE_SIZES for c in signature):
        raise ValueError(f"kernel {name}: bad signature {signature!r}: one char per argument, from "
                         + ", ".join(f"{k}={v}" for k, v in _CODE_NAMES.items()))
    if len(signature) > MAX_KERNEL_ARGS:
        raise ValueError(f"kernel {name}: {len(signature)} arguments, at most {MAX_KERNEL_ARGS} supported")
    cdef Function f = Function.__new__(Function)
    cdef int off = 0, size, i
    for i, c in enumerate(signature):
        size = _CODE_SIZES[c]
        off = (off + size - 1) // size * size  # natural alignment, as the kernel's .param layout
        f.codes[i] = ord(c)
        f.offsets[i] = off
        off += size
    if off > MAX_PARAM_BYTES:
        raise ValueError(f"kernel {name}: {off} bytes of parameters, at most {MAX_PARAM_BYTES}")
    f.vectorcall = <void*>_function_vectorcall
    f.nargs = len(signature)
    f.param_bytes = off
    f.name = name
    f.signature = signature
    f.module = module
    cdef bytes bname = symbol.encode()
    ensure_context()
    check(cydriver.cuModuleGetFunction(&f.func, module.mod, bname), "cuModuleGetFunction")
    return f


cdef class Function:
    """A kernel with a fixed argument signature; call it as f(grid, block, args, shared_mem=0,
    stream=None, cooperative=False)."""

    def __init__(self):
        raise TypeError("Functions come from Module.function(name, signature) or cybn.kernels.get_function")

    @property
    def handle(self):
        return <size_t>self.func

    cdef int pack(self, tuple args, unsigned long long* buf, void** ptrs) except -1:
        cdef Py_ssize_t n = PyTuple_GET_SIZE(args)
        cdef int i = 0
        cdef char* base = <char*>buf
        cdef object o
        cdef char c
        cdef long long sv
        cdef unsigned long long uv
        cdef int32_t i32
        cdef uint32_t u32
        cdef float f32
        cdef double f64
        if n != self.nargs:
            raise TypeError(f"kernel {self.name} takes {self.nargs} arguments (signature {self.signature!r}), "
                            f"got {n}")
        try:
            while i < n:
                o = <object>PyTuple_GET_ITEM(args, i)
                c = self.codes[i]
                ptrs[i] = base + self.offsets[i]
                if c == b'P':
                    uv = _pointer(o)
                    memcpy(ptrs[i], &uv, 8)
                elif c == b'f':
                    f64 = PyFloat_AsDouble(o)
                    f32 = <float>f64
                    if isinf(f32) and not isinf(f64):
                        raise OverflowError(f"{f64} does not fit in float32")
                    memcpy(ptrs[i], &f32, 4)
                elif c == b'd':
                    f64 = PyFloat_AsDouble(o)
                    memcpy(ptrs[i], &f64, 8)
                elif c == b'i':
                    sv = PyLong_AsLongLong(o)
                    if sv < -2147483648 or sv > 2147483647:
                        raise OverflowError(f"{sv} does not fit in int32")
                    i32 = <int32_t>sv
                    memcpy(ptrs[i], &i32, 4)
                elif c == b'I':
                    sv = PyLong_AsLongLong(o)
                    if sv < 0 or sv > 4294967295:
                        raise OverflowError(f"{sv} does not fit in uint32")
                    u32 = <uint32_t>sv
                    memcpy(ptrs[i], &u32, 4)
                elif c == b'q':
                    sv = PyLong_AsLongLong(o)
                    memcpy(ptrs[i], &sv, 8)
                else:  # 'Q'
                    uv = PyLong_AsUnsignedLongLong(o)
                    memcpy(ptrs[i], &uv, 8)
                i += 1
        except (TypeError, ValueError, OverflowError) as e:
            code = chr(self.codes[i])
            raise type(e)(f"kernel {self.name} argument {i} ({_CODE_NAMES[code]} '{code}'): {e}") from None
        return 0

    cdef int launch(self, const unsigned int* grid, const unsigned int* block, unsigned int shared_mem,
                    cydriver.CUstream stream, void** params, bint cooperative) except -1 nogil:
        if cooperative:
            return check(cydriver.cuLaunchCooperativeKernel(self.func, grid[0], grid[1], grid[2],
                                                            block[0], block[1], block[2], shared_mem,
                                                            stream, params), "cuLaunchCooperativeKernel")
        return check(cydriver.cuLaunchKernel(self.func, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                             shared_mem, stream, params, NULL), "cuLaunchKernel")

    def __call__(self, grid, block, args, shared_mem=0, stream=None, cooperative=False):
        """Launch on `stream` (None: the current stream). Arguments are checked and packed first."""
        return self.call(grid, block, args, shared_mem, stream, cooperative)

    cdef object call(self, object grid, object block, object args, object shared_mem, object stream,
                     object cooperative):
        cdef unsigned long long buf[MAX_PARAM_WORDS]
        cdef void* ptrs[MAX_KERNEL_ARGS]
        cdef unsigned int g[3]
        cdef unsigned int b[3]
        if type(args) is not tuple:
            if not isinstance(args, (tuple, list)):
                raise TypeError(f"kernel {self.name}: args must be a tuple, got {type(args).__name__}")
            args = tuple(args)
        parse_dims(grid, g, b"grid")
        parse_dims(block, b, b"block")
        # The limits of every GPU since compute capability 3.0, checked here so that a bad launch names the
        # dimension at fault instead of coming back as the driver's bare CUDA_ERROR_INVALID_VALUE.
        if b[0] > 1024 or b[1] > 1024 or b[2] > 64 or b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"kernel {self.name}: block {tuple(b)} exceeds the limits (x, y <= 1024, z <= 64, "
                             f"at most 1024 threads per block)")
        if g[0] > 0x7FFFFFFF or g[1] > 65535 or g[2] > 65535:
            raise ValueError(f"kernel {self.name}: grid {tuple(g)} exceeds the limits (x <= 2**31 - 1, "
                             f"y, z <= 65535)")
        cdef unsigned int smem = 0
        cdef long long smem_v
        cdef int overflow = 0
        if shared_mem is not None:
            if type(shared_mem) is not int:  # a float would be truncated silently by the C conversion
                if not PyIndex_Check(shared_mem):
                    raise TypeError(f"kernel {self.name}: shared_mem must be an int (bytes), got {shared_mem!r}")
                shared_mem = PyNumber_Index(shared_mem)
            smem_v = PyLong_AsLongLongAndOverflow(shared_mem, &overflow)  # C compare: this is the launch path
            if overflow or smem_v < 0 or smem_v > 0xFFFFFFFF:
                raise OverflowError(f"kernel {self.name}: shared_mem must be from 0 to 2**32 - 1 bytes, "
                                    f"got {shared_mem}")
            smem = <unsigned int>smem_v
        cdef bint coop = cooperative
        self.pack(<tuple>args, buf, ptrs)
        cdef cydriver.CUstream s = resolve_stream(stream)
        ensure_context()
        with nogil:
            self.launch(g, b, smem, s, ptrs, coop)

    @property
    def attributes(self):
        """max_threads_per_block, num_regs, shared_size_bytes, local_size_bytes, const_size_bytes."""
        return {"max_threads_per_block": self._attr(cydriver.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
                "num_regs": self._attr(cydriver.CU_FUNC_ATTRIBUTE_NUM_REGS),
                "shared_size_bytes": self._attr(cydriver.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
                "local_size_bytes": self._attr(cydriver.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES),
                "const_size_bytes": self._attr(cydriver.CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES)}

    def _attr(self, int attr):
        cdef int v = 0
        ensure_context()
        check(cydriver.cuFuncGetAttribute(&v, <cydriver.CUfunction_attribute>attr, self.func), "cuFuncGetAttribute")
        return v

    def set_max_dynamic_shared(self, int nbytes):
        """Opt in to more than 48 KiB of dynamic shared memory (up to the device's limit)."""
        if nbytes < 0:
            raise ValueError(f"set_max_dynamic_shared: nbytes must be >= 0, got {nbytes}")
        ensure_context()
        check(cydriver.cuFuncSetAttribute(self.func, cydriver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                          nbytes), "cuFuncSetAttribute")

    def __repr__(self):
        return f"<cybn.Function {self.name}({self.signature})>"


# ------------------------------------------------------------------------------ vectorcall
# Calling an extension type goes through tp_call, which makes Python build an argument tuple and, for
# f(..., stream=s), a keyword dict on every launch: more than the launch's own host cost. Functions
# therefore also take PEP 590 vectorcalls (arguments as a C array, keyword names as a tuple).
cdef extern from "Python.h":
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    ctypedef struct TypeSlots "PyTypeObject":  # the two slots Cython's PyTypeObject doesn't declare
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    void PyType_Modified(PyTypeObject* t)

_CALL_NAMES = ("grid", "block", "args", "shared_mem", "stream", "cooperative")
cdef object _ZERO = 0, _FALSE = False


cdef inline Py_ssize_t _keyword_index(object name):
    # keyword names arrive interned, so identity usually settles it
    if name is "stream":
        return 4
    if name is "shared_mem":
        return 3
    if name is "cooperative":
        return 5
    for i, known in enumerate(_CALL_NAMES):
        if name == known:
            return i
    return -1


cdef object _function_vectorcall(object self, PyObject** argv, size_t nargsf, PyObject* kwnames):
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), i, j
    # borrowed references: argv outlives this call; the defaults live in module globals
    cdef PyObject* vals[6]
    vals[0] = vals[1] = vals[2] = vals[4] = NULL
    vals[3] = <PyObject*>_ZERO
    vals[5] = <PyObject*>_FALSE
    cdef bint given[6]
    given[0] = given[1] = given[2] = given[3] = given[4] = given[5] = False
    if nargs > 6:
        raise TypeError(f"Function call takes at most 6 arguments ({nargs} given)")
    for i in range(nargs):
        vals[i] = argv[i]
        given[i] = True
    if kwnames != NULL:
        names = <tuple><object>kwnames
        for j in range(PyTuple_GET_SIZE(names)):
            name = <object>PyTuple_GET_ITEM(names, j)
            i = _keyword_index(name)
            if i < 0:
                raise TypeError(f"Function call got an unexpected keyword argument {name!r}")
            if given[i]:
                raise TypeError(f"Function call got multiple values for argument {name!r}")
            vals[i] = argv[nargs + j]
            given[i] = True
    if not (given[0] and given[1] and given[2]):
        raise TypeError("Function call needs grid, block and args")
    return (<Function>self).call(<object>vals[0], <object>vals[1], <object>vals[2], <object>vals[3],
                                 None if vals[4] == NULL else <object>vals[4], <object>vals[5])


cdef _enable_vectorcall():
    cdef Function probe = Function.__new__(Function)
    cdef TypeSlots* tp = <TypeSlots*>Function
    tp.tp_vectorcall_offset = <Py_ssize_t>(<char*>&probe.vectorcall - <char*><PyObject*>probe)
    tp.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL
    PyType_Modified(<PyTypeObject*>Function)


_enable_vectorcall()
