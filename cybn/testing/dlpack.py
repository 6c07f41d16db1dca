"""DLPack producers for tests: the capsules a foreign framework (torch) hands out for a channels_last tensor,
made from a cybn GPUArray by rewriting its exported DLTensor's shape and strides (same memory, no copy)."""
import ctypes

from cybn.array.interop import channels_last_order, expected_strides

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype, _get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_SHAPE, _STRIDES = 24, 32  # byte offsets of DLTensor.shape and .strides (data, device, ndim, dtype before)


def restride(capsule, shape, strides):
    """Rewrite an unconsumed "dltensor" capsule's shape and strides (elements) in place; ndim unchanged."""
    base = _get_pointer(capsule, b"dltensor")
    for offset, values in ((_SHAPE, shape), (_STRIDES, strides)):
        (ctypes.c_int64 * len(values)).from_address(ctypes.c_void_p.from_address(base + offset).value)[:] = values
    return capsule


def memory_order(host):
    """A logical (N, C, spatial...) numpy array's values as they lie in channels-last memory (N, spatial..., C)."""
    return host.transpose(channels_last_order(host.ndim)).copy()


class ChannelsLast:
    """A device producer (__dlpack__, __dlpack_device__) of a logical (N, C, spatial...) tensor stored
    channels-last in `memory` (a C-contiguous (N, spatial..., C) GPUArray): torch's channels_last strides.
    Each __dlpack__ call hands out a fresh capsule over the same memory, as torch does."""

    def __init__(self, memory):
        self.memory = memory
        m = memory.shape
        self.shape = (m[0], m[-1]) + tuple(m[1:-1])

    def __dlpack_device__(self):
        return self.memory.__dlpack_device__()

    def __dlpack__(self, stream=None, **kw):
        return restride(self.memory.__dlpack__(stream=stream), self.shape, expected_strides(self.shape, "NHWC"))

    def capsule(self):
        return self.__dlpack__(stream=-1)
