# The Python face's argument checks (dtype, mode, arrays on the current device, parameters,
# numbers, aliasing) and the descriptor they fill, before anything is allocated or launched.
# Included by batchnorm.pyx.

from cybn.array.dtypes import BFLOAT16 as _BF16

_DTYPES = {np.dtype(np.float32): BN_FLOAT32, np.dtype(np.float16): BN_FLOAT16, np.dtype(np.float64): BN_FLOAT64}
if _BF16 is not None:
    _DTYPES[_BF16] = BN_BFLOAT16
_DTYPE_NAMES = "float32, float16, bfloat16 (ml_dtypes) or float64"


cdef int _dtype_code(dtype, str what) except -1:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what} must be {_DTYPE_NAMES}, got {dtype!r}") from None
    code = _DTYPES.get(dt)
    if code is None:
        raise TypeError(f"{what} must be {_DTYPE_NAMES}, got {dt}")
    return code


cdef int _mode_code(mode) except -1:
    m = mode.value if isinstance(mode, enum.Enum) else mode
    if m == "spatial":
        return BN_SPATIAL
    if m == "per_activation":
        return BN_PER_ACTIVATION
    raise ValueError(f"mode must be 'spatial' or 'per_activation' (or a Mode), got {mode!r}")


cdef bint _is_dlpack(obj) except -1:
    """A device DLPack producer (__dlpack__; not a GPUArray, which exports one) or a raw "dltensor" capsule.
    A producer on the host (numpy's arrays have __dlpack__) is not: it gets the GPUArray TypeError."""
    if isinstance(obj, GPUArray):
        return False
    if type(obj).__name__ == "PyCapsule":
        return True
    if not hasattr(obj, "__dlpack__"):
        return False
    dev = getattr(obj, "__dlpack_device__", None)
    return dev is None or tuple(dev())[0] in (2, 13)  # kDLCUDA, kDLCUDAManaged


cdef GPUArray _array(obj, str what):
    """obj as a GPUArray on the current device: a GPUArray, or a C-contiguous foreign device array (a DLPack
    producer or capsule, else __cuda_array_interface__), no copy."""
    cdef GPUArray a
    if isinstance(obj, GPUArray):
        a = obj
    elif _is_dlpack(obj):  # preferred over __cuda_array_interface__, as layout_of does
        from cybn.array.gpuarray import from_dlpack
        try:
            a = from_dlpack(obj)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: {e}") from None
    elif hasattr(obj, "__cuda_array_interface__"):
        from cybn.array.gpuarray import from_cuda_array_interface
        try:
            a = from_cuda_array_interface(obj)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: {e}") from None
    else:
        raise TypeError(f"{what} must be a GPUArray (or a C-contiguous device array: __cuda_array_interface__, "
                        f"__dlpack__ or a DLPack capsule), got {type(obj).__name__} (host data: cybn.to_gpu)")
    if a.size:  # an empty array has no memory to check (and is refused by the shape checks)
        _check_device(a, what)
    return a


cdef int _check_device(GPUArray a, str what) except -1:
    """The array's memory must belong to the current device (the one the kernels launch on)."""
    cdef int ordinal = -1
    ensure_context()
    cdef cydriver.CUresult r = cydriver.cuPointerGetAttribute(
        &ordinal, cydriver.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, <cydriver.CUdeviceptr>a.ptr_)
    if r != cydriver.CUDA_SUCCESS or ordinal < 0:
        raise ValueError(f"{what} (pointer {a.ptr_:#x}) is not memory the driver knows")
    if ordinal != current_ordinal():
        raise ValueError(f"{what} lives on device {ordinal}, but the current device is {current_ordinal()}")
    # The whole extent must lie in that one allocation: a view longer than its memory would fail only at
    # a later launch, after earlier ones had already written (all-or-nothing needs it checked up front).
    cdef cydriver.CUdeviceptr base = 0
    cdef size_t size = 0
    r = cydriver.cuMemGetAddressRange(&base, &size, <cydriver.CUdeviceptr>a.ptr_)
    if r == cydriver.CUDA_SUCCESS and a.ptr_ + <size_t>a.nbytes > base + size:
        raise ValueError(f"{what} (pointer {a.ptr_:#x}, {a.nbytes} bytes) runs past the end of its allocation "
                         f"({size} bytes at {base:#x}): the view is larger than its memory")
    return 0


cdef GPUArray _param(obj, str what, long long count, bint optional=False, pdtype=np.float32):
    """A per-statistic array of the statistics type (float32; float64 for float64 data)."""
    if obj is None:
        if optional:
            return None
        raise TypeError(f"{what} must be a {np.dtype(pdtype)} GPUArray, got None")
    cdef GPUArray a = _array(obj, what)
    if a.dtype != pdtype:
        raise TypeError(f"{what} must be {np.dtype(pdtype)}, got {a.dtype}" if pdtype == np.float32 else
                        f"{what} must be {np.dtype(pdtype)} (the statistics type of x.dtype float64), got {a.dtype}")
    if a.size != count:
        raise ValueError(f"{what} must have {count} elements (one per statistic), got shape {a.shape}")
    return a


cdef GPUArray _like(obj, str what, GPUArray x):
    if obj is None:
        return None
    cdef GPUArray a = _array(obj, what)
    if a.dtype != x.dtype:
        raise TypeError(f"{what} must have x's dtype {x.dtype}, got {a.dtype}")
    if a.shape != x.shape:
        raise ValueError(f"{what} must have x's shape {x.shape}, got {a.shape}")
    return a


_FLT_MAX = float(np.finfo(np.float32).max)


cdef double _real(value, str what) except? -1:
    # Real numbers only: float("1e-5") and float(True) would hide a caller's mistake.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number (not str or bool), got {value!r}")
    return float(value)


cdef double _epsilon(epsilon, bint f64=False) except? -1:
    e = _real(epsilon, "epsilon")
    if f64:  # float64 data: the kernels take it as a double
        if not (0 < e <= 1.7976931348623157e308):
            raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
        return e
    # The kernels take it as float32: 1e-50 would round to 0 there and 1e39 to inf.
    if not (0 < e <= _FLT_MAX) or np.float32(e) == 0:
        raise ValueError(f"epsilon must be a positive finite number (as a float32), got {epsilon!r}")
    return <float>e


cdef int _no_aliasing(list outputs, list inputs, tuple in_place) except -1:
    """The Python face's aliasing check is the core's (_no_overlap), run on the arguments under their Python
    names before anything is allocated or launched. outputs/inputs: [(name, GPUArray or None)]; in_place:
    the (output, input) pairs that may be exactly the same memory: outputs[0] with inputs[0] (and inputs[1])."""
    cdef _span outs[8]
    cdef _span ins[8]
    cdef bn_desc d
    cdef GPUArray a
    cdef list names = [n.encode() for n, _ in outputs + inputs]  # kept alive while the spans point at them
    cdef int i, k = len(in_place)
    assert len(outputs) <= 8 and len(inputs) <= 8 and k <= 2
    for i, (out_name, in_name) in enumerate(in_place):
        assert out_name == outputs[0][0] and in_name == inputs[i][0], in_place
    for i in range(len(outputs)):
        a = outputs[i][1]
        _set_span(&outs[i], names[i], 0 if a is None else a.ptr_, 0 if a is None else a.nbytes)
    for i in range(len(inputs)):
        a = inputs[i][1]
        _set_span(&ins[i], names[len(outputs) + i], 0 if a is None else a.ptr_, 0 if a is None else a.nbytes)
    memset(&d, 0, sizeof(d))  # no workspace yet: the core checks it against the arguments when it runs
    if _no_overlap(outs, len(outputs), ins, len(inputs), &d, k) != BN_OK:
        raise ValueError(bn_last_error().decode())
    return 0


cdef GPUArray _fixed_gamma_scale(fix_gamma, GPUArray gs, GPUArray gb):
    """The forward's scale after fix_gamma: None when fixed (1, not read: bias alone says affine), else the
    scale, which must come with a bias (both None: non-affine)."""
    if _flag(fix_gamma, "fix_gamma"):
        return None
    if (gs is None) != (gb is None):
        raise TypeError("scale and bias must both be given or both be None (non-affine)")
    return gs


cdef bint _flag(value, str what) except -1:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


cdef int _no_sync_fix_gamma(fix_gamma) except -1:
    if fix_gamma is not False:
        raise NotImplementedError("fix_gamma=True with comm= (SyncBatchNorm) is not supported yet: pass a scale of "
                                  "ones and ignore its gradient")
    return 0


cdef double _factor(factor) except? -1:
    f = _real(factor, "factor")
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"factor must be in [0, 1], got {factor!r}")
    return f


cdef long long _fill_desc(bn_desc* d, GPUArray x, mode, str what, layout="NCHW") except -1:
    """Shape part of the descriptor from x; returns the number of statistics."""
    memset(d, 0, sizeof(bn_desc))
    d.mode = _mode_code(mode)
    d.dtype = _dtype_code(x.dtype, what + ".dtype")
    if len(x.shape) < 2:
        raise ValueError(f"{what} must be (N, C, ...) or (N, ..., C) with at least 2 dimensions, got shape "
                         f"{x.shape}")
    if any(n < 1 for n in x.shape):
        raise ValueError(f"{what} has an empty dimension: shape {x.shape}")
    _fill_shape(d, tuple(x.shape), layout)
    if d.mode == BN_PER_ACTIVATION and d.C * d.S > (1LL << 31) - 1:
        raise ValueError(f"{what}: more than 2^31 - 1 statistics")
    d.force_group = _force_group
    d.force_split = _force_split
    d.force_cache = _force_cache
    d.force_coop = _force_coop
    return d.C if d.mode == BN_SPATIAL else d.C * d.S


cdef DeviceBuffer _finish_desc(bn_desc* d, cydriver.CUstream stream):
    """Kernels and workspace, after every argument is validated and the outputs exist; returns the workspace
    (or None), held until the caller's _release right after its core call."""
    bn_prepare_desc(d)
    cdef size_t need = bn_workspace_size(d)
    cdef DeviceBuffer ws = None
    if need:
        ws = _workspace(ensure_context(), stream, need)
        d.workspace = ws.ptr
        d.workspace_bytes = ws.nbytes
        d.counters_armed = &(<_Workspace>ws).armed  # one stream, one thread: scratch.pxi's trust rule
    return ws


cdef int _status(int st, const char* call) except -1:
    if st == BN_OK:
        return 0
    if st > 0:  # the core's text starts with the driver call that failed ("cuMemsetD32Async failed: ...")
        text = bn_last_error()
        name = text.split(b" failed", 1)[0] if b" failed" in text else <bytes>call
        raise_error(<cydriver.CUresult>st, name)
    if st == BN_EINVAL:  # a check in the core the Python face's own did not catch: the core's words
        raise ValueError(bn_last_error().decode())
    raise RuntimeError(f"{call.decode()}: {bn_last_error().decode()}")


cdef int _used_on(cydriver.CUstream s, tuple arrays) except -1:
    """Arrays whose pooled blocks were taken on another stream: the pool must wait for s before reusing them."""
    cdef GPUArray a
    for a in arrays:
        if a is not None and a.gpudata is not None:
            a.gpudata._used_on(<size_t>s)
    return 0


cdef inline cydriver.CUdeviceptr _ptr(GPUArray a) noexcept:
    return 0 if a is None else a.ptr_


def _new(shape, dtype, stream):
    from cybn.array.gpuarray import empty
    return empty(shape, dtype, stream=stream)
