"""What the framework faces share: device-array intake, the momentum -> factor rule, the channel-axis
mapping onto the core's layouts (NCHW views, NHWC for the channel last), and the refusal of features the
engine lacks."""
import contextlib

import numpy as np


class EngineFeatureMissing(NotImplementedError):
    """The call needs an engine feature cybn's core does not have yet (an activation its epilogue lacks,
    channels-last SyncBatchNorm). Nothing was computed or changed."""

    def __init__(self, what, feature=None):
        super().__init__(what if feature is None else
                         f"{what} needs {feature}, which cybn's BatchNorm engine does not have yet (engine issue "
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
    """(view, layout, C): x (a GPUArray) as the core takes it, without a copy. The channel axis last
    (of data with more than two dimensions): x itself with the core's layout "NHWC" ((N, *spatial, C), the
    axes between N and C are its spatial extent); any other axis a: the reshape (prod(shape[:a]), C,
    prod(shape[a + 1:])) with layout "NCHW" (2-d data's last axis is axis 1)."""
    nd = len(x.shape)
    if nd < 2:
        raise error(f"{what} must have at least 2 dimensions (N, C, ...), got shape {tuple(x.shape)}")
    if not -nd <= axis < nd:
        raise error(f"axis {axis} is out of range for {what} of {nd} dimensions")
    a = axis % nd
    if a == 0:
        raise error(f"axis 0 is the batch axis of {what}; the channel axis must be 1..{nd - 1} (or -1)")
    C = x.shape[a]
    if a == nd - 1 and nd > 2:
        return x, "NHWC", C
    if a == 1:
        return x, "NCHW", C
    return x.reshape(int(np.prod(x.shape[:a])), C, int(np.prod(x.shape[a + 1:]))), "NCHW", C


@contextlib.contextmanager
def errors_as(cls):
    """The core's ValueError/TypeError (argument checks, made before anything runs) re-raised as the
    framework's kind of error, same message; its NotImplementedError (a combination this build's kernels
    lack, refused before anything runs) as EngineFeatureMissing, its message kept."""
    try:
        yield
    except EngineFeatureMissing:
        raise
    except NotImplementedError as e:
        raise EngineFeatureMissing(f"cybn's BatchNorm engine does not have yet what this call needs: {e}; "
                                   f"nothing was computed or changed") from e
    except (ValueError, TypeError) as e:
        if isinstance(e, cls):
            raise
        raise cls(str(e)) from e
