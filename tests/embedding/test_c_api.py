"""The C API (cybn/include/cybn.h, capsule cybn._C_API) from a C and a C++ extension that makes its own
buffers, stream and context calls through the CUDA driver API, against a float64 reference."""
import os
import threading

import numpy as np
import pytest

import cybn
from cybn import softgpu

import embed_build
from embed_cases import (CASES, CODES, EINVAL, ENOTPREPARED, EWORKSPACE, FLOAT16, FLOAT32, PER_ACTIVATION,
                         SPATIAL, SPLIT_CASES, inputs)
from cybn.testing.reference import tolerances, train_then_infer as bn_reference


def run_and_check(ext, case, seed=0):
    mode, dtype, shape, affine = CASES[case]
    x, dy, scale, bias, rm, rv = inputs(shape, dtype, mode, seed)
    eps, factor = 1e-3, 0.25
    out = ext.run(CODES[mode], CODES[dtype], *shape, eps, factor, affine, x.tobytes(), scale.tobytes(),
                  bias.tobytes(), rm.tobytes(), rv.tobytes(), dy.tobytes())
    ref = bn_reference(x, scale if affine else None, bias if affine else None, rm, rv, dy, eps, factor, mode)
    rtol, atol = tolerances(dtype)
    data_outputs = {"y", "dx", "y_infer", "dx_infer"}
    assert set(out) == set(ref)
    for name, expected in ref.items():
        got = np.frombuffer(out[name], dtype if name in data_outputs else np.float32).astype(np.float64)
        # fp16 data enters the float32 reductions rounded: a looser bar on everything derived from it
        tol = (rtol, atol) if name in data_outputs or dtype == np.float16 else (2e-4, 2e-4)
        np.testing.assert_allclose(got, expected, rtol=tol[0], atol=tol[1] * max(1.0, np.abs(expected).max()),
                                   err_msg=f"{case}: {name}")


def test_table_matches_header(cext):
    info = cext.info()
    assert info["version"] == info["header_version"] == cybn.capi.C_API_VERSION
    assert info["size"] == info["header_size"]
    assert info["desc_size"] == 128


@pytest.mark.parametrize("case", sorted(CASES))
def test_c_extension_pipeline(cext, case):
    run_and_check(cext, case)


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_split_cases_use_a_workspace(cext, case):
    """The split cases above run forward_train then backward through one workspace that the extension
    fills with garbage (0xA5) first: right only because every split call zeroes its own counters."""
    mode, dtype, shape, _ = CASES[case]
    cext.prepare(CODES[dtype], CODES[mode])
    st, msg, need = cext.call("workspace_size", fields(CODES[mode], CODES[dtype], 1, *shape), (), 0, False)
    assert st == 0 and need > 0, msg


def test_cpp_extension_pipeline(cppext):
    run_and_check(cppext, "spatial-fp32", seed=1)


def test_version_mismatch_is_refused(build_dir):
    """An extension built against an older cybn.h gets an ImportError naming both versions."""
    old = os.path.join(build_dir, "old-include")
    os.makedirs(old, exist_ok=True)
    with open(os.path.join(cybn.get_include(), "cybn.h")) as f:
        text = f.read()
    current = "#define CYBN_C_API_VERSION %d" % cybn.capi.C_API_VERSION
    assert current in text
    with open(os.path.join(old, "cybn.h"), "w") as f:
        f.write(text.replace(current, "#define CYBN_C_API_VERSION 0"))
    includes = [d for d in embed_build.include_dirs() if d != cybn.get_include()] + [old]
    path = embed_build.compile_extension([os.path.join(embed_build.EXT_DIR, "bn_cext.c")], build_dir, "bn_cext_v0",
                                         includes=includes, defines=["BN_CEXT_NAME=bn_cext_v0"])
    with pytest.raises(ImportError, match=r"built against cybn\.h version 0 .*provides version %d.*rebuild"
                       % cybn.capi.C_API_VERSION):
        embed_build.load("bn_cext_v0", path)


def test_prepare_refuses_unknown_codes(cext):
    with pytest.raises(ValueError, match=r"dtype must be CYBN_FLOAT32 \(0\) or CYBN_FLOAT16 \(1\), got 7"):
        cext.prepare(7, SPATIAL)
    with pytest.raises(ValueError, match=r"mode must be CYBN_SPATIAL .* got -1"):
        cext.prepare(FLOAT32, -1)


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def buffers(cext):
    """Real device buffers (N, C, S) = (4, 3, 2) float32, so a call that wrongly launched would not
    touch wild memory."""
    cext.prepare(FLOAT32, SPATIAL)
    cext.prepare(FLOAT32, PER_ACTIVATION)
    x = cybn.to_gpu(np.arange(24, dtype=np.float32).reshape(4, 3, 2))
    bufs = {n: cybn.empty((4, 3, 2), np.float32) for n in ("y", "dy", "dx")}
    bufs["dy"].fill(1.0)
    for n in ("scale", "bias", "rm", "sm", "si", "sg", "bg"):
        bufs[n] = cybn.zeros((6,), np.float32)
    bufs["rv"] = cybn.to_gpu(np.ones(6, np.float32))
    bufs["x"] = x
    yield bufs
    bufs.clear()


def fields(mode=SPATIAL, dtype=FLOAT32, flags=1, N=4, C=3, S=2, eps=1e-5, factor=0.1, ws=0, ws_bytes=0, reserved=0,
           alphas=()):
    """The descriptor field by field; alphas: (scale_grad_alpha, scale_grad_beta, bias_grad_alpha,
    bias_grad_beta), else they stay 0 (as a version-1 descriptor's reserved tail)."""
    return (mode, dtype, flags, N, C, S, eps, factor, ws, ws_bytes, reserved) + tuple(alphas)


def ptrs(b, op):
    names = {"forward_train": ("x", "y", "scale", "bias", "rm", "rv", "sm", "si"),
             "forward_infer": ("x", "y", "scale", "bias", "rm", "rv"),
             "backward": ("x", "dy", "dx", "scale", "sm", "si", "sg", "bg"),
             "backward_infer": ("x", "dy", "dx", "scale", "rm", "rv", "sg", "bg")}[op]
    return [b[n].ptr for n in names]


def launches():
    return softgpu.counters()["total"]["launches"]


def refused(cext, op, f, p, status=EINVAL, match="", own_context=False):
    before = launches()
    st, msg = cext.call(op, f, tuple(p), 0, own_context)
    assert (st, launches()) == (status, before), msg
    assert msg.startswith(op.replace("_null", "") + ":") and match in msg, msg
    assert not msg.startswith("%s: %s:" % ((op.replace("_null", ""),) * 2)), msg  # the prefix once
    return msg


def test_valid_descriptor_launches(cext, buffers):
    """The control for the refusals below: the same call with good input launches."""
    before = launches()
    st, msg = cext.call("forward_train", fields(), tuple(ptrs(buffers, "forward_train")), 0, False)
    assert st == 0, msg
    assert launches() > before


@pytest.mark.parametrize("op", ["forward_train", "forward_infer", "backward", "backward_infer"])
@pytest.mark.parametrize("which", [0, 1, 4])
def test_null_pointer_is_refused(cext, buffers, op, which):
    p = ptrs(buffers, op)
    p[which] = 0
    refused(cext, op, fields(), p, match="null")


@pytest.mark.parametrize("op", ["forward_train", "backward"])
def test_affine_needs_scale(cext, buffers, op):
    p = ptrs(buffers, op)
    p[3] = 0  # scale
    refused(cext, op, fields(flags=1), p, match="null scale")


@pytest.mark.parametrize("bad, match", [
    (dict(C=0), "N, C and S must be positive"),
    (dict(N=-4), "N, C and S must be positive"),
    (dict(S=-1), "N, C and S must be positive"),
    (dict(dtype=7), "unknown dtype"),
    (dict(mode=5), "unknown mode"),
    (dict(eps=0.0), "epsilon must be > 0"),
    (dict(eps=float("nan")), "epsilon must be > 0"),
    (dict(factor=1.5), "factor must be in [0, 1]"),
    (dict(flags=6), "unknown flags"),
    (dict(reserved=1), "reserved fields must be zero"),
    (dict(N=1 << 40, C=1 << 20, S=1 << 10), "overflows"),
    (dict(ws=8, ws_bytes=1024), "not 16-byte aligned"),
])
@pytest.mark.parametrize("op", ["forward_train", "backward", "forward_infer", "workspace_size"])
def test_impossible_descriptor_is_refused(cext, buffers, op, bad, match):
    p = ptrs(buffers, "forward_train" if op == "workspace_size" else op)
    before = launches()
    res = cext.call(op, fields(**bad), tuple(p), 0, False)
    assert (res[0], launches()) == (EINVAL, before), res[1]
    assert res[1].startswith(op + ":") and match in res[1], res[1]


def test_misaligned_pointer_is_refused(cext, buffers):
    p = ptrs(buffers, "forward_train")
    p[1] += 2  # y: float32 needs 4-byte alignment
    refused(cext, "forward_train", fields(), p, match="not aligned")
    p = ptrs(buffers, "forward_train")
    p[6] += 1  # save_mean
    refused(cext, "forward_train", fields(), p, match="not 4-byte aligned")


def test_workspace_null_out_pointer(cext, buffers):
    st, msg = cext.call("workspace_size_null", fields(), (), 0, False)
    assert st == EINVAL and "nbytes pointer is NULL" in msg


def test_desc_init(cext):
    st, msg, f, zeroed = cext.desc_init(PER_ACTIVATION, FLOAT16, 2, 3, 4, 1e-3, 0.5, 1)
    assert st == 0 and zeroed
    assert f == (PER_ACTIVATION, FLOAT16, 1, 2, 3, 4, np.float32(1e-3), 0.5)


@pytest.mark.parametrize("args, match", [
    ((SPATIAL, FLOAT32, 2, 0, 4, 1e-3, 0.5, 1), "N, C and S must be positive"),
    ((SPATIAL, 3, 2, 3, 4, 1e-3, 0.5, 1), "unknown dtype"),
    ((SPATIAL, FLOAT32, 2, 3, 4, -1.0, 0.5, 1), "epsilon"),
    ((SPATIAL, FLOAT32, 2, 3, 4, 1e-3, 0.5, 4), "unknown flags"),
])
def test_desc_init_refuses_and_leaves_descriptor(cext, args, match):
    st, msg, f, unchanged = cext.desc_init(*args)
    assert st == EINVAL and f is None and unchanged
    assert msg.startswith("desc_init:") and match in msg, msg
    st, msg = cext.desc_init_null()
    assert st == EINVAL and "descriptor pointer is NULL" in msg


def test_unprepared_context_is_refused(cext, buffers):
    """A context nothing was prepared for (a fresh non-primary one) gets ENOTPREPARED."""
    refused(cext, "forward_train", fields(), ptrs(buffers, "forward_train"), status=ENOTPREPARED,
            match="call prepare(dtype, mode) first", own_context=True)


def test_thread_without_context_is_refused(cext, buffers):
    result = []
    p = tuple(ptrs(buffers, "forward_train"))
    before = launches()
    t = threading.Thread(target=lambda: result.append(cext.call("forward_train", fields(), p, 0, False)))
    t.start()
    t.join()
    st, msg = result[0]
    assert (st, launches()) == (ENOTPREPARED, before)
    assert "no current CUDA context" in msg


def test_missing_workspace_is_refused(cext, buffers):
    """A plan that splits the reduction over CTAs needs a workspace; without one, nothing launches."""
    N = 1 << 16   # one statistic over 65536 rows (per-activation): the heuristic splits it
    st, msg, need = cext.call("workspace_size", fields(mode=PER_ACTIVATION, N=N, C=1, S=1), (), 0, False)
    assert st == 0, msg
    assert need > 0
    st, msg, small = cext.call("workspace_size", fields(mode=PER_ACTIVATION), (), 0, False)
    assert (st, small) == (0, 0), msg
    x = cybn.empty((N,), np.float32)
    y = cybn.empty((N,), np.float32)
    b = buffers
    p = [x.ptr, y.ptr, b["scale"].ptr, b["bias"].ptr, b["rm"].ptr, b["rv"].ptr, b["sm"].ptr, b["si"].ptr]
    refused(cext, "forward_train", fields(mode=PER_ACTIVATION, N=N, C=1, S=1), p, status=EWORKSPACE,
            match="workspace")
    ws = cybn.zeros((need // 4 - 1,), np.float32)   # one float short
    refused(cext, "forward_train", fields(mode=PER_ACTIVATION, N=N, C=1, S=1, ws=ws.ptr, ws_bytes=ws.nbytes), p,
            status=EWORKSPACE, match="smaller than")


# ------------------------------------------------------------------------------------------ accumulation
ACCUMULATE = 2  # CYBN_ACCUMULATE_GRADS


@pytest.mark.parametrize("mode,shape", [(SPATIAL, (4, 3, 5)), (PER_ACTIVATION, (6, 3, 2))])
@pytest.mark.parametrize("op", ["backward", "backward_infer"])
def test_backward_accumulates_parameter_gradients(cext, mode, shape, op):
    """CYBN_ACCUMULATE_GRADS: scale_grad = alpha * dscale + beta * scale_grad (bias_grad likewise) in the
    backward's own launch; without the flag the four fields are ignored and the gradients overwritten."""
    cext.prepare(FLOAT32, mode)
    rng = np.random.default_rng(5)
    N, C, S = shape
    axes = (0, 2) if mode == SPATIAL else (0,)
    K = C if mode == SPATIAL else C * S
    kshape = (1, C, 1) if mode == SPATIAL else (1, C, S)
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    scale = rng.uniform(0.5, 1.5, K).astype(np.float32)
    old_s, old_b = rng.standard_normal(K).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    if op == "backward":
        stats = (mean.ravel().astype(np.float32), (1 / np.sqrt(x64.var(axis=axes) + 1e-5)).ravel().astype(np.float32))
        xhat = (x64 - mean) * stats[1].reshape(kshape)
    else:
        stats = (rng.standard_normal(K).astype(np.float32), rng.uniform(0.5, 2, K).astype(np.float32))
        xhat = (x64 - stats[0].reshape(kshape)) / np.sqrt(stats[1].astype(np.float64).reshape(kshape) + 1e-5)
    ds, db = (dy64 * xhat).sum(axis=axes).ravel(), dy64.sum(axis=axes).ravel()
    alphas = (0.5, 0.25, 2.0, -1.0)
    for flags, want in ((1 | ACCUMULATE, (0.5 * ds + 0.25 * old_s, 2.0 * db - old_b)), (1, (ds, db))):
        b = {"x": cybn.to_gpu(x), "dy": cybn.to_gpu(dy), "dx": cybn.empty(shape, np.float32),
             "scale": cybn.to_gpu(scale), "sg": cybn.to_gpu(old_s), "bg": cybn.to_gpu(old_b)}
        b["sm" if op == "backward" else "rm"], b["si" if op == "backward" else "rv"] = map(cybn.to_gpu, stats)
        before = launches()
        st, msg = cext.call(op, fields(mode, FLOAT32, flags, N, C, S, 1e-5, alphas=alphas), tuple(ptrs(b, op)), 0,
                            False)
        assert st == 0, msg
        assert launches() - before == 1
        np.testing.assert_allclose(b["sg"].get(), want[0], rtol=1e-5, atol=1e-5, err_msg=f"scale_grad {flags}")
        np.testing.assert_allclose(b["bg"].get(), want[1], rtol=1e-5, atol=1e-5, err_msg=f"bias_grad {flags}")


def test_accumulation_coefficients_must_be_finite(cext, buffers):
    p = ptrs(buffers, "backward")
    refused(cext, "backward", fields(flags=1 | ACCUMULATE, alphas=(1.0, float("inf"), 1.0, 0.0)), p,
            match="must be finite")
