from cybn.gpuarray import GPUArray, empty, empty_like, from_dlpack, to_gpu, zeros, zeros_like  # noqa: F401
