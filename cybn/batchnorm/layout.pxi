# The `layout` argument: where the channel axis is, and the descriptor's (N, C, S) from a shape.


cdef int _layout_code(layout, int mode) except -1:
    """NCHW: the channel axis is 1; NHWC: the channel axis is last. Per-activation statistics are one per
    non-batch position, so either layout is the same (N, F) rows, run by the row-major kernels of
    batchnorm_nhwc.cu (plan_nhwc.pxi's _is_rows) whatever the layout code says."""
    if layout == "NCHW":
        return BN_LAYOUT_NCHW
    if layout == "NHWC":
        return BN_LAYOUT_NHWC if mode == BN_SPATIAL else BN_LAYOUT_NCHW
    raise ValueError(f"layout must be 'NCHW' (channel axis 1) or 'NHWC' (channel axis last), got {layout!r}")


cdef int _fill_shape(bn_desc* d, tuple shape, layout) except -1:
    """d.layout, N, C, S from a shape (d.mode set): NCHW (N, C, *spatial), NHWC (N, *spatial, C)."""
    d.layout = _layout_code(layout, d.mode)
    cdef Py_ssize_t last = len(shape) - 1
    d.N = shape[0]
    d.C = shape[last] if layout == "NHWC" else shape[1]
    d.S = 1
    for n in (shape[1:last] if layout == "NHWC" else shape[2:]):
        d.S *= n
    if layout == "NHWC" and d.mode == BN_PER_ACTIVATION:  # statistics in memory order: (N, F) rows
        d.C, d.S = d.C * d.S, 1
    return 0


# ---------------------------------------------------------------- channels-last strides
class _ChannelsLastView:
    """A foreign array's memory seen in its memory order (N, *spatial, C): the same pointer, the permuted
    __cuda_array_interface__; keeps the original alive."""

    def __init__(self, base, cai):
        self.base = base
        self.__cuda_array_interface__ = cai


def _channels_last_view(obj):
    """obj a foreign device array (__cuda_array_interface__) of logical shape (N, C, *spatial) whose strides
    put C innermost (torch's channels_last / channels_last_3d, any producer's strides): a view over the same
    memory with shape (N, *spatial, C), no copy. None for anything else (a GPUArray, C-contiguous strides,
    other orders)."""
    if isinstance(obj, GPUArray):
        return None
    try:
        cai = obj.__cuda_array_interface__
        shape, strides, typestr = tuple(cai["shape"]), cai.get("strides"), str(cai["typestr"])
        itemsize = int(typestr[2:])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if strides is None or len(shape) < 3 or len(strides) != len(shape):
        return None
    perm = (0,) + tuple(range(2, len(shape))) + (1,)
    pshape, pstrides = tuple(shape[i] for i in perm), tuple(int(strides[i]) for i in perm)
    expected = itemsize
    for n, s in zip(reversed(pshape), reversed(pstrides)):
        if n != 1 and s != expected:
            return None
        expected *= n
    view = dict(cai)
    view["shape"], view["strides"] = pshape, None
    return _ChannelsLastView(obj, view)


def _resolve_layout(x, layout):
    """(x, layout): an x whose strides are channels-last is taken as NHWC in its memory order (no copy),
    whether layout says "NHWC" or is left at "NCHW"; anything else as given."""
    view = _channels_last_view(x) if layout in ("NCHW", "NHWC") else None
    return (x, layout) if view is None else (view, "NHWC")


def _as_layout(obj, layout):
    """A companion array (out, grad_y) of a channels-last x: its channels-last strides read the same way."""
    view = _channels_last_view(obj) if layout == "NHWC" and obj is not None else None
    return obj if view is None else view
