"""Shared by gen_mxnet.py and gen_paddle.py (which run in their own virtualenvs, without cybn) and by the
golden tests: seeded inputs, the case file format, and the hard-input shapes.

A golden file is one .npz (no pickles) holding, per case NAME, the arrays "NAME/<array>" and
"NAME/params", a JSON string with the case's parameters. Arrays of a training sequence carry the step
as a suffix: "NAME/y.0", "NAME/running_mean.2", ...
"""
import json

import numpy as np

# The shapes of the measured semantics (peer-semantics.md), channel axis 1; 5-d kept small.
SHAPES = {2: (8, 4), 3: (4, 3, 5), 4: (4, 3, 4, 5), 5: (2, 3, 3, 4, 5)}
HARD_SHAPE = (8, 3, 5, 5)
HARD_OFFSETS = (1e4, 1e6)
STEPS = 3


def channels_last(shape):
    """(N, C, *S) -> (N, *S, C)."""
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)


def inputs(seed, shape, channel_axis, dtype=np.float32, steps=STEPS, offset=0.0):
    """Seeded data: `steps` batches x and output gradients dy of `shape`, and gamma, beta, a running
    mean and variance (not 0/1, so eval and running updates are visible) of shape[channel_axis]."""
    rng = np.random.default_rng(seed)
    C = shape[channel_axis]
    out = {
        "gamma": rng.uniform(0.5, 1.5, C), "beta": rng.normal(0, 0.5, C),
        "mean0": rng.normal(0, 0.2, C), "var0": rng.uniform(0.5, 1.5, C),
    }
    for k in range(steps):
        out[f"x.{k}"] = offset + rng.normal(0.3 * k, 1.0 + 0.5 * k, shape)
        out[f"dy.{k}"] = rng.normal(0, 1, shape)
    return {n: a.astype(dtype) for n, a in out.items()}


class Writer:
    """Collects cases and writes them into one compressed .npz."""

    def __init__(self):
        self.arrays = {}

    def add(self, name, params, arrays):
        assert f"{name}/params" not in self.arrays, name
        self.arrays[f"{name}/params"] = np.array(json.dumps(params, sort_keys=True))
        for k, v in arrays.items():
            self.arrays[f"{name}/{k}"] = np.asarray(v)

    def save(self, path):
        np.savez_compressed(path, **self.arrays)
        print(f"{path}: {len({k.split('/')[0] for k in self.arrays})} cases")


def load(path):
    """{case name: (params dict, {array name: array})} of a golden file."""
    cases = {}
    with np.load(path, allow_pickle=False) as f:
        for key in f.files:
            name, what = key.split("/", 1)
            params, arrays = cases.setdefault(name, ({}, {}))
            if what == "params":
                params.update(json.loads(str(f[key])))
            else:
                arrays[what] = f[key]
    return cases
