"""The dtypes a GPUArray holds, and bfloat16.

numpy has no bfloat16. cybn uses the `ml_dtypes` package's `bfloat16` (the numpy dtype JAX, TensorFlow and
ONNX use; optional dependency: `pip install cybn[bf16]`, in the test extra) rather than a uint16 carrier:
with a real dtype the host side of every copy is exact and self-describing (`a.get()` is a bfloat16 array
that prints, compares and converts as numbers; `to_gpu(x.astype(bfloat16))` just works; a uint16 carrier
would be indistinguishable from real uint16 data in every interop path and every error message, and each
caller would have to shift bits by hand to look at a value). Without ml_dtypes installed, everything else
works and asking for bfloat16 raises a TypeError that names the package.

Interop of bfloat16 (neither protocol's docs fix it for the CUDA Array Interface):
- __cuda_array_interface__ exports typestr "<V2" (what numpy reports for ml_dtypes.bfloat16, also what JAX's
  dtype reports) and imports "<V2" as bfloat16. "<f2" is always float16: a producer that labels bfloat16
  "<f2" (older PyTorch) cannot be told apart; hand such tensors over DLPack.
- DLPack exports and imports kDLBfloat (code 4), 16 bits, 1 lane.
"""
import numpy as np

try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # optional: only bfloat16 needs it
    _ml_dtypes = None

BFLOAT16 = np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else None

# float dtypes the elementwise kernels compute on -> their kernel-name suffix
FLOATS = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
if BFLOAT16 is not None:
    FLOATS[BFLOAT16] = "bf16"

_KINDS = "biufc"
_NO_BF16 = ("bfloat16 needs the ml_dtypes package (pip install ml_dtypes, or cybn[bf16]); numpy has no "
            "bfloat16 of its own")


def is_bfloat16(dt):
    return BFLOAT16 is not None and dt == BFLOAT16


def as_dtype(dtype):
    """np.dtype(dtype) if a GPUArray can hold it (bool, integers, floats including ml_dtypes.bfloat16,
    complex; native byte order), else TypeError naming what was wrong."""
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16") and BFLOAT16 is None:
        raise TypeError(_NO_BF16)
    if isinstance(dtype, str) and dtype == "bf16":
        dtype = BFLOAT16
    dt = np.dtype(dtype)
    if is_bfloat16(dt):
        return dt
    if dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None or not dt.isnative:
        raise TypeError(f"unsupported dtype {dt!r}: GPUArray holds bool, integer, float (float16, "
                        f"ml_dtypes.bfloat16, float32, float64) or complex numbers in native byte order")
    return dt


def from_typestr(typestr):
    """The dtype of a __cuda_array_interface__ typestr ("<V2" is bfloat16, see the module docstring)."""
    if typestr == "<V2":
        if BFLOAT16 is None:
            raise TypeError(f"__cuda_array_interface__ typestr {typestr!r} is bfloat16: " + _NO_BF16)
        return BFLOAT16
    return as_dtype(typestr)
