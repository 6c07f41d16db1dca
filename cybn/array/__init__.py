"""GPUArray (device arrays with CUDA Array Interface and DLPack interop) and its elementwise kernels."""
