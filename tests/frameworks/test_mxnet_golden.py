"""cybn.mxnet.BatchNorm against MXNet 1.9.1's own results (golden/mxnet.npz): every case (channel axis first,
middle or last; float32, float16, float64)."""
import os

import numpy as np
import pytest

from golden_common import load
from golden_compare import assert_close, nrel
from cybn import gpuarray
from cybn.mxnet import BatchNorm, MXNetError, autograd

CASES = load(os.path.join(os.path.dirname(__file__), "golden", "mxnet.npz"))
ERRORS = {n: c for n, c in CASES.items() if n.endswith("_err")}
HARD = sorted(n for n in CASES if n.startswith("hard_") and n not in ERRORS)


NAMES = sorted(n for n in CASES if n not in ERRORS and n not in HARD)
# Every case is compared. Channels-last (axis -1 / the last axis of 3-d..5-d data, the core's layout="NHWC"):
#   train_{3,4,5}d_last_m{0.9,0.5,0.99}, eval_{3,4,5}d_last, evalbwd_{3,4,5}d_last, train_4d_axis3,
#   float64_last_4d. (2-d data with axis=-1 is axis 1, NCHW.)
CHANNELS_LAST = [n for n in NAMES if len(CASES[n][0]["shape"]) > 2
                 and CASES[n][0]["axis"] % len(CASES[n][0]["shape"]) == len(CASES[n][0]["shape"]) - 1]


def test_case_counts():
    assert len(NAMES) == 63 and len(HARD) == 2, len(NAMES)
    assert len(CHANNELS_LAST) == 17, CHANNELS_LAST


def _run(p, a, step):
    """Run the case's steps through the face; yields (k, results) after each step."""
    g = gpuarray.to_gpu(a["gamma"])
    b = gpuarray.to_gpu(a["beta"])
    mm, mv = gpuarray.to_gpu(a["mean0"]), gpuarray.to_gpu(a["var0"])
    kw = dict(eps=p["eps"], momentum=p["momentum"], fix_gamma=p["fix_gamma"], use_global_stats=p["use_global_stats"],
              output_mean_var=p["output_mean_var"], axis=p["axis"], training=p["train"])
    for k in range(p["steps"]):
        x = gpuarray.to_gpu(a[f"x.{k}"])
        r = {}
        if p["backward"]:
            with autograd.record() as tape:
                out = BatchNorm(x, g, b, mm, mv, **kw)
            r["dx"], r["dgamma"], r["dbeta"] = tape.backward(out, gpuarray.to_gpu(a[f"dy.{k}"]))
        else:
            out = BatchNorm(x, g, b, mm, mv, **kw)
        if p["output_mean_var"]:
            r["y"], r["mean"], r["invstd"] = out
        else:
            r["y"] = out
        r["moving_mean"], r["moving_var"], r["gamma"] = mm, mv, g
        yield k, r


KINDS = {"y": "y", "mean": "stat", "invstd": "stat", "moving_mean": "stat", "moving_var": "stat", "gamma": "stat",
         "dx": "grad", "dgamma": "grad", "dbeta": "grad"}


@pytest.mark.parametrize("name", NAMES)
def test_golden(name):
    p, a = CASES[name]
    for k, r in _run(p, a, None):
        for what, got in r.items():
            want = a[f"{what}.{k}"]
            if what == "dgamma" and p["fix_gamma"]:
                assert not np.any(want) and not np.any(got.get()), "fix_gamma: a zero gamma gradient"
                continue
            assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
            assert_close(got, want, f"{name} step {k} {what}", KINDS[what], np.dtype(p["dtype"]))


def _channels_last(p, a):
    """The case with its data (and gradient) transposed to (N, H, W, C) and axis=-1; other arrays as given."""
    a = dict(a, **{k: np.ascontiguousarray(np.moveaxis(v, 1, -1)) for k, v in a.items()
                   if k.split(".")[0] in ("x", "dy", "y", "dx")})
    return dict(p, axis=-1), a


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("name", HARD)
def test_hard_inputs_not_worse_than_mxnet(name, layout):
    """Offsets 1e4 / 1e6: cybn's float32 error against float64 numpy is no larger than MXNet's own, with
    the channel first as MXNet ran it, and the same data with the channel last (axis=-1, the core's NHWC
    kernels) against MXNet's error on the channel-first run."""
    p, a = CASES[name]
    x, dy = a["x.0"].astype(np.float64), a["dy.0"].astype(np.float64)
    axes, eps = (0, 2, 3), p["eps"]
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    dx = (dy - dy.mean(axes, keepdims=True) - xhat * (dy * xhat).mean(axes, keepdims=True)) / np.sqrt(var + eps)
    (_, r), = list(_run(*((p, a) if layout == "first" else _channels_last(p, a)), None))
    stored = ERRORS[name + "_err"][1]
    for what, ref in (("y", xhat), ("dx", dx), ("mean", mean.ravel())):
        theirs = nrel(a[f"{what}.0"], ref)
        ours = nrel(r[what] if layout == "first" or what == "mean" else np.moveaxis(r[what].get(), -1, 1), ref)
        np.testing.assert_allclose(theirs, stored[f"err_{what}"], rtol=1e-6)
        assert ours <= theirs, f"{name} {what} ({layout}): cybn {ours:.2e} vs MXNet {theirs:.2e}"


def _args(C=3, shape=(4, 3, 5)):
    rng = np.random.default_rng(1)
    return (gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32)),
            gpuarray.to_gpu(np.full(C, 2.0, np.float32)), gpuarray.to_gpu(np.zeros(C, np.float32)),
            gpuarray.to_gpu(np.zeros(C, np.float32)), gpuarray.to_gpu(np.ones(C, np.float32)))


@pytest.mark.parametrize("bad,match", [
    (dict(gamma=np.ones(4, np.float32)), "gamma must have 3 elements"),
    (dict(moving_var=np.ones(3, np.float64)), "moving_var must be float32"),
    (dict(axis=3), "axis 3 is out of range"),
    (dict(axis=0), "batch axis"),
    (dict(axis=1.0), "axis must be an int"),
    (dict(momentum=1.5), "momentum must be in"),
    (dict(eps=0.0), "epsilon must be a positive"),
    (dict(data=np.ones((4, 3, 5), np.float32)), "must be a device array"),
    (dict(data=np.ones((1, 3, 1), np.float32)), "more than one value per statistic"),
])
def test_bad_input_raises_and_changes_nothing(bad, match):
    x, g, b, mm, mv = _args()
    args = dict(data=x, gamma=g, beta=b, moving_mean=mm, moving_var=mv)
    for k, v in bad.items():
        args[k] = gpuarray.to_gpu(v) if k in ("gamma", "moving_var") or (k == "data" and v.shape[0] == 1) else v
    with autograd.record() as tape:
        with pytest.raises(MXNetError, match=match):
            BatchNorm(**args)  # fix_gamma=True: gamma must not have been overwritten either
    assert tape._saved == []
    np.testing.assert_array_equal(g.get(), 2.0)
    np.testing.assert_array_equal(mm.get(), 0.0)
    np.testing.assert_array_equal(mv.get(), 1.0)


def test_backward_rules():
    x, g, b, mm, mv = _args()
    with autograd.record() as tape:
        y = BatchNorm(x, g, b, mm, mv, fix_gamma=False)
    with pytest.raises(MXNetError, match="out_grad must have the output's shape"):
        tape.backward(y, gpuarray.to_gpu(np.ones((4, 3, 4), np.float32)))
    np.testing.assert_array_equal(mm.get(), 0.0)  # not yet: the backward did not run
    tape.backward(y, gpuarray.to_gpu(np.ones((4, 3, 5), np.float32)))
    assert np.any(mm.get() != 0.0)
    with pytest.raises(MXNetError, match="not recorded"):
        tape.backward(y, gpuarray.to_gpu(np.ones((4, 3, 5), np.float32)))
    with pytest.raises(MXNetError, match="not recorded"):
        tape.backward(BatchNorm(x, g, b, mm, mv), gpuarray.to_gpu(np.ones((4, 3, 5), np.float32)))
