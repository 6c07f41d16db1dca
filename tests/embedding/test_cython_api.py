"""The Cython face (`from cybn.capi cimport ...`) from a tiny extension that calls BatchNorm inside
`with nogil:` on raw pointers of GPUArrays and the raw handle of a cybn Stream."""
import threading

import numpy as np
import pytest

import cybn

from embed_cases import CASES, CODES, inputs
from cybn.testing.reference import tolerances, train_then_infer as bn_reference

OUTPUTS = ("y", "save_mean", "save_invstd", "dx", "scale_grad", "bias_grad", "y_infer", "dx_infer",
           "scale_grad_infer", "bias_grad_infer")


@pytest.mark.parametrize("case", ["spatial-fp32", "per_activation-fp32", "spatial-fp16-vec"])
def test_cython_extension_pipeline(cyext, case):
    pipeline(cyext, case, seed=7)


def test_cython_pipelines_from_threads(cyext):
    """Two threads, each on its own stream, calling the nogil functions at the same time."""
    cyext.prepare_kernels(CODES[np.float32], CODES["spatial"])
    errors = []

    def work(seed):
        try:
            pipeline(cyext, "spatial-fp32", seed)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def pipeline(cyext, case, seed):
    mode, dtype, shape, affine = CASES[case]
    x, dy, scale, bias, rm, rv = inputs(shape, dtype, mode, seed=seed)
    eps, factor = 1e-4, 0.5
    K = scale.size
    cyext.prepare_kernels(CODES[dtype], CODES[mode])
    s = cybn.Stream()
    with cybn.stream(s):   # the uploads and allocations on the stream the extension launches on
        dev = {"x": cybn.to_gpu(x), "dy": cybn.to_gpu(dy), "scale": cybn.to_gpu(scale), "bias": cybn.to_gpu(bias),
               "running_mean": cybn.to_gpu(rm), "running_var": cybn.to_gpu(rv)}
        for name in OUTPUTS:
            dev[name] = cybn.empty(shape if name in ("y", "dx", "y_infer", "dx_infer") else (K,),
                                   dtype if name in ("y", "dx", "y_infer", "dx_infer") else np.float32)
        need = cyext.workspace_bytes(CODES[mode], CODES[dtype], *shape, eps, factor, affine)
        ws = cybn.zeros((max(need, 1),), np.uint8)
    st, msg = cyext.run(CODES[mode], CODES[dtype], *shape, eps, factor, affine, {k: v.ptr for k, v in dev.items()},
                        ws.ptr if need else 0, need, s.handle)
    assert st == 0, msg
    got = {k: dev[k].get(stream=s) for k in OUTPUTS + ("running_mean", "running_var")}
    s.synchronize()
    ref = bn_reference(x, scale, bias, rm, rv, dy, eps, factor, mode)
    rtol, atol = tolerances(dtype)
    for name, expected in ref.items():
        np.testing.assert_allclose(got[name].astype(np.float64).ravel(), expected, rtol=rtol,
                                   atol=atol * max(1.0, np.abs(expected).max()), err_msg=f"{case}: {name}")


def test_cython_prepare_raises(cyext):
    with pytest.raises(ValueError, match="dtype must be CYBN_FLOAT32"):
        cyext.prepare_kernels(9, 0)


def test_cython_refusal_message(cyext):
    with pytest.raises(RuntimeError, match=r"desc_init: descriptor: N, C and S must be positive .*C 0"):
        cyext.workspace_bytes(0, 0, 2, 0, 3, 1e-5, 0.1, True)
