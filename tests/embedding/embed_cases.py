"""The embedding tests' cases, the C API's codes (as in cybn.h) and their random inputs."""
import numpy as np

CASES = {
    # name: (mode, dtype, (N, C, S), affine)
    "spatial-fp32": ("spatial", np.float32, (2, 3, 5), True),
    "spatial-fp16-vec": ("spatial", np.float16, (3, 2, 8), True),
    "per_activation-fp32": ("per_activation", np.float32, (5, 3, 2), True),
    "spatial-fp32-nonaffine": ("spatial", np.float32, (3, 4, 4), False),
    # big enough that the heuristic splits each statistic over CTAs: the caller's workspace is used
    "spatial-fp32-split": ("spatial", np.float32, (2, 1, 8192), True),
    "per_activation-fp32-split": ("per_activation", np.float32, (16384, 1, 1), True),
}
SPLIT_CASES = ("spatial-fp32-split", "per_activation-fp32-split")

SPATIAL, PER_ACTIVATION = 0, 1
FLOAT32, FLOAT16 = 0, 1
EINVAL, ENOTPREPARED, EWORKSPACE = -1, -2, -3
CODES = {"spatial": SPATIAL, "per_activation": PER_ACTIVATION, np.float32: FLOAT32, np.float16: FLOAT16}


def inputs(shape, dtype, mode, seed):
    rng = np.random.default_rng(seed)
    N, C, S = shape
    K = C if mode == "spatial" else C * S
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    scale = rng.uniform(0.5, 1.5, K).astype(np.float32)
    bias = rng.standard_normal(K).astype(np.float32)
    rm = rng.standard_normal(K).astype(np.float32) * 0.1
    rv = rng.uniform(0.5, 2.0, K).astype(np.float32)
    return x, dy, scale, bias, rm, rv
