"""PuzzleLib.Backend.gpuarray: PyCUDA's gpuarray names used by PuzzleLib code, as cybn's GPUArray (indexing and
slicing, + - * / with scalars and arrays, copy, fill, astype, transpose/.T, get(out=...); see cybn/gpuarray.pyx)."""
from cybn.gpuarray import GPUArray, empty, empty_like, from_dlpack, to_gpu, zeros, zeros_like  # noqa: F401
