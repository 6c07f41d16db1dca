"""Shared driver of the dtype x epilogue tests: one training step (forward_train, backward) and one inference
step (forward_infer, backward_infer) of the engine with a fused activation / residual, each compared with
cybn.testing.bn_ref_epilogue (float64 from the maths) at the dtype's tolerance."""
import numpy as np

from cybn import batchnorm, gpuarray
from cybn.testing import bn_ref_epilogue as R

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # the test extra installs it; without it the bfloat16 cases are skipped
    BF16 = None

ALPHA = {"clipped_relu": 2.5, "leaky_relu": 0.1, "elu": 0.7}  # the others ignore alpha


def _close(name, got, ref, dtype, scale=1.0):
    rtol, atol = R.tolerances(dtype)
    atol *= scale
    got = np.asarray(got.get(), np.float64).reshape(np.shape(ref))
    err = np.abs(got - ref) / (atol + rtol * np.abs(ref))
    assert np.all(err <= 1), f"{name}: worst {err.max():.3g} x tolerance at {np.unravel_index(err.argmax(), err.shape)}"


def step(rng, shape, dtype, act, residual, mode="spatial", use_y=True, offset=0.0):
    """Runs the four calls with activation `act` (None or a name) and a residual (bool) and checks every output."""
    dtype = np.dtype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    K = shape[1] if mode == "spatial" else int(np.prod(shape[1:]))
    alpha = ALPHA.get(act, 0.0)
    x = (rng.standard_normal(shape) * 1.5 + offset).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype) if residual else None
    dy = rng.standard_normal(shape).astype(dtype)
    scale, bias = rng.uniform(0.5, 1.5, K).astype(pdt), rng.standard_normal(K).astype(pdt)
    rm, rv = rng.standard_normal(K).astype(pdt), rng.uniform(0.5, 2.0, K).astype(pdt)
    g = gpuarray.to_gpu
    gz = None if z is None else g(z)
    grm, grv = g(rm), g(rv)
    x64, z64 = x.astype(np.float64), None if z is None else z.astype(np.float64)
    kw = dict(mode=mode, activation=act, activation_alpha=alpha)

    y, sm, si = batchnorm.forward_train(g(x), g(scale), g(bias), grm, grv, 1e-5, 0.1, residual=gz, **kw)
    ry, rrm, rrv, mean, invstd, v = R.forward_train(x64, scale, bias, rm, rv, 1e-5, 0.1, act, alpha, z64, mode)
    assert y.dtype == dtype and sm.dtype == pdt and si.dtype == pdt
    for name, got, ref in (("y", y, ry), ("save_mean", sm, mean), ("save_invstd", si, invstd),
                           ("running_mean", grm, rrm), ("running_var", grv, rrv)):
        _close(name, got, ref, dtype if name == "y" else pdt)

    # From y (every act but swish and clipped relu) or recomputed from x, the statistics, bias and z.
    epi = act is not None or residual
    recompute = act is not None and (not use_y or act in ("swish", "silu", "relu6", "clipped_relu"))
    res_arg = (gz if recompute else True) if residual else False
    outs = batchnorm.backward(g(x), g(dy), g(scale), sm, si, y=y if (use_y and epi) else None, residual=res_arg,
                              bias=g(bias), **kw)
    rdx, rdz, rds, rdb = R.backward(x64, dy, scale, mean, invstd, v, act, alpha, mode)
    _check_grads(outs, (rdx, rdz, rds, rdb), residual, dtype, pdt)

    yi = batchnorm.forward_infer(g(x), g(scale), g(bias), grm, grv, 1e-5, residual=gz, **kw)
    vi = R.forward_infer(x64, scale, bias, rrm, rrv, 1e-5, None, 0.0, z64, mode)
    _close("y_infer", yi, R.act_forward(act, vi, alpha), dtype)
    outs = batchnorm.backward_infer(g(x), g(dy), g(scale), grm, grv, 1e-5, y=yi if (use_y and epi) else None,
                                    residual=res_arg, bias=g(bias), **kw)
    ref = R.backward_infer(x64, dy, scale, rrm, rrv, 1e-5, vi, act, alpha, mode)
    _check_grads(outs, ref, residual, dtype, pdt)


def _check_grads(outs, ref, residual, dtype, pdt):
    rdx, rdz, rds, rdb = ref
    if residual:
        assert len(outs) == 4
        dx, dz, ds, db = outs
        _close("dz", dz, rdz, dtype)
    else:
        assert len(outs) == 3
        dx, ds, db = outs
    _close("dx", dx, rdx, dtype)
    # Parameter gradients: P-type sums, but in half precision of g = dy * act'(v) with act' read from the
    # rounded y: each term off by up to the data type's tolerance t (e.g. tanh' = 1 - y^2 near |y| = 1),
    # independently, so the sum of M terms by about t * sqrt(M) in absolute terms.
    M = int(np.prod(np.shape(rdx))) // np.size(rds)
    tol, scale = (pdt, 1.0) if dtype.itemsize >= 4 else (dtype, max(1.0, np.sqrt(M) / 2))
    _close("scale_grad", ds, rds, tol, scale)
    _close("bias_grad", db, rdb, tol, scale)
