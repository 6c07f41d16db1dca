# distutils: language = c++
# cython: boundscheck=False, wraparound=False, cdivision=True
"""BatchNorm: the functional layer (forward_train, forward_infer, backward, backward_infer) over a nogil
core (see batchnorm.pxd) that plans and launches the kernels of cybn/kernels/batchnorm.cu.

Shapes: x is (N, C, *spatial) in "spatial" mode (one statistic per channel over N * prod(spatial)
values) or (N, C, *rest) in "per_activation" mode (one statistic per (c, *rest) position over the N
rows). x/y/dy/dx float32 or float16; scale, bias, running and saved statistics float32 with one value
per statistic (any shape of that size, e.g. (C,) or (1, C, 1, 1)).

Training forward: batch mean, biased batch variance var_b, invstd = 1/sqrt(var_b + eps),
y = scale * (x - mean) * invstd + bias; running_mean = (1 - factor) * running_mean + factor * mean and
running_var = (1 - factor) * running_var + factor * var_b * M / (M - 1) (M values per statistic; when
M == 1 the unbiased variance is undefined and var_b, i.e. 0, is used: never NaN or inf).

Numerics (cybn/kernels/batchnorm.cu, welford.cuh): the batch mean is a float pair hi + lo (save_mean is hi)
and x - mean is formed as (x - hi) - lo everywhere; the backward recovers lo from x itself in its
compensated reduction (no reserve travels beside the saved statistics). Welford's state carries the
variance (M2 / n) on power-of-two-scaled samples, finished in double: no overflow while the variance
fits float32. Parameter gradients take cuDNN's alpha/beta in the backward's own launch.

Workspace: the split plan (several CTAs per channel) needs per-column counters and scratch for the
partial statistics. The last CTA of each column re-arms its counter, so a split call is its two launches
and no memset on a workspace the previous call left armed; each workspace here tracks that (scratch.pxi's
rule) and any other content gets one async memset of the counters first. Allocated on first need per
(device, stream, thread) and kept for the life of the process; one per stream and thread so that no
two calls' launches interleave on one workspace.
"""
import enum
import numbers
import threading

import numpy as np

from libc.stdio cimport snprintf
from libc.string cimport memset
from cuda.bindings cimport cydriver

from cybn.driver.device cimport ensure_context, current_ordinal
from cybn.driver.status cimport check, raise_error
from cybn.driver.stream cimport resolve_stream
from cybn.driver.memory cimport DeviceBuffer
from cybn.driver.function cimport Function
from cybn.array.gpuarray cimport GPUArray

class Mode(enum.Enum):
    """spatial: one statistic per channel; per_activation: one per (c, *rest) position."""
    spatial = "spatial"
    per_activation = "per_activation"


# One job per file, one extension module (the core's cdef functions stay inlined and nogil; cybn.capi and
# Cython users cimport them from batchnorm.pxd). Constants shared with the kernels and C: bn_abi.h.
include "descriptor.pxi"
include "plan.pxi"
include "plan_nhwc.pxi"
include "scratch.pxi"
include "launch.pxi"
include "prepared.pxi"
include "workspaces.pxi"
include "inspect.pxi"
include "layout.pxi"
include "arguments.pxi"
include "epilogue.pxi"
include "api.pxi"
include "sync.pxi"
