# cython: language_level=3
"""NVRTC: CUDA C++ source -> PTX (software GPU, or a driver JIT) or CUBIN (a real device), through
cuda.bindings.cynvrtc. The GIL is released while NVRTC compiles, so threads can compile in parallel.

Most callers want cybn.cache.compile_cached / compile_kernel (memoised and disk-cached), not compile()."""
import ctypes
import threading

from cuda.bindings cimport cynvrtc
from libc.stdlib cimport calloc, free

from .. import paths
from . import nvrtc_options
from ..errors import CompileError
from .image import CompiledImage

_count_lock = threading.Lock()
_compiles = 0
_preloaded = False


def _preload_wheel_nvrtc():
    """Load the nvidia-cuda-nvrtc wheel's libnvrtc before cuda.bindings looks for one: cuda.bindings then
    uses the already-loaded library, so the NVRTC that compiles is exactly the file the disk cache keys
    on (cybn.cache hashes its identity without loading it)."""
    global _preloaded
    if _preloaded:
        return
    found = paths.nvrtc_library()
    if found is not None:
        ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)
    _preloaded = True


cdef _check(cynvrtc.nvrtcResult rc, str call, str name):
    if rc != cynvrtc.NVRTC_SUCCESS:
        msg = cynvrtc.nvrtcGetErrorString(rc).decode()
        raise CompileError(name, "", f"{call} failed for {name}: {msg}")


def version():
    """The NVRTC version as (major, minor)."""
    _preload_wheel_nvrtc()
    cdef int major = 0, minor = 0
    _check(cynvrtc.nvrtcVersion(&major, &minor), "nvrtcVersion", "<nvrtc>")
    return major, minor


def supported_archs():
    """The SM numbers this NVRTC can compile for, e.g. [75, 80, 86, ..., 120]."""
    _preload_wheel_nvrtc()
    cdef int n = 0
    _check(cynvrtc.nvrtcGetNumSupportedArchs(&n), "nvrtcGetNumSupportedArchs", "<nvrtc>")
    cdef int* archs = <int*>calloc(max(n, 1), sizeof(int))
    if archs == NULL:
        raise MemoryError()
    try:
        _check(cynvrtc.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs", "<nvrtc>")
        return [archs[i] for i in range(n)]
    finally:
        free(archs)


def include_dirs():
    """The CUDA include directories NVRTC is given (from the nvidia-cuda-runtime wheel only)."""
    return paths.cuda_include_dirs()


def compile_count():
    """How many times this process has run nvrtcCompileProgram (lets tests prove a cache hit)."""
    return _compiles


cdef const char** _c_strings(list encoded) except NULL:
    cdef const char** arr = <const char**>calloc(len(encoded) + 1, sizeof(const char*))
    if arr == NULL:
        raise MemoryError()
    for i, s in enumerate(encoded):
        arr[i] = <const char*>(<bytes>s)
    return arr


cdef str _program_log(cynvrtc.nvrtcProgram prog):
    cdef size_t size = 0
    if cynvrtc.nvrtcGetProgramLogSize(prog, &size) != cynvrtc.NVRTC_SUCCESS or size <= 1:
        return ""
    buf = bytearray(size)
    if cynvrtc.nvrtcGetProgramLog(prog, <char*>buf) != cynvrtc.NVRTC_SUCCESS:
        return ""
    return bytes(buf[:size - 1]).decode("utf-8", "replace")


cdef bytes _program_output(cynvrtc.nvrtcProgram prog, str target, str name):
    cdef size_t size = 0
    cdef cynvrtc.nvrtcResult rc
    if target == "cubin":
        _check(cynvrtc.nvrtcGetCUBINSize(prog, &size), "nvrtcGetCUBINSize", name)
    else:
        _check(cynvrtc.nvrtcGetPTXSize(prog, &size), "nvrtcGetPTXSize", name)
    buf = bytearray(size)
    if target == "cubin":
        rc = cynvrtc.nvrtcGetCUBIN(prog, <char*>buf)
    else:
        rc = cynvrtc.nvrtcGetPTX(prog, <char*>buf)
    _check(rc, "nvrtcGet" + target.upper(), name)
    return bytes(buf)


def compile(source, name, options=(), headers=None, name_expressions=(), target="ptx", arch="compute_80"):
    """Compile CUDA C++ `source` (str), called `name` in NVRTC's messages, to PTX or CUBIN for `arch`.

    options: extra NVRTC options (e.g. "-DBLOCK=256", "-Xptxas", "-v"); cybn always adds
    --gpu-architecture=arch, -std=c++17 (unless given), -I<kernel dir> and -I<wheel CUDA include dir>.
    headers: {include name: source text} for in-memory headers. name_expressions: template
    instantiations / kernel names to lower (their mangled names come back in .lowered).
    Returns a CompiledImage; a failed compile raises CompileError carrying NVRTC's log."""
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    options, name_expressions = nvrtc_options.check_request(options, name_expressions, target, arch, headers)
    if nvrtc_options.arch_number(arch) not in supported_archs():
        raise ValueError(f"arch {arch!r} is not supported by NVRTC {version()}: "
                         f"supported SM numbers are {supported_archs()}")
    opts = [o.encode() for o in nvrtc_options.effective_options(options, arch)]
    hdr_names = [k.encode() for k in (headers or {})]
    hdr_texts = [v.encode() for v in (headers or {}).values()]
    exprs = [e.encode() for e in name_expressions]
    src = source.encode()
    bname = name.encode()
    return _compile(src, bname, opts, hdr_names, hdr_texts, exprs, target, arch, name, name_expressions)


cdef _compile(bytes src, bytes bname, list opts, list hdr_names, list hdr_texts, list exprs,
              str target, str arch, str name, tuple name_expressions):
    global _compiles
    cdef cynvrtc.nvrtcProgram prog = NULL
    cdef const char** c_opts = NULL
    cdef const char** c_hnames = NULL
    cdef const char** c_htexts = NULL
    cdef const char* lowered_c = NULL
    cdef const char* c_src = src
    cdef const char* c_name = bname
    cdef int n_opts = len(opts)
    cdef int n_headers = len(hdr_names)
    cdef cynvrtc.nvrtcResult rc
    try:
        c_opts = _c_strings(opts)
        c_hnames = _c_strings(hdr_names)
        c_htexts = _c_strings(hdr_texts)
        _check(cynvrtc.nvrtcCreateProgram(&prog, c_src, c_name, n_headers, c_htexts, c_hnames),
               "nvrtcCreateProgram", name)
        for e in exprs:
            _check(cynvrtc.nvrtcAddNameExpression(prog, <const char*>(<bytes>e)), "nvrtcAddNameExpression", name)
        with _count_lock:
            _compiles += 1
        with nogil:
            rc = cynvrtc.nvrtcCompileProgram(prog, n_opts, c_opts)
        log = _program_log(prog)
        if rc != cynvrtc.NVRTC_SUCCESS:
            why = cynvrtc.nvrtcGetErrorString(rc).decode()
            raise CompileError(name, log, f"NVRTC could not compile {name} for {arch} ({why}):\n{log}")
        image = _program_output(prog, target, name)
        lowered = {}
        for expr, e in zip(name_expressions, exprs):
            _check(cynvrtc.nvrtcGetLoweredName(prog, <const char*>(<bytes>e), &lowered_c),
                   f"nvrtcGetLoweredName({expr!r})", name)
            lowered[expr] = lowered_c.decode()
        return CompiledImage(image, target, arch, lowered, log, name)
    finally:
        if prog != NULL:
            cynvrtc.nvrtcDestroyProgram(&prog)
        free(c_opts)
        free(c_hnames)
        free(c_htexts)
