"""Run-time compilation of cybn/kernels/*.cu: NVRTC and its options, the include scan, the in-process memo
and the disk cache, the variant registry, warmup, and functions.get_function (a kernel as a driver
Function). Sits on the driver layer."""
