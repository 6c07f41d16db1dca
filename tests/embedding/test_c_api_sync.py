"""C API version 4's SyncBatchNorm split from a C extension (ext/bn_cext_sync.c): two "processes" in one, each a
slice of one batch; the extension combines their partials and sums on the host itself (as a pipeline with its own
transport would) and runs the combined entries on each slice. Compared with float64 numpy BatchNorm over the whole
batch: y (with the fused epilogue), dx, dz, and on each process the saved and running statistics and the
parameter gradients."""
import os

import ml_dtypes
import numpy as np
import pytest

import cybn
import embed_build
from cybn.testing import bn_ref_epilogue as epi

SPATIAL, PER_ACTIVATION = 0, 1
AFFINE, BIASED, RESIDUAL = 1, 4, 16
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, BF16: 2, np.dtype(np.float64): 3}
ACTS = {None: 0, "relu": 1, "relu6": 2, "sigmoid": 5, "swish": 7}
TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2, "float64": 1e-12}
EPS, FACTOR = 1e-5, 0.25


@pytest.fixture(scope="module")
def sext(build_dir):
    path = embed_build.compile_extension([os.path.join(embed_build.EXT_DIR, "bn_cext_sync.c")], build_dir,
                                         "bn_cext_sync")
    return embed_build.load("bn_cext_sync", path)


def _close(got, want, tol, what):
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= tol * max(1.0, np.abs(want).max() if want.size else 0.0), (what, err, tol)


def _step(ext, counts, shape, dtype, mode="spatial", act=None, residual=False, keep_y=True, flags=AFFINE, seed=0):
    n0, n1 = counts
    _, C, *rest = shape
    dtype = np.dtype(dtype)
    p = np.float64 if dtype == np.float64 else np.float32
    rng = np.random.default_rng(seed)
    full = (n0 + n1, C, *rest)
    spread = np.array([1.5, 0.5, 1.0, 2.0])[:C].reshape((C,) + (1,) * len(rest))
    x = (2.0 + rng.standard_normal(full) * spread).astype(dtype)
    dy = rng.standard_normal(full).astype(dtype)
    z = rng.standard_normal(full).astype(dtype) if residual else None
    S = int(np.prod(rest, dtype=np.int64))
    K = C if mode == "spatial" else C * S
    scale, bias = (1.0 + 0.3 * rng.standard_normal(K)).astype(p), rng.standard_normal(K).astype(p)
    rm0, rv0 = rng.standard_normal(K).astype(p), (1.0 + rng.random(K)).astype(p)
    s = cybn.Stream()
    with cybn.stream(s):
        g = {"x": cybn.to_gpu(x), "dy": cybn.to_gpu(dy), "scale": cybn.to_gpu(scale), "bias": cybn.to_gpu(bias)}
        g["y"], g["dx"] = cybn.empty_like(g["x"]), cybn.empty_like(g["x"])
        g["z"] = cybn.to_gpu(z) if residual else None
        g["dz"] = cybn.empty_like(g["x"]) if residual else None
        g["parts"], g["sums"], g["scratch"] = cybn.empty((4, K), p), cybn.empty((3, K), p), cybn.empty((4, K), p)
        ranks = [{"rm": cybn.to_gpu(rm0), "rv": cybn.to_gpu(rv0), "sm": cybn.empty(K, p), "si": cybn.empty(K, p),
                  "sg": cybn.to_gpu(np.full(K, 0.5, p)), "bg": cybn.to_gpu(np.full(K, -0.5, p))} for _ in range(2)]
    ptr = lambda a: 0 if a is None else a.ptr  # noqa: E731
    ptrs = tuple(ptr(g[k]) for k in ("x", "z", "y", "dy", "dx", "dz", "scale", "bias", "parts", "sums", "scratch"))
    ptrs += tuple(ptr(r[k]) for r in ranks for k in ("rm", "rv", "sm", "si", "sg", "bg"))
    code = DTYPES[dtype]
    ext.sync_step(SPATIAL if mode == "spatial" else PER_ACTIVATION, code, flags | (RESIDUAL if residual else 0),
                  ACTS[act], 6.0 if act == "relu6" else 0.0, n0, n1, C, S, EPS, FACTOR, keep_y, ptrs, s.handle)
    s.synchronize()
    # the float64 reference over the whole batch (the same rounded inputs)
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    zd = None if z is None else z.astype(np.float64)
    y, rm, rv, mean, invstd, v = epi.forward_train(xd, scale, bias, rm0, rv0, EPS, FACTOR, act, 6.0, zd, mode)
    if flags & BIASED:
        axes = (0, 2) if mode == "spatial" else (0,)
        xs = xd.reshape(n0 + n1, C, S) if mode == "spatial" else xd.reshape(n0 + n1, K)
        rv = (1 - FACTOR) * rv0 + FACTOR * xs.var(axes)
    dx, dz, ds, db = epi.backward(xd, dyd, scale, mean, invstd, v, act, 6.0, mode)
    tol = TOL[dtype.name] * (10 if act else 1)
    _close(g["y"].get(), y, tol, "y")
    _close(g["dx"].get(), dx, tol, "dx")
    if residual:
        _close(g["dz"].get(), dz, tol, "dz")
    run_tol = 1e-13 if dtype == np.float64 else 1e-6
    for r, rk in enumerate(ranks):  # every process holds the union's statistics and gradients
        _close(rk["rm"].get(), rm, run_tol, f"running_mean of process {r}")
        _close(rk["rv"].get(), rv, run_tol, f"running_var of process {r}")
        _close(rk["sm"].get(), mean, run_tol, f"save_mean of process {r}")
        _close(rk["si"].get(), invstd, 1e-12 if dtype == np.float64 else 1e-5, f"save_invstd of process {r}")
        _close(rk["sg"].get(), ds, tol, f"scale_grad of process {r}")
        _close(rk["bg"].get(), db, tol, f"bias_grad of process {r}")
    for k in ("rm", "rv", "sm", "si", "sg", "bg"):  # bitwise the same on both: one combination, rounded once
        assert ranks[0][k].get().tobytes() == ranks[1][k].get().tobytes(), k


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("counts", [(3, 2), (0, 4), (1, 1)])
def test_split_entries_match_the_whole_batch(sext, dtype, counts):
    _step(sext, counts, (None, 3, 2, 3), BF16 if dtype == "bfloat16" else dtype)


def test_split_per_activation_and_biased_running_variance(sext):
    _step(sext, (2, 3), (None, 2, 3), np.float32, mode="per_activation", flags=AFFINE | BIASED)


@pytest.mark.parametrize("act,residual,keep_y", [("relu", True, True), ("swish", True, False),
                                                  ("relu6", True, True), ("sigmoid", False, False)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_entries_fused_epilogue(sext, act, residual, keep_y, dtype):
    _step(sext, (2, 3), (None, 3, 4), dtype, act=act, residual=residual, keep_y=keep_y, seed=5)


@pytest.mark.parametrize("which,want", [(0, "count (values per statistic over every process) must be at least 2"),
                                        (1, "mean must be a host array of K finite values"),
                                        (2, "backward_combined: count (values per statistic"),
                                        (3, "running_mean shares memory with save_invstd")])
def test_refused_combined_call_changes_nothing(sext, which, want):
    C = 3
    s = cybn.Stream()
    with cybn.stream(s):
        x = cybn.to_gpu(np.ones((2, C, 3), np.float32))
        y, dy, dx = cybn.empty_like(x), cybn.to_gpu(np.ones((2, C, 3), np.float32)), cybn.empty_like(x)
        scale, bias = cybn.to_gpu(np.ones(C, np.float32)), cybn.to_gpu(np.zeros(C, np.float32))
        stats = [cybn.to_gpu(np.full(C, 7.0 + i, np.float32)) for i in range(6)]  # rm rv sm si sg bg
        scratch = cybn.empty((4, C), np.float32)
    st, msg = sext.refused(which, C, x.ptr, y.ptr, scale.ptr, bias.ptr, stats[0].ptr, stats[1].ptr, stats[2].ptr,
                           stats[3].ptr, scratch.ptr, dy.ptr, dx.ptr, stats[4].ptr, stats[5].ptr, s.handle)
    s.synchronize()
    assert st == -1 and want in msg, (st, msg)
    for i, a in enumerate(stats):
        assert (a.get() == 7.0 + i).all(), i
