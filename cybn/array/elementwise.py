"""Elementwise operations on GPUArrays (kernels/elementwise.cu): fill, cast, axpby, arithmetic with arrays
and scalars, and strided copies (what GPUArray indexing and transpose use when no view can express them)."""
import numpy as np

from cybn.jit import functions as kernels
from cybn.array.gpuarray import GPUArray
from cybn.jit.variants import register_variants

SOURCE = "elementwise.cu"
_FLOATS = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_FILL_BITS = {1: (np.uint8, "cybn_fill_b8", "I"), 2: (np.uint16, "cybn_fill_b16", "I"),
              4: (np.uint32, "cybn_fill_b32", "I"), 8: (np.uint64, "cybn_fill_b64", "Q")}
# Arithmetic: array OP array, and array OP scalar (rsub, rdiv: scalar OP array).
ARRAY_OPS = ("add", "sub", "mul", "div")
SCALAR_OPS = ("add", "sub", "mul", "div", "rsub", "rdiv")
_STRIDED = {1: "cybn_strided_b8", 2: "cybn_strided_b16", 4: "cybn_strided_b32", 8: "cybn_strided_b64"}
KERNELS = ([k[1] for k in _FILL_BITS.values()]
           + [f"cybn_cast_{a}_{b}" for a in _FLOATS.values() for b in _FLOATS.values() if a != b]
           + [f"cybn_axpby_{t}" for t in _FLOATS.values()]
           + [f"cybn_{op}_{t}" for t in _FLOATS.values() for op in ARRAY_OPS]
           + [f"cybn_{op}s_{t}" for t in _FLOATS.values() for op in SCALAR_OPS]
           + list(_STRIDED.values()))
# One program holds every kernel, so warmup and the first call share one compile.
register_variants(SOURCE, [(KERNELS, ())])

_BLOCK = 256
_MAX_GRID = 4096  # the loops are grid-stride: more blocks than this only adds scheduling work


def can_cast(dtype):
    """Whether cast() converts from and to this dtype (GPUArray.astype asks before it allocates)."""
    return np.dtype(dtype) in _FLOATS


def _grid(n):
    return max(1, min((n + _BLOCK - 1) // _BLOCK, _MAX_GRID))


def _require_array(a, what):
    if not isinstance(a, GPUArray):
        raise TypeError(f"{what} must be a GPUArray, got {type(a).__name__}")


def _check_no_partial_overlap(a, b, what):
    # Elementwise kernels read element i and write element i: the same memory is fine, but a shifted or
    # differently-sized view of it would let one thread overwrite what another has yet to read.
    if a.nbytes and b.nbytes and a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes and \
            (a.ptr != b.ptr or a.itemsize != b.itemsize):
        raise ValueError(f"{what} overlap in device memory without being the same array")


def fill(ary, value, stream=None):
    """Set every element of `ary` to `value`, converted to ary's dtype as numpy converts it."""
    _require_array(ary, "fill: ary")
    if ary.itemsize not in _FILL_BITS:
        raise TypeError(f"fill: unsupported dtype {ary.dtype} ({ary.itemsize}-byte elements)")
    uint, name, code = _FILL_BITS[ary.itemsize]
    bits = np.array(value, dtype=ary.dtype).reshape(()).view(uint).item()
    if ary.size:
        fn = kernels.get_function(SOURCE, name, "P" + code + "Q")
        fn(_grid(ary.size), _BLOCK, (ary, bits, ary.size), stream=stream)
    return ary


def cast(src, dst, stream=None):
    """dst[...] = src converted (float16, float32, float64; round to nearest even). Same shape required."""
    _require_array(src, "cast: src")
    _require_array(dst, "cast: dst")
    if src.shape != dst.shape:
        raise ValueError(f"cast: shape mismatch: src {src.shape}, dst {dst.shape}")
    for what, a in (("src", src), ("dst", dst)):
        if a.dtype not in _FLOATS:
            raise TypeError(f"cast: {what} dtype {a.dtype} not supported (float16, float32, float64)")
    _check_no_partial_overlap(src, dst, "cast: src and dst")
    if src.dtype == dst.dtype:
        dst.set(src, stream=stream)
        return dst
    if src.size:
        fn = kernels.get_function(SOURCE, f"cybn_cast_{_FLOATS[src.dtype]}_{_FLOATS[dst.dtype]}", "PPQ")
        fn(_grid(src.size), _BLOCK, (src, dst, src.size), stream=stream)
    return dst


def axpby(x, y, alpha, beta, out=None, stream=None):
    """out = alpha * x + beta * y, elementwise; out=None updates y in place (BLAS axpby). float16 is
    computed in float32 and rounded once. Returns out (or y)."""
    _require_array(x, "axpby: x")
    _require_array(y, "axpby: y")
    if out is None:
        out = y
    _require_array(out, "axpby: out")
    for what, a in (("y", y), ("out", out)):
        if a.shape != x.shape:
            raise ValueError(f"axpby: {what} shape {a.shape} differs from x shape {x.shape}")
        if a.dtype != x.dtype:
            raise TypeError(f"axpby: {what} dtype {a.dtype} differs from x dtype {x.dtype}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"axpby: dtype {x.dtype} not supported (float16, float32, float64)")
    _check_no_partial_overlap(x, out, "axpby: x and out")
    _check_no_partial_overlap(y, out, "axpby: y and out")
    t = _FLOATS[x.dtype]
    if x.size:
        fn = kernels.get_function(SOURCE, f"cybn_axpby_{t}", "PPP" + ("dd" if t == "f64" else "ff") + "Q")
        fn(_grid(x.size), _BLOCK, (x, y, out, float(alpha), float(beta), x.size), stream=stream)
    return out


def arithmetic(op, a, b, out=None, stream=None):
    """out = a OP b elementwise, OP one of SCALAR_OPS ("rsub": b - a, "rdiv": b / a). a: a float16/32/64
    GPUArray; b: a GPUArray of a's shape and dtype, or a real scalar (converted to a's dtype first, as numpy
    converts a Python number). out (default: a new array) may be a or b. float16 is computed in float32 and
    rounded once, as numpy does. Returns out."""
    _require_array(a, f"{op}: a")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{op}: GPUArray arithmetic takes float16, float32 or float64 arrays, got {a.dtype} "
                        f"(convert it with .astype(np.float32))")
    scalar = not isinstance(b, GPUArray)
    if scalar:
        if op not in SCALAR_OPS:
            raise ValueError(f"unknown operation {op!r}: one of {SCALAR_OPS}")
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, float, np.integer, np.floating)):
            raise TypeError(f"{op}: the other operand must be a GPUArray or a real number, got {type(b).__name__}")
        value = float(np.array(b).astype(a.dtype))  # rounded to a's dtype (exact in the kernel's float/double)
    else:
        if op not in ARRAY_OPS:
            raise ValueError(f"unknown operation {op!r} for two arrays: one of {ARRAY_OPS}")
        if b.shape != a.shape:
            raise ValueError(f"{op}: shapes {a.shape} and {b.shape} differ (no broadcasting: same shapes or a scalar)")
        if b.dtype != a.dtype:
            raise TypeError(f"{op}: dtypes {a.dtype} and {b.dtype} differ; convert one with .astype({a.dtype.name!r})")
    if out is None:
        from cybn.array.gpuarray import empty
        out = empty(a.shape, a.dtype, stream=stream)
    _require_array(out, f"{op}: out")
    if out.shape != a.shape or out.dtype != a.dtype:
        raise ValueError(f"{op}: out is {out.shape} {out.dtype}, the result is {a.shape} {a.dtype}")
    _check_no_partial_overlap(a, out, f"{op}: a and out")
    if not scalar:
        _check_no_partial_overlap(b, out, f"{op}: b and out")
    t = _FLOATS[a.dtype]
    if a.size:
        if scalar:
            fn = kernels.get_function(SOURCE, f"cybn_{op}s_{t}", "P" + ("d" if t == "f64" else "f") + "PQ")
            fn(_grid(a.size), _BLOCK, (a, value, out, a.size), stream=stream)
        else:
            fn = kernels.get_function(SOURCE, f"cybn_{op}_{t}", "PPPQ")
            fn(_grid(a.size), _BLOCK, (a, b, out, a.size), stream=stream)
    return out


def strided_copy(src, src_offset, src_strides, dst, dst_offset, dst_strides, shape, stream=None):
    """Copy the elements of an index space `shape` between two layouts of GPUArrays src and dst (same dtype):
    element idx is read at src.ptr + (src_offset + idx . src_strides) * itemsize and written at the same
    formula for dst (offsets and strides in elements, strides may be negative). One launch; the layouts
    (3 x ndim int64) go up with a small synchronous copy."""
    _require_array(src, "strided_copy: src")
    _require_array(dst, "strided_copy: dst")
    if src.dtype != dst.dtype:
        raise TypeError(f"strided_copy: dtypes {src.dtype} and {dst.dtype} differ")
    shape, n = tuple(shape), int(np.prod(shape, dtype=np.int64))
    if not n:
        return dst
    unit, scale = src.itemsize, 1
    if unit not in _STRIDED:  # e.g. complex128: copy it as 8-byte words, one more (innermost) dimension
        unit, scale = 8, src.itemsize // 8
        shape = shape + (scale,)
        src_strides = tuple(s * scale for s in src_strides) + (1,)
        dst_strides = tuple(s * scale for s in dst_strides) + (1,)
        n *= scale
    from cybn.array.gpuarray import to_gpu
    meta = to_gpu(np.array(shape + tuple(src_strides) + tuple(dst_strides), np.int64), stream=stream)
    fn = kernels.get_function(SOURCE, _STRIDED[unit], "PPPiQ")
    fn(_grid(n), _BLOCK, (src.ptr + src_offset * src.itemsize, dst.ptr + dst_offset * dst.itemsize, meta,
                          len(shape), n), stream=stream)
    return dst
