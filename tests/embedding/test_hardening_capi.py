"""The C face gets the same checks as the Python face, from the nogil core: aliasing of every output against
every input, every other output and the workspace (partial overlaps too), a finite epsilon, byte sizes within
64 bits; and the property "a rejected C call changes nothing" over random bad calls."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import cybn
from cybn import softgpu
from embed_cases import EINVAL, FLOAT32, SPATIAL

N, C, S = 4, 3, 2


def fields(eps=1e-5, factor=0.1, ws=0, ws_bytes=0, N=N, C=C, S=S, flags=1):
    return (SPATIAL, FLOAT32, flags, N, C, S, eps, factor, ws, ws_bytes, 0)


@pytest.fixture(scope="module")
def bufs(cext):
    cext.prepare(FLOAT32, SPATIAL)
    rng = np.random.default_rng(3)
    b = {n: cybn.to_gpu(rng.standard_normal((N, C, S)).astype(np.float32)) for n in ("x", "y", "dy", "dx")}
    for n in ("scale", "bias", "rm", "sm", "si", "sg", "bg"):
        b[n] = cybn.to_gpu(rng.standard_normal(C).astype(np.float32))
    b["rv"] = cybn.to_gpu(rng.uniform(0.5, 2, C).astype(np.float32))
    b["big"] = cybn.to_gpu(rng.standard_normal(4 * N * C * S).astype(np.float32))
    yield b
    b.clear()


ORDER = {"forward_train": ("x", "y", "scale", "bias", "rm", "rv", "sm", "si"),
         "forward_infer": ("x", "y", "scale", "bias", "rm", "rv"),
         "backward": ("x", "dy", "dx", "scale", "sm", "si", "sg", "bg")}


def pointers(b, op, **replace):
    return tuple(replace.get(n, b[n].ptr) for n in ORDER[op])


def snapshot(b):
    return {k: v.get().copy() for k, v in b.items()}


def refused_unchanged(cext, b, op, f, p, match):
    before, launches = snapshot(b), softgpu.counters()["total"]["launches"]
    st_, msg = cext.call(op, f, p, 0, False)
    assert st_ == EINVAL and match in msg, msg
    assert softgpu.counters()["total"]["launches"] == launches
    for k, v in b.items():
        np.testing.assert_array_equal(v.get(), before[k], err_msg=k)


@pytest.mark.parametrize("op,replace,match", [
    ("forward_train", dict(rv="rm"), "running_mean shares memory with running_var"),
    ("forward_train", dict(sm="rm"), "running_mean shares memory with save_mean"),
    ("forward_train", dict(si="scale"), "save_invstd shares memory with scale"),
    ("forward_train", dict(y=("x", 4)), "y shares memory with x"),  # partial overlap: not exactly in place
    ("forward_infer", dict(y="rm"), "y shares memory with running_mean"),
    ("backward", dict(sg="bg"), "scale_grad shares memory with bias_grad"),
    ("backward", dict(dx="sm"), "dx shares memory with mean"),
    ("backward", dict(bg=("dx", 8)), "dx shares memory with bias_grad"),
])
def test_c_aliasing_is_refused(cext, bufs, op, replace, match):
    rep = {k: (bufs[v[0]].ptr + v[1] if isinstance(v, tuple) else bufs[v].ptr) for k, v in replace.items()}
    refused_unchanged(cext, bufs, op, fields(), pointers(bufs, op, **rep), match)


@pytest.mark.parametrize("op", ["forward_train", "backward"])
def test_c_workspace_overlapping_an_argument_is_refused(cext, bufs, op):
    shape = dict(N=2, C=1, S=8192)  # big enough that the plan splits: the workspace is really used
    st_, msg, need = cext.call("workspace_size", fields(**shape), (), 0, False)
    assert st_ == 0 and need > 0, msg
    big = cybn.zeros((need // 4 + 2 * 8192 + 64,))
    data = {n: cybn.zeros((2, 1, 8192)) for n in ("y", "dy", "dx")}
    x = cybn.GPUArray.from_pointer(big.ptr + 256, (2, 1, 8192), np.float32, big)  # x inside the workspace
    p = pointers(bufs, op, x=x.ptr, **{n: a.ptr for n, a in data.items()})
    st_, msg = cext.call(op, fields(ws=big.ptr, ws_bytes=need, **shape), p, 0, False)
    assert st_ == EINVAL and "workspace shares memory with x" in msg, msg


@pytest.mark.parametrize("f,match", [
    (fields(eps=float("inf")), "epsilon must be > 0 and finite"),
    (fields(N=1 << 62, C=1, S=1), "overflows 64 bits"),  # 2^62 float32 elements = 2^64 bytes
])
def test_c_impossible_descriptors(cext, bufs, f, match):
    refused_unchanged(cext, bufs, "forward_train", f, pointers(bufs, "forward_train"), match)
    st_, msg, _, unchanged = cext.desc_init(SPATIAL, FLOAT32, f[3], f[4], f[5], f[6], f[7], 1)
    assert st_ == EINVAL and match in msg and unchanged, msg


BAD = st.one_of(
    st.tuples(st.just("eps"), st.sampled_from([0.0, -1.0, float("nan"), float("inf")])),
    st.tuples(st.just("factor"), st.sampled_from([-0.5, 1.5, float("nan")])),
    st.tuples(st.just("alias"), st.sampled_from(["y", "rm", "rv", "sm", "si"]), st.sampled_from(
        ["x", "scale", "bias", "rm", "rv", "sm", "si", "y"]), st.integers(0, 2)),
    st.tuples(st.just("size"), st.sampled_from([dict(C=0), dict(N=-1), dict(S=0), dict(N=1 << 62)])),
)


@settings(max_examples=30)
@given(BAD)
def test_property_a_rejected_c_call_changes_nothing(cext, bufs, bad):
    kind = bad[0]
    f, rep = fields(), {}
    if kind == "eps":
        f = fields(eps=bad[1])
    elif kind == "factor":
        f = fields(factor=bad[1])
    elif kind == "size":
        f = fields(**bad[1])
    else:
        out, other, shift = bad[1:]
        assume(out != other)  # the replaced pointer itself is no longer an argument
        if (out, other) == ("y", "x") and shift == 0:
            shift = 1  # exactly in place is allowed
        rep[out] = bufs[other].ptr + 4 * shift
    refused_unchanged(cext, bufs, "forward_train", f, pointers(bufs, "forward_train", **rep), "")
