"""Helpers the tests and the benchmark scripts share (not part of the engine's API): the float64 BatchNorm
reference from the maths (reference), the traffic of one call from the software GPU's counters (traffic),
the performance model (perfmodel), the CUBIN register / loads-in-flight reader (cubin_report), NVRTC
compile + launch helpers on raw driver handles (ptx: the PTX corpus tests and bench/softgpu_bench.py) and
channels-last DLPack producers (dlpack)."""
