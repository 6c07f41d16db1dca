from cuda.bindings cimport cydriver

cdef enum:
    MAX_KERNEL_ARGS = 128
    MAX_PARAM_BYTES = 4096   # the classic kernel-parameter limit every driver accepts
    MAX_PARAM_WORDS = 512    # MAX_PARAM_BYTES / 8: the packing buffer is 8-byte aligned

cdef class Module:
    cdef cydriver.CUmodule mod
    cdef cydriver.CUcontext ctx
    cdef dict functions

cdef class Function:
    # Cython callers (e.g. a nogil core) may take `func` and call cydriver.cuLaunchKernel themselves.
    cdef cydriver.CUfunction func
    cdef readonly str name
    cdef readonly str signature
    cdef readonly Module module
    cdef readonly int nargs
    cdef int param_bytes
    cdef char codes[MAX_KERNEL_ARGS]
    cdef unsigned short offsets[MAX_KERNEL_ARGS]
    cdef void* vectorcall            # the instance's vectorcall entry (see function.pyx)
    # Pack `args` per the signature into buf (8-byte aligned, >= MAX_PARAM_BYTES) and set ptrs[i] to
    # each argument's slot; raises TypeError/ValueError/OverflowError naming the argument.
    cdef int pack(self, tuple args, unsigned long long* buf, void** ptrs) except -1
    # Launch with already packed parameters; no GIL needed.
    cdef int launch(self, const unsigned int* grid, const unsigned int* block, unsigned int shared_mem,
                    cydriver.CUstream stream, void** params, bint cooperative) except -1 nogil
    # The Python-level call: check, pack, launch.
    cdef object call(self, object grid, object block, object args, object shared_mem, object stream,
                     object cooperative)

# A layer above (cybn.array) registers its array type, so a launch reads such an argument's device pointer
# without a Python attribute lookup and without this layer knowing the type (layers import only downwards).
ctypedef unsigned long long (*pointer_of_t)(object) except? 0
cdef void register_pointer_type(type t, pointer_of_t pointer_of) noexcept

# grid/block argument -> three dimensions (int or tuple of 1..3 positive ints).
cdef int parse_dims(object d, unsigned int* out, const char* what) except -1
