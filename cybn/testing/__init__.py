"""Helpers the tests and the benchmark scripts share (not part of the engine's API): the performance
model (perfmodel), the CUBIN register / loads-in-flight reader (cubin_report)."""
