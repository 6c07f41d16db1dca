"""cybn.array.interop.layout_of: C-contiguous and channels-last arrays recognised from GPUArrays, fake
__cuda_array_interface__ producers and DLPack capsules carrying torch's channels_last strides, without a copy;
other strides refused with the accepted ones named. Values are checked against numpy transposes."""
import ctypes
import gc

import ml_dtypes
import numpy as np
import pytest

import cybn
from cybn import to_gpu
from cybn.array import interop
from cybn.array.interop import classify, expected_strides, layout_of
from cybn.memory import DeviceBuffer

BF16 = np.dtype(ml_dtypes.bfloat16)


def torch_channels_last(shape):
    """The strides torch gives (N, C, *spatial) under channels_last / channels_last_3d (elements), from its
    rule: C innermost, then W, H, (D), N; as torch does, a size-1 dimension gets the stride it would have."""
    n, c, *sp = shape
    strides = {1: 1}
    step = c
    for axis in range(len(shape) - 1, 1, -1):
        strides[axis] = step
        step *= shape[axis]
    strides[0] = step
    return tuple(strides[a] for a in range(len(shape)))


# (shape, strides, c_contiguous, channels_last)
CASES = [
    ((2, 3, 4, 5), (60, 20, 5, 1), True, False),
    ((2, 3, 4, 5), (60, 1, 15, 3), False, True),
    ((2, 3, 4, 5, 6), torch_channels_last((2, 3, 4, 5, 6)), False, True),  # channels_last_3d
    ((2, 3, 7), (21, 1, 3), False, True),                                   # 1-d data, (N, L, C) memory
    ((2, 3, 1, 1), torch_channels_last((2, 3, 1, 1)), True, True),          # (3, 1, 3, 3): same bytes
    ((2, 1, 4, 5), torch_channels_last((2, 1, 4, 5)), True, True),          # C = 1
    ((1, 3, 4, 5), (999, 1, 15, 3), False, True),                           # N = 1: its stride is free
    ((2, 3, 4, 5), (60, 1, 3, 12), False, False),                           # (N, W, H, C): a transpose
    ((2, 3, 4, 5), (120, 40, 10, 2), False, False),                         # every other element
    ((2, 3, 4, 5), (0, 20, 5, 1), False, False),                            # broadcast over N
    ((2, 3, 4, 5), (60, -1, 15, 3), False, False),                          # negative
    ((6, 4), (1, 6), False, False),                                         # 2-d: no channels-last form
    ((0, 3, 4, 5), (60, 1, 15, 3), True, True),                             # empty
]


@pytest.mark.parametrize("shape, strides, c, cl", CASES)
def test_classify_torch_style_strides(shape, strides, c, cl):
    assert classify(shape, strides) == (c, cl)


def test_expected_strides_are_torchs():
    assert expected_strides((2, 3, 4, 5), "NHWC") == (60, 1, 15, 3) == torch_channels_last((2, 3, 4, 5))
    assert expected_strides((2, 3, 4, 5, 6), "NHWC") == (360, 1, 90, 18, 3)
    assert expected_strides((2, 3, 4, 5), "NCHW") == (60, 20, 5, 1)
    with pytest.raises(ValueError, match="3 strides"):
        classify((2, 3, 4, 5), (1, 2, 3))


def test_real_torch_strides_agree():
    torch = pytest.importorskip("torch")
    for shape, fmt in (((2, 3, 4, 5), torch.channels_last), ((2, 3, 4, 5, 6), torch.channels_last_3d),
                       ((2, 3, 1, 1), torch.channels_last)):
        t = torch.empty(shape).contiguous(memory_format=fmt)
        assert t.stride() == torch_channels_last(shape)
        assert classify(t.shape, t.stride())[1]


class FakeCAI:
    """A foreign producer: a (N, C, spatial...) array over memory laid out as `memory` (a numpy array in
    memory order), with strides in bytes."""

    def __init__(self, memory, shape, strides_elements, readonly=False, stream=None):
        self.buf = to_gpu(memory)
        item = memory.dtype.itemsize
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": memory.dtype.str, "data": (self.buf.ptr, readonly), "version": 3,
            "strides": tuple(s * item for s in strides_elements)}
        if stream is not None:
            self.__cuda_array_interface__["stream"] = stream


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 4, 5, 6), (3, 5, 7)])
def test_cai_channels_last_is_recognised_without_a_copy(dtype, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)              # the logical NCHW values
    order = interop.channels_last_order(len(shape))
    memory = np.ascontiguousarray(x.transpose(order))        # what channels-last memory holds
    f = FakeCAI(memory, shape, torch_channels_last(shape))
    v = layout_of(f)
    assert (v.layout, v.c_contiguous, v.channels_last) == ("NHWC", False, True)
    assert v.ptr == f.buf.ptr and v.shape == shape and v.dtype == np.dtype(dtype)
    assert v.strides == torch_channels_last(shape) and v.memory_shape == memory.shape
    g = v.as_gpuarray()
    assert g.ptr == f.buf.ptr and g.shape == memory.shape
    np.testing.assert_array_equal(g.get().astype(np.float64), memory.astype(np.float64))
    # the logical element (n, c, i, j) sits where the strides say
    flat = g.get().reshape(-1)
    idx = tuple(d - 1 for d in shape)
    assert flat[int(np.dot(idx, v.strides))] == x[idx]
    del f, v
    gc.collect()
    np.testing.assert_array_equal(g.get().astype(np.float64), memory.astype(np.float64))  # owner kept alive


def test_cai_contiguous_readonly_and_stream():
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    v = layout_of(FakeCAI(x, x.shape, expected_strides(x.shape, "NCHW")))
    assert (v.layout, v.c_contiguous, v.channels_last) == ("NCHW", True, False)
    np.testing.assert_array_equal(v.as_gpuarray().get(), x)
    no_strides = FakeCAI(x, x.shape, (60, 20, 5, 1))
    no_strides.__cuda_array_interface__["strides"] = None
    assert layout_of(no_strides).strides is None and layout_of(no_strides).layout == "NCHW"
    ro = layout_of(FakeCAI(x, x.shape, (60, 20, 5, 1), readonly=True))
    assert ro.readonly
    with pytest.raises(ValueError, match="read-only"):
        ro.as_gpuarray()
    np.testing.assert_array_equal(ro.as_gpuarray(allow_readonly=True).get(), x)
    s = cybn.Stream()
    layout_of(FakeCAI(x, x.shape, (60, 20, 5, 1), stream=s.handle))  # waited on; no error
    with pytest.raises(ValueError, match="stream 0"):
        layout_of(FakeCAI(x, x.shape, (60, 20, 5, 1), stream=0))


@pytest.mark.parametrize("strides, match", [
    ((60, 1, 3, 12), r"neither C-contiguous \(60, 20, 5, 1\) nor dense channels-last \(60, 1, 15, 3\)"),
    ((120, 40, 10, 2), "neither C-contiguous"),
])
def test_cai_other_strides_are_refused_naming_the_accepted_ones(strides, match):
    x = np.zeros(240, np.float32)
    with pytest.raises(ValueError, match=match):
        layout_of(FakeCAI(x, (2, 3, 4, 5), strides))
    f = FakeCAI(np.zeros(12, np.float32), (3, 4), (1, 3))
    with pytest.raises(ValueError, match=r"neither C-contiguous \(4, 1\); make a copy"):
        layout_of(f)
    f.__cuda_array_interface__["strides"] = (4, 6)  # bytes, not whole float32 elements
    with pytest.raises(ValueError, match="not whole multiples"):
        layout_of(f)


def _patch_capsule(capsule, shape, strides):
    """Rewrite an exported capsule's DLTensor shape and strides in place (same ndim): what a foreign
    producer such as torch hands out for a channels_last tensor."""
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    base = get_ptr(capsule, b"dltensor")
    shape_ptr = ctypes.c_void_p.from_address(base + 24).value
    strides_ptr = ctypes.c_void_p.from_address(base + 32).value
    (ctypes.c_int64 * len(shape)).from_address(shape_ptr)[:] = shape
    (ctypes.c_int64 * len(shape)).from_address(strides_ptr)[:] = strides


@pytest.mark.parametrize("dtype", [np.float32, BF16])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 2, 4, 5)])
def test_dlpack_capsule_with_channels_last_strides(dtype, shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    memory = np.ascontiguousarray(x.transpose(interop.channels_last_order(len(shape))))
    producer = to_gpu(memory)
    cap = producer.__dlpack__(stream=-1)
    _patch_capsule(cap, shape, torch_channels_last(shape))
    v = layout_of(cap)
    assert "used_dltensor" in repr(cap)  # consumed: the view's owner releases it
    assert (v.layout, v.ptr, v.shape, v.dtype, v.strides) == ("NHWC", producer.ptr, shape, np.dtype(dtype),
                                                              torch_channels_last(shape))
    g = v.as_gpuarray()
    del producer, cap, v
    gc.collect()
    np.testing.assert_array_equal(g.get().astype(np.float64), memory.astype(np.float64))


def test_dlpack_producer_object_and_refused_capsule_stays_unconsumed():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    g = to_gpu(x)
    v = layout_of(g)  # a GPUArray
    assert (v.layout, v.ptr, v.strides, v.owner) == ("NCHW", g.ptr, None, g)

    class Producer:  # has both protocols: DLPack is taken
        __cuda_array_interface__ = property(lambda self: pytest.fail("CAI read although __dlpack__ exists"))

        def __dlpack_device__(self):
            return (2, 0)

        def __dlpack__(self, stream=None):
            return g.__dlpack__(stream=stream)

    assert layout_of(Producer()).layout == "NCHW"
    cap = g.__dlpack__(stream=-1)
    _patch_capsule(cap, (1, 2, 3, 4), (24, 1, 2, 8))  # (N, W, H, C): neither layout
    with pytest.raises(ValueError, match=r"neither C-contiguous \(24, 12, 4, 1\) nor dense channels-last "
                                         r"\(24, 1, 8, 2\)"):
        layout_of(cap)
    assert "used_dltensor" not in repr(cap)
    with pytest.raises(BufferError, match="kDLCPU"):
        layout_of(np.zeros(3))
    with pytest.raises(TypeError, match="not a device array"):
        layout_of([1, 2])
    with pytest.raises(TypeError, match="no __cuda_array_interface__|not a device array"):
        layout_of(DeviceBuffer(16))
