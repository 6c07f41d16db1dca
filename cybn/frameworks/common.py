"""What the framework faces share: device-array intake, the momentum -> factor rule, the channel-axis
mapping onto the core's (N, C, S) view, and the refusal of features the engine lacks."""
import contextlib

import numpy as np


class EngineFeatureMissing(NotImplementedError):
    """The call needs an engine feature cybn's core does not have yet (issue 11: channels-last layout,
    float64, fused activation). Nothing was computed or changed."""

    def __init__(self, what, feature):
        super().__init__(f"{what} needs {feature}, which cybn's BatchNorm engine does not have yet (engine issue "
                         f"11); nothing was computed or changed")


def as_device_array(obj, what, error=TypeError):
    """obj as a GPUArray without a copy: a GPUArray, or a device array with __cuda_array_interface__ or
    __dlpack__."""
    from cybn.array import gpuarray
    if isinstance(obj, gpuarray.GPUArray):
        return obj
    try:
        if hasattr(obj, "__cuda_array_interface__"):
            return gpuarray.from_cuda_array_interface(obj)
        if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
            return gpuarray.from_dlpack(obj)
    except (BufferError, TypeError, ValueError) as e:
        raise error(f"{what}: {e}") from None
    raise error(f"{what} must be a device array (a cybn GPUArray, or one with __cuda_array_interface__ or "
                f"__dlpack__), got {type(obj).__name__}; host data goes through cybn.to_gpu first")


def factor(momentum, what="momentum", error=ValueError):
    """The core's factor (weight of the new batch) from a momentum on the old value, both in float32 as
    MXNet and Paddle hold it (Paddle's 0.9 acts as 0.89999998): 1 - factor is then exactly float32(m)."""
    try:
        m = float(momentum)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number in [0, 1], got {momentum!r}") from None
    if not 0.0 <= m <= 1.0:
        raise error(f"{what} must be in [0, 1], got {momentum!r}")
    return float(np.float32(1.0) - np.float32(m))


def channel_view(x, axis, what, error=ValueError):
    """x (a GPUArray) reshaped, without a copy, to the core's (N, C, S) with the channel at `axis`:
    (prod(shape[:axis]), C, prod(shape[axis + 1:])). The last axis of data with more than two dimensions
    (channels-last) is refused: the core reads one statistic's values as contiguous rows, and with the
    channel last every row is one element with a stride of C between them, an access pattern the engine
    does not plan for (issue 11 adds the layout)."""
    nd = len(x.shape)
    if nd < 2:
        raise error(f"{what} must have at least 2 dimensions (N, C, ...), got shape {tuple(x.shape)}")
    if not -nd <= axis < nd:
        raise error(f"axis {axis} is out of range for {what} of {nd} dimensions")
    a = axis % nd
    if a == 0:
        raise error(f"axis 0 is the batch axis of {what}; the channel axis must be 1..{nd - 1} (or -1)")
    if a == nd - 1 and nd > 2:
        raise EngineFeatureMissing(f"channel axis {axis} (channels-last) of {nd}-d {what}", "the channels-last layout")
    if a == 1:
        return x
    lead = int(np.prod(x.shape[:a]))
    return x.reshape(lead, x.shape[a], int(np.prod(x.shape[a + 1:])))


@contextlib.contextmanager
def errors_as(cls):
    """The core's ValueError/TypeError (argument checks, made before anything runs) re-raised as the
    framework's kind of error, same message."""
    try:
        yield
    except EngineFeatureMissing:
        raise
    except (ValueError, TypeError) as e:
        if isinstance(e, cls):
            raise
        raise cls(str(e)) from e
