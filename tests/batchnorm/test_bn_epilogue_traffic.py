"""The fused epilogue adds no pass (software GPU's exact counters, not timed): the activation moves no extra
byte in the forward; a residual adds exactly one read of z there and exactly one write of dz in the
backward; the backward reading act' from y reads y once more per pass that needs g and nothing else."""
import numpy as np
import pytest

from cybn import batchnorm, gpuarray, softgpu

# Per-activation (N, F) rows run the row-major kernels, whose EPI 1 builds hold more registers: the
# occupancy-sized split of (2048, 24) may then differ between the plain and the epilogue call, so it is
# pinned (the traffic comparison needs one plan); (64, 24) is the heuristic's fused per-activation plan.
SHAPES = [((4, 8, 16, 16), {}), ((4, 8, 16, 16), {"split": 3}), ((2048, 24), {"split": 4}), ((64, 24), {}),
          ((3, 5, 7), {})]


def _measure(shape, dtype, override, op, act, residual, mode):
    rng = np.random.default_rng(0)
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    g = gpuarray.to_gpu
    x, z, dy = (g(rng.standard_normal(shape).astype(dtype)) for _ in range(3))
    scale, bias, rm = (g(rng.standard_normal(K).astype(np.float32)) for _ in range(3))
    rv = g(rng.uniform(0.5, 2, K).astype(np.float32))
    y, sm, si = gpuarray.empty(shape, dtype), gpuarray.empty((K,), np.float32), gpuarray.empty((K,), np.float32)
    out, dz = gpuarray.empty(shape, dtype), gpuarray.empty(shape, dtype)
    sg, bg = gpuarray.empty((K,), np.float32), gpuarray.empty((K,), np.float32)
    kw = dict(mode=mode, activation=act)
    with batchnorm.plan_override(**override):
        batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=y, save_mean=sm, save_invstd=si,
                                residual=z if residual else None, **kw)  # compiles, and the saved statistics
        with softgpu.measure() as m:
            if op == "forward_train":
                batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=out, save_mean=sm, save_invstd=si,
                                        residual=z if residual else None, **kw)
            elif op == "forward_infer":
                batchnorm.forward_infer(x, scale, bias, rm, rv, 1e-5, out=out, residual=z if residual else None, **kw)
            else:
                batchnorm.backward(x, dy, scale, sm, si, out=out, scale_grad=sg, bias_grad=bg,
                                   y=y if (act or residual) else None, residual=residual,
                                   grad_residual=dz if residual else None, **kw)
    return m.load_bytes, m.store_bytes, m.launches_count


@pytest.mark.parametrize("shape,override", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_residual_adds_one_read_forward_one_write_backward(shape, override, dtype):
    mode = "per_activation" if len(shape) == 2 else "spatial"
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    for op in ("forward_train", "forward_infer"):
        plain = _measure(shape, dtype, override, op, None, False, mode)
        act = _measure(shape, dtype, override, op, "relu", False, mode)
        res = _measure(shape, dtype, override, op, "relu", True, mode)
        assert act == plain, (op, act, plain)  # the activation itself moves nothing
        assert res == (plain[0] + nbytes, plain[1], plain[2]), (op, res, plain)  # + one read of z
    act = _measure(shape, dtype, override, "backward", "relu", False, mode)
    res = _measure(shape, dtype, override, "backward", "relu", True, mode)
    assert res == (act[0], act[1] + nbytes, act[2]), (res, act)  # + one write of dz, same launches


@pytest.mark.parametrize("shape,override", SHAPES)
def test_backward_through_y_reads_y_where_g_is_needed(shape, override):
    """Plain backward vs through relu from y: y is read once per pass over the data that forms g (the fused
    plan with every unit cached: once; split: in both launches), and the launches do not change."""
    mode = "per_activation" if len(shape) == 2 else "spatial"
    nbytes = int(np.prod(shape)) * 4
    plain = _measure(shape, np.float32, override, "backward", None, False, mode)
    act = _measure(shape, np.float32, override, "backward", "relu", False, mode)
    passes = 2 if plain[2] == 2 else 1
    assert act[2] == plain[2] and act[1] == plain[1]
    assert plain[0] + nbytes <= act[0] <= plain[0] + passes * nbytes, (act, plain)
