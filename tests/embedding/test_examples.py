"""The README's minimal C and Cython extensions (tests/embedding/ext/example_bn*.{c,pyx}), built with the
documented setup.py lines, run one training step against the float64 reference."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cybn

import embed_build
from cybn.testing.reference import train_then_infer as bn_reference

C_SETUP = """
from setuptools import setup, Extension
import cybn
setup(ext_modules=[Extension("example_bn", ["example_bn.c"], include_dirs=[cybn.get_include()])])
"""

CYTHON_SETUP = """
from setuptools import setup, Extension
from Cython.Build import cythonize
import cybn, cybn.paths
setup(ext_modules=cythonize([Extension("example_bn_cy", ["example_bn_cy.pyx"], language="c++",
                                       include_dirs=[cybn.get_include(), *cybn.paths.cuda_include_dirs()])]))
"""


def build_with_setup(build_dir, name, source, setup_text):
    d = os.path.join(build_dir, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(embed_build.EXT_DIR, source), d)
    with open(os.path.join(d, "setup.py"), "w") as f:
        f.write(setup_text)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cybn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               CFLAGS="-O0 -g0")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=d, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = [f for f in os.listdir(d) if f.startswith(name + ".") and f.endswith(".so")]
    assert len(built) == 1, os.listdir(d)
    return embed_build.load(name, os.path.join(d, built[0]))


def step_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    return (rng.standard_normal(shape).astype(np.float32) * 3 - 1, rng.standard_normal(shape).astype(np.float32),
            rng.uniform(0.5, 2.0, C).astype(np.float32), rng.standard_normal(C).astype(np.float32),
            rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2.0, C).astype(np.float32))


def check(shape, got, x, dy, scale, bias, rm, rv):
    N, C = shape[:2]
    ref = bn_reference(x.reshape(N, C, -1), scale, bias, rm, rv, dy.reshape(N, C, -1), 1e-5, 0.1, "spatial")
    for name, value in got.items():
        np.testing.assert_allclose(value.get().astype(np.float64).ravel(), ref[name], rtol=2e-4,
                                   atol=2e-4 * max(1.0, np.abs(ref[name]).max()), err_msg=name)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 1, 64, 128)])  # the second needs a workspace
def test_minimal_c_extension(build_dir, shape):
    ext = build_with_setup(build_dir, "example_bn", "example_bn.c", C_SETUP)
    x, dy, scale, bias, rm, rv = step_inputs(shape, 3)
    N, C, H, W = shape
    need = ext.workspace_size(N, C, H * W)
    assert (need > 0) == (shape[1] == 1)
    g = {k: cybn.to_gpu(v) for k, v in dict(x=x, dy=dy, scale=scale, bias=bias, running_mean=rm, running_var=rv).items()}
    out = {k: cybn.empty(shape if k in ("y", "dx") else (C,), np.float32)
           for k in ("y", "dx", "save_mean", "save_invstd", "scale_grad", "bias_grad")}
    ws = cybn.zeros((max(need, 1),), np.uint8)
    s = cybn.Stream()
    cybn.Stream.legacy().synchronize()   # the uploads above ran on the legacy stream
    ext.train_step(N, C, H * W, g["x"].ptr, out["y"].ptr, g["dy"].ptr, out["dx"].ptr, g["scale"].ptr, g["bias"].ptr,
                   g["running_mean"].ptr, g["running_var"].ptr, out["save_mean"].ptr, out["save_invstd"].ptr,
                   out["scale_grad"].ptr, out["bias_grad"].ptr, ws.ptr if need else 0, need, s.handle)
    s.synchronize()
    check(shape, dict(out, running_mean=g["running_mean"], running_var=g["running_var"]), x, dy, scale, bias, rm, rv)
    with pytest.raises(ValueError, match="N, C and S must be positive"):
        ext.workspace_size(N, 0, H * W)


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (2, 1, 64, 128)])
def test_minimal_cython_extension(build_dir, shape):
    ext = build_with_setup(build_dir, "example_bn_cy", "example_bn_cy.pyx", CYTHON_SETUP)
    x, dy, scale, bias, rm, rv = step_inputs(shape, 4)
    s = cybn.Stream()
    with cybn.stream(s):
        g = [cybn.to_gpu(v) for v in (x, dy, scale, bias, rm, rv)]
    y, sm, si, dx, sg, bg = ext.train_step(*g, s)
    s.synchronize()
    got = dict(y=y, save_mean=sm, save_invstd=si, dx=dx, scale_grad=sg, bias_grad=bg, running_mean=g[4],
               running_var=g[5])
    check(shape, got, x, dy, scale, bias, rm, rv)
    ext._workspaces.clear()   # the example keeps its workspace for the stream's life: free it for the leak check
