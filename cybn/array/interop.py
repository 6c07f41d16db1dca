"""Recognising the memory layout of a foreign device array without copying it: C-contiguous (NCHW) or dense
channels-last (torch's channels_last / channels_last_3d), from a GPUArray, a __cuda_array_interface__
object, a DLPack producer or capsule, or (classify) a torch-style shape and strides in elements."""
from collections import namedtuple

from cybn.array.gpuarray import GPUArray, cai_import, dlpack_import

NCHW, NHWC = "NCHW", "NHWC"


def channels_last_order(ndim):
    """The axes of an (N, C, spatial...) array in memory order for channels-last: (0, 2, ..., ndim-1, 1)."""
    return (0,) + tuple(range(2, ndim)) + (1,)


def _dense(shape, strides, order):
    # Dense in `order` (outermost first): every axis longer than 1 steps over all the axes inside it.
    # Axes of length 1 are never stepped over, so any stride is fine there (torch gives them odd ones).
    expected = 1
    for axis in reversed(order):
        if shape[axis] != 1 and strides[axis] != expected:
            return False
        expected *= shape[axis]
    return True


def classify(shape, strides):
    """(c_contiguous, channels_last) for an array of `shape` whose strides are given in elements, as torch's
    Tensor.stride() and DLPack count them (None: C-contiguous). channels_last means dense in the memory order
    (N, spatial..., C) for 3 or more dimensions (N, C, L), (N, C, H, W), (N, C, D, H, W), ...: torch's
    channels_last and channels_last_3d, and the same rule for 1-d data. Both can be true (C == 1, all spatial
    sizes 1, or an empty array): then both layouts are the same bytes."""
    shape = tuple(int(d) for d in shape)
    if strides is None:
        return True, len(shape) >= 3 and (shape[1] == 1 or all(d == 1 for d in shape[2:]) or 0 in shape)
    strides = tuple(int(s) for s in strides)
    if len(strides) != len(shape):
        raise ValueError(f"{len(strides)} strides {strides} for the {len(shape)} dimensions of shape {shape}")
    if 0 in shape:
        return True, len(shape) >= 3  # no element is addressed: any strides describe the same empty array
    c = _dense(shape, strides, tuple(range(len(shape))))
    return c, len(shape) >= 3 and _dense(shape, strides, channels_last_order(len(shape)))


def expected_strides(shape, layout):
    """The strides (elements) torch gives `shape` in `layout` ("NCHW": contiguous, "NHWC": channels-last)."""
    order = tuple(range(len(shape))) if layout == NCHW else channels_last_order(len(shape))
    strides, step = [0] * len(shape), 1
    for axis in reversed(order):
        strides[axis] = step
        step *= max(shape[axis], 1)
    return tuple(strides)


class DeviceView(namedtuple("DeviceView", "ptr shape dtype strides layout c_contiguous channels_last readonly owner")):
    """What layout_of found. ptr: the first element's device address; shape: the logical (N, C, spatial...)
    shape; dtype: a numpy dtype (ml_dtypes.bfloat16 for bfloat16); strides: in elements (None when the
    producer gave none: C-contiguous); layout: "NCHW" when C-contiguous (also when both hold), else "NHWC";
    readonly: the producer marked the data read-only (CAI only); owner: keeps the memory alive (hold it as
    long as ptr is used)."""
    __slots__ = ()

    @property
    def memory_shape(self):
        """The shape in memory order: `shape` for NCHW, (N, spatial..., C) for NHWC, i.e. the C-contiguous
        array the bytes are (for NHWC: (M = N * spatial, C) rows, the channels-last kernels' view)."""
        if self.layout == NCHW:
            return self.shape
        return tuple(self.shape[a] for a in channels_last_order(len(self.shape)))

    def as_gpuarray(self, allow_readonly=False):
        """A GPUArray over the same memory (no copy) of memory_shape, keeping the owner alive. Read-only data
        is refused unless allow_readonly (a GPUArray cannot stop a kernel from writing: only pass it as input)."""
        if self.readonly and not allow_readonly:
            raise ValueError("layout_of: the producer marked this array read-only; pass allow_readonly=True only "
                             "where it is an input that nothing writes, or copy it with cybn.to_gpu")
        return GPUArray.from_pointer(self.ptr, self.memory_shape, self.dtype, self.owner)


def _require_known_layout(what, shape, strides, dtype):
    c, cl = classify(shape, strides)
    if not (c or cl):
        msg = (f"{what}: strides {strides} (elements) for shape {shape} are neither C-contiguous "
               f"{expected_strides(shape, NCHW)}")
        if len(shape) >= 3:
            msg += f" nor dense channels-last {expected_strides(shape, NHWC)}"
        raise ValueError(msg + "; make a copy in one of them first (torch: x.contiguous() or "
                               "x.contiguous(memory_format=torch.channels_last))")


def layout_of(obj):
    """Recognise a device array's layout without a copy -> DeviceView (ptr, shape, dtype, strides, layout,
    c_contiguous, channels_last, readonly, owner; see DeviceView and classify).

    obj: a GPUArray (always C-contiguous), an object with __dlpack__ (preferred when an object has both
    protocols: DLPack names bfloat16 unambiguously, torch's CUDA Array Interface labels it like float16),
    a raw "dltensor" capsule (consumed only when recognised), or an object with __cuda_array_interface__.
    Producer streams are honoured as cybn.from_dlpack / from_cuda_array_interface do: their pending work is
    ordered before the current stream's.

    Any other strides (transposed, sliced, broadcast, negative) raise ValueError naming the strides found and
    the two accepted ones for that shape; a capsule is then left unconsumed. For channels-last batch norm, use
    view.as_gpuarray() (or view.ptr with view.memory_shape): a C-contiguous (N, spatial..., C) array, i.e.
    (M, C) rows, with view.shape[1] channels; for NCHW the same call gives the (N, C, spatial...) array."""
    if isinstance(obj, GPUArray):
        c, cl = classify(obj.shape, None)
        return DeviceView(obj.ptr, obj.shape, obj.dtype, None, NCHW, c, cl, False, obj)
    if type(obj).__name__ == "PyCapsule" or hasattr(obj, "__dlpack__"):
        ptr, shape, dtype, strides, owner = dlpack_import(obj, _require_known_layout)
        readonly = False
    elif hasattr(obj, "__cuda_array_interface__"):
        ptr, shape, dtype, strides, readonly = cai_import(obj, True, _require_known_layout)
        owner = obj
    else:
        raise TypeError(f"layout_of: {type(obj).__name__} is not a device array (a GPUArray, an object with "
                        f"__dlpack__ or __cuda_array_interface__, or a DLPack capsule); host arrays: cybn.to_gpu")
    c, cl = classify(shape, strides)
    return DeviceView(ptr, shape, dtype, strides, NCHW if c else NHWC, c, cl, readonly, owner)
