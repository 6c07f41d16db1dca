"""Hypothesis strategies for BatchNorm problems: shapes (N = 1, odd sizes, non-power-of-two C), dtypes, modes,
epsilon and factor, launch plans forced through batchnorm.plan_override, and offsets into a larger buffer."""
import numpy as np
from hypothesis import strategies as st

import cybn
from cybn import gpuarray


@st.composite
def problems(draw, max_values=4096):
    mode = draw(st.sampled_from(["spatial", "per_activation"]))
    nd = draw(st.integers(0, 2))
    N = draw(st.sampled_from([1, 2]) | st.integers(1, 9))
    C = draw(st.sampled_from([1, 3, 5, 7]) | st.integers(1, 12))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(nd))
    shape = (N, C) + spatial
    K = C if mode == "spatial" else int(np.prod(shape[1:]))
    M = int(np.prod(shape)) // K
    if M < 2 or int(np.prod(shape)) > max_values:  # one value per statistic has no variance to normalise by
        shape = (N + 1, C) + spatial
    return dict(
        shape=shape, mode=mode,
        dtype=np.dtype(draw(st.sampled_from([np.float32, np.float16]))),
        epsilon=draw(st.floats(1e-6, 1.0)),
        factor=draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
        plan=dict(group=draw(st.sampled_from([0, 1, 32, 64])), split=draw(st.sampled_from([0, 1, 2, 3]))),
        offset=draw(st.integers(0, 3)),
        center=draw(st.sampled_from([0.0, 3.0, -100.0])),
        seed=draw(st.integers(0, 2 ** 32 - 1)),
    )


def at_offset(host, offset, keep):
    """A GPUArray holding `host`, `offset` elements into a larger allocation (kept alive in `keep`)."""
    base = cybn.to_gpu(np.concatenate([np.zeros(offset, host.dtype), host.ravel(), np.zeros(3, host.dtype)]))
    keep.append(base)
    return gpuarray.GPUArray.from_pointer(base.ptr + offset * host.dtype.itemsize, host.shape, host.dtype, base)
