"""The CUDA driver layer: Cython classes over cuda.bindings' cydriver (status/check, device and primary
context, stream, event, memory, function = a loaded module and its kernels' launches). Imports nothing
above it; its submodules load on first use."""
