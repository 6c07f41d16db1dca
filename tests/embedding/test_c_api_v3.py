"""C API version 3 (cybn.h) from a C extension (ext/bn_cext_v3.c): the descriptor's layout, dtype,
activation and flags, the *_ex entries with the epilogue's arrays, against the float64 reference."""
import os

import ml_dtypes
import numpy as np
import pytest

import cybn
from cybn import softgpu

import embed_build
from embed_cases import CODES, EINVAL, FLOAT32, SPATIAL, inputs
from cybn.testing import bn_ref_epilogue as epi
from cybn.testing.reference import forward_infer, train_then_infer

ACTIVATIONS = {"none": 0, "relu": 1, "clipped_relu": 2, "leaky_relu": 3, "elu": 4, "sigmoid": 5, "tanh": 6,
               "swish": 7}

AFFINE, ACCUMULATE, BIASED, FIX_GAMMA, RESIDUAL = 1, 2, 4, 8, 16
NCHW, NHWC = 0, 1
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, BF16: 2, np.dtype(np.float64): 3}


@pytest.fixture(scope="session")
def v3ext(build_dir):
    path = embed_build.compile_extension([os.path.join(embed_build.EXT_DIR, "bn_cext_v3.c")], build_dir, "bn_cext_v3")
    return embed_build.load("bn_cext_v3", path)


def launches():
    return softgpu.counters()["total"]["launches"]


def run(ext, shape=(3, 4, 5), mode="spatial", dtype=np.float32, layout=NCHW, flags=AFFINE, act=0, alpha=0.0,
        keep_y=True, plain=False, z=None, seed=0):
    x, dy, scale, bias, rm, rv = inputs(shape, dtype, mode, seed)
    p = np.float64 if np.dtype(dtype) == np.float64 else np.float32  # float64 data: float64 parameters
    scale, bias, rm, rv = (a.astype(p) for a in (scale, bias, rm, rv))
    zb = b"" if z is None else z.tobytes()
    out = ext.run_ex(CODES[mode], DTYPES[np.dtype(dtype)], layout, flags, act, alpha, *shape, 1e-3, 0.25, keep_y,
                     plain, x.tobytes(), zb, scale.tobytes(), bias.tobytes(), rm.tobytes(), rv.tobytes(), dy.tobytes())
    return out, (x, dy, scale, bias, rm, rv)


def reference(args, mode, flags, act="none", alpha=0.0, z=None):
    """The float64 reference of run_ex's four calls (cybn.testing's references)."""
    x, dy, scale, bias, rm, rv = args
    affine = bool(flags & AFFINE)
    scale, bias = (scale, bias) if affine else (None, None)
    if act == "none" and z is None:
        return train_then_infer(x, scale, bias, rm, rv, dy, 1e-3, 0.25, mode, running_var_unbiased=not flags & BIASED)
    a = None if act == "none" else act
    y, rm1, rv1, mean, invstd, v = epi.forward_train(x, scale, bias, rm, rv, 1e-3, 0.25, a, alpha, z, mode)
    dx, dz, sg, bg = epi.backward(x, dy, scale, mean, invstd, v, a, alpha, mode)
    v_i = forward_infer(x, scale, bias, rm1, rv1, 1e-3, mode) + (0.0 if z is None else z.astype(np.float64))
    dx_i, dz_i, sg_i, bg_i = epi.backward_infer(x, dy, scale, rm1, rv1, 1e-3, v_i, a, alpha, mode)
    out = {"y": y, "save_mean": mean, "save_invstd": invstd, "running_mean": rm1, "running_var": rv1, "dx": dx,
           "scale_grad": sg, "bias_grad": bg, "y_infer": epi.act_forward(a, v_i, alpha), "dx_infer": dx_i,
           "scale_grad_infer": sg_i, "bias_grad_infer": bg_i}
    if z is not None:
        out["dz"], out["dz_infer"] = dz, dz_i
    return {k: np.asarray(v).ravel() for k, v in out.items()}


def check(out, args, mode, flags, dtype=np.float32, act="none", alpha=0.0, z=None):
    ref = reference(args, mode, flags, act, alpha, z)
    assert set(out) == set(ref)
    rtol, atol = epi.tolerances(dtype)
    data = {"y", "dx", "dz", "y_infer", "dx_infer", "dz_infer"}
    pdtype = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    for name, expected in ref.items():
        got = np.frombuffer(out[name], dtype if name in data else pdtype).astype(np.float64)
        if np.dtype(dtype) in (np.float16, BF16) and name not in data:
            tol = (2e-3, 2e-3)  # statistics and gradients of rounded data, reduced in float32
        else:
            tol = (rtol, atol)
        np.testing.assert_allclose(got, expected, rtol=tol[0], atol=tol[1] * max(1.0, np.abs(expected).max()),
                                   err_msg=name)


def test_table_and_descriptor_layout(v3ext):
    info = v3ext.info()
    # version 4 (issue 14) appended the SyncBatchNorm split entries after version 3's; the descriptor is the same
    assert info["version"] == info["header_version"] == cybn.capi.C_API_VERSION == 4
    assert info["size"] == info["header_size"]
    # version 3's fields sit in version 2's reserved bytes: the descriptor keeps its 128 bytes
    assert (info["desc_size"], info["layout_offset"], info["activation_offset"]) == (128, 12, 80)


@pytest.mark.parametrize("mode, shape", [("spatial", (3, 4, 5)), ("per_activation", (6, 3, 2)),
                                         ("spatial", (2, 1, 8192))])  # the last one splits (workspace)
@pytest.mark.parametrize("flags", [AFFINE, AFFINE | BIASED, BIASED])
@pytest.mark.parametrize("keep_y", [True, False])
def test_ex_entries_and_the_biased_running_variance(v3ext, mode, shape, flags, keep_y):
    out, args = run(v3ext, shape, mode, flags=flags, keep_y=keep_y)
    check(out, args, mode, flags)


def test_biased_flag_changes_only_the_running_variance(v3ext):
    unbiased, _ = run(v3ext, flags=AFFINE)
    biased, _ = run(v3ext, flags=AFFINE | BIASED)
    M = 3 * 5
    for name in unbiased:
        if name != "running_var" and not name.endswith("_infer"):
            assert unbiased[name] == biased[name], name
    # the batch variance's share (factor 0.25) differs by exactly M / (M - 1)
    _, (x, *_rest) = run(v3ext, flags=AFFINE)
    rv0 = inputs((3, 4, 5), np.float32, "spatial", 0)[5].astype(np.float64)
    var = x.astype(np.float64).var(axis=(0, 2))
    got_u = np.frombuffer(unbiased["running_var"], np.float32) - 0.75 * rv0
    got_b = np.frombuffer(biased["running_var"], np.float32) - 0.75 * rv0
    np.testing.assert_allclose(got_u, 0.25 * var * M / (M - 1), rtol=1e-5)
    np.testing.assert_allclose(got_b, 0.25 * var, rtol=1e-5)


@pytest.mark.parametrize("change, match", [
    (dict(layout=5), "layout must be CYBN_LAYOUT_NCHW (0) or CYBN_LAYOUT_NHWC (1)"),
    (dict(layout=NHWC, mode="per_activation"), "CYBN_PER_ACTIVATION has one layout"),
    (dict(act=9), "activation must be a CYBN_ACT_* code"),
    (dict(act=ACTIVATIONS["clipped_relu"], alpha=0.0), "CYBN_ACT_CLIPPED_RELU needs activation_alpha > 0"),
    (dict(act=ACTIVATIONS["leaky_relu"], alpha=-0.1), "need activation_alpha >= 0"),
    (dict(act=ACTIVATIONS["elu"], alpha=float("nan")), "activation_alpha must be finite"),
    (dict(flags=AFFINE | 64), "unknown flags"),
])
def test_bad_version_3_fields_are_refused_before_anything_launches(v3ext, change, match):
    kw = dict(mode="spatial", plain=True) | change
    before = launches()
    with pytest.raises(RuntimeError, match="returned -1: .*" + match.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        run(v3ext, **kw)
    assert launches() == before


@pytest.mark.parametrize("op", ["forward_train", "forward_infer", "backward", "backward_infer"])
def test_version_2_entries_refuse_what_needs_the_ex_arrays(v3ext, op):
    st, msg = v3ext.v2_call(op, SPATIAL, FLOAT32, NCHW, AFFINE | RESIDUAL, 0)
    assert st == EINVAL and msg == f"{op}: CYBN_RESIDUAL needs the residual's arrays: call the *_ex entry"
    if op.startswith("backward"):
        st, msg = v3ext.v2_call(op, SPATIAL, FLOAT32, NCHW, AFFINE, ACTIVATIONS["relu"])
        assert st == EINVAL and msg == f"{op}: a backward through an activation needs y or bias: call the *_ex entry"
    # control: a version 3 field the version 2 entries can honour passes their check (and then stops at the
    # null pointers or the unprepared kernels, not at the entry)
    st, msg = v3ext.v2_call(op, SPATIAL, FLOAT32, NCHW, AFFINE | BIASED, 0)
    assert st < 0 and "_ex entry" not in msg and msg.startswith(op + ":"), msg


@pytest.mark.parametrize("dtype", [BF16, np.float64, np.float16])
@pytest.mark.parametrize("mode, shape", [("spatial", (3, 4, 5)), ("per_activation", (6, 3, 2))])
def test_bfloat16_and_float64_through_the_c_api(v3ext, dtype, mode, shape):
    out, args = run(v3ext, shape, mode, dtype=dtype)
    check(out, args, mode, AFFINE, dtype)


@pytest.mark.parametrize("act, alpha", [("relu", 0.0), ("clipped_relu", 6.0), ("leaky_relu", 0.1), ("elu", 1.0),
                                        ("sigmoid", 0.0), ("tanh", 0.0), ("swish", 0.0)])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("keep_y", [True, False])
def test_fused_activation_and_residual_forward_and_backward(v3ext, act, alpha, residual, keep_y):
    shape = (3, 4, 5)
    z = np.random.default_rng(5).standard_normal(shape).astype(np.float32) if residual else None
    out, args = run(v3ext, shape, act=ACTIVATIONS[act], alpha=alpha, flags=AFFINE | (RESIDUAL if residual else 0),
                    z=z, keep_y=keep_y)
    check(out, args, "spatial", AFFINE, act=act, alpha=alpha, z=z)


def test_fused_relu_residual_bfloat16_and_float64(v3ext):
    shape = (4, 3, 6)
    for dtype in (BF16, np.float64):
        z = np.random.default_rng(6).standard_normal(shape).astype(dtype)
        out, args = run(v3ext, shape, dtype=dtype, act=ACTIVATIONS["relu"], flags=AFFINE | RESIDUAL, z=z)
        check(out, args, "spatial", AFFINE, dtype, act="relu", z=z)


def test_version_2_prepare_does_not_cover_the_epilogue(v3ext):
    """prepare(dtype, mode) loads the plain kernels only: a fused call then says to use prepare_desc."""
    with pytest.raises(RuntimeError, match="prepare_desc"):
        run(v3ext, (5, 3, 2), "per_activation", np.float16, act=ACTIVATIONS["tanh"], plain=True)


def _nhwc_run(ext, shape, dtype, act, residual, seed=8):
    """CYBN_LAYOUT_NHWC: the arrays are (N, S, C) in memory; the reference runs on their NCHW transpose and
    its data results are turned back to (N, S, C) order."""
    N, C, S = shape
    rng = np.random.default_rng(seed)
    x_nsc = (rng.standard_normal((N, S, C)) * 2 + 0.5).astype(dtype)
    dy_nsc = rng.standard_normal((N, S, C)).astype(dtype)
    z_nsc = rng.standard_normal((N, S, C)).astype(dtype) if residual else None
    p = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    _, _, scale, bias, rm, rv = (a.astype(p) for a in inputs(shape, np.float32, "spatial", 0))
    flags = AFFINE | (RESIDUAL if residual else 0)
    out = ext.run_ex(SPATIAL, DTYPES[np.dtype(dtype)], NHWC, flags, ACTIVATIONS[act], 0.0, N, C, S, 1e-3, 0.25,
                     True, False, x_nsc.tobytes(), b"" if z_nsc is None else z_nsc.tobytes(), scale.tobytes(),
                     bias.tobytes(), rm.tobytes(), rv.tobytes(), dy_nsc.tobytes())
    nchw = lambda a: None if a is None else np.ascontiguousarray(a.transpose(0, 2, 1))
    return out, (nchw(x_nsc), nchw(dy_nsc), scale, bias, rm, rv), nchw(z_nsc)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=str)
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 33, 6), (4, 1, 3), (2, 8, 2048)])  # the last one splits
def test_nhwc_forward_and_backward_through_the_c_api(v3ext, shape, dtype):
    before = launches()
    out, args, _ = _nhwc_run(v3ext, shape, dtype, "none", False)
    assert launches() - before >= 4  # the four calls ran (the refusal below launches nothing)
    N, C, S = shape
    for name in ("y", "dx", "y_infer", "dx_infer"):  # (N, S, C) -> the reference's NCHW order
        out[name] = np.frombuffer(out[name], dtype).reshape(N, S, C).transpose(0, 2, 1).tobytes()
    check(out, args, "spatial", AFFINE, dtype)


@pytest.mark.parametrize("dtype, act, residual", [(np.float32, "relu", True), (np.float16, "swish", False),
                                                  (BF16, "none", False), (np.float64, "none", False)], ids=str)
def test_nhwc_beyond_the_cores_kernels_runs_or_says_so(v3ext, dtype, act, residual):
    """Where the core's channels-last kernels lack a dtype or the epilogue, the C API passes on the core's
    clear refusal (nothing launched); once they have it, the same call must match the reference."""
    shape = (3, 4, 5)
    before = launches()
    try:
        out, args, z = _nhwc_run(v3ext, shape, dtype, act, residual)
    except (RuntimeError, ValueError) as e:
        assert launches() == before
        msg = str(e)
        assert ("NHWC" in msg or "channels-last" in msg) and "NCHW" in msg, msg  # what to use instead
        return
    N, C, S = shape
    for name in ("y", "dx", "dz", "y_infer", "dx_infer", "dz_infer"):
        if name in out:
            out[name] = np.frombuffer(out[name], dtype).reshape(N, S, C).transpose(0, 2, 1).tobytes()
    check(out, args, "spatial", AFFINE, dtype, act=act, z=z)


@pytest.mark.parametrize("layout, mode, shape", [
    (NCHW, "spatial", (3, 4, 5)), (NCHW, "per_activation", (6, 3, 2)), (NCHW, "spatial", (2, 1, 8192)),
    (NHWC, "spatial", (3, 4, 5)), (NHWC, "spatial", (2, 8, 2048))])  # (2, 1, 8192) and (2, 8, 2048) split
@pytest.mark.parametrize("null_scale", [True, False])
def test_fix_gamma_through_the_c_api(v3ext, mode, shape, null_scale, layout):
    """CYBN_FIX_GAMMA: scale is 1 (a null pointer, or an array of 7s that is never read), scale_grad 0."""
    x, dy, _, bias, rm, rv = inputs(shape, np.float32, mode, 0)
    K = bias.size
    if layout == NHWC:  # the same values in (N, S, C) memory order
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 1)) for a in (x, dy))
    scale = b"" if null_scale else np.full(K, 7.0, np.float32).tobytes()
    out = v3ext.run_ex(CODES[mode], 0, layout, AFFINE | FIX_GAMMA, 0, 0.0, *shape, 1e-3, 0.25, True, False,
                       x.tobytes(), b"", scale, bias.tobytes(), rm.tobytes(), rv.tobytes(), dy.tobytes())
    if layout == NHWC:
        N, C, S = shape
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 1)) for a in (x, dy))
        for name in ("y", "dx", "y_infer", "dx_infer"):
            out[name] = np.frombuffer(out[name], np.float32).reshape(N, S, C).transpose(0, 2, 1).tobytes()
    ref = reference((x, dy, np.ones(K, np.float32), bias, rm, rv), mode, AFFINE)
    assert np.abs(ref["scale_grad"]).max() > 0.1  # what a free scale's gradient would be
    ref["scale_grad"] = ref["scale_grad_infer"] = np.zeros(K)
    assert set(out) == set(ref)
    for name, expected in ref.items():
        got = np.frombuffer(out[name], np.float32).astype(np.float64)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(expected).max()),
                                   err_msg=name)
