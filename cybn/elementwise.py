"""Elementwise operations on GPUArrays (kernels/elementwise.cu): fill, cast, axpby."""
import numpy as np

from cybn import kernels
from cybn.gpuarray import GPUArray
from cybn.variants import register_variants

SOURCE = "elementwise.cu"
_FLOATS = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_FILL_BITS = {1: (np.uint8, "cybn_fill_b8", "I"), 2: (np.uint16, "cybn_fill_b16", "I"),
              4: (np.uint32, "cybn_fill_b32", "I"), 8: (np.uint64, "cybn_fill_b64", "Q")}
KERNELS = ([k[1] for k in _FILL_BITS.values()]
           + [f"cybn_cast_{a}_{b}" for a in _FLOATS.values() for b in _FLOATS.values() if a != b]
           + [f"cybn_axpby_{t}" for t in _FLOATS.values()])
# One program holds every kernel, so warmup and the first call share one compile.
register_variants(SOURCE, [(KERNELS, ())])

_BLOCK = 256
_MAX_GRID = 4096  # the loops are grid-stride: more blocks than this only adds scheduling work


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
