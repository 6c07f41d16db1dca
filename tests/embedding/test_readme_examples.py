"""Every code block of README.md runs, as written, the way a user runs it.

Each fenced block with a language is preceded by `<!-- readme-test: NAME -->`; test_every_code_block_is_tested
fails if one is not, or if a NAME has no test here. The Python examples run as written and are checked against
numpy; the C and Cython extensions are built from the README's own text, with its setup.py lines and its build
command, in a temporary directory outside the checkout, with no PYTHONPATH (the install alone must expose cybn's
headers and .pxd files), and then called by the README's Python block.

The test run is itself a fresh clone's install (`.ci/run` = the README's test command). Set
CYBN_TEST_FRESH_INSTALL=1 to also clone the repository, run the README's first command in a new venv and the
extension builders' install (editable and regular) there: minutes, and the pip resolves need the local wheel
indexes only (no network)."""
import contextlib
import gc
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import embed_build

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
MARKER = re.compile(r"<!-- readme-test: (\S+) -->\n\Z")
TESTED = {"command-run", "command-test", "puzzlelib-example", "engine-example", "c-extension", "c-setup",
          "cython-extension", "cython-setup", "extensions-from-python", "mxnet-example", "paddle-example",
          "mpi-example", "engine-epilogue-example", "faces-float64-act-example",
          "channels-last-example", "faces-channels-last-example", "engine-channels-last-dlpack-example"}  # mpi-example: tests/distributed/test_mpi_sync.py runs it under mpiexec -n 3


def blocks():
    """{name: (language, code)} of the README's marked blocks; unmarked blocks with a language -> KeyError."""
    with open(README) as f:
        text = f.read()
    found = {}
    for m in BLOCK.finditer(text):
        lang, code = m.group(1), m.group(2)
        marker = MARKER.search(text[max(0, m.start() - 200):m.start()])
        if not lang:
            continue  # a listing (the layout), not code
        if marker is None:
            line = text[:m.start()].count("\n") + 1
            raise KeyError(f"README.md line {line}: a ```{lang} block without a <!-- readme-test: NAME --> marker")
        assert marker.group(1) not in found, f"two README blocks are both marked {marker.group(1)}"
        found[marker.group(1)] = (lang, code)
    return found


def test_every_code_block_is_tested():
    assert set(blocks()) == TESTED


def test_readme_shows_the_tested_extension_sources():
    """The sources the other embedding tests build are the ones the README shows."""
    b = blocks()
    for name, block in (("example_bn.c", "c-extension"), ("example_bn_cy.pyx", "cython-extension")):
        with open(os.path.join(embed_build.EXT_DIR, name)) as f:
            assert f.read() == b[block][1], f"README.md does not show {name} as tested"


def test_the_test_command_is_what_ci_runs():
    lang, code = blocks()["command-test"]
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = f.read()
    assert lang == "bash" and code.strip() in ci.splitlines()
    lang, code = blocks()["command-run"]
    assert lang == "bash" and code.strip().endswith("pip install -e . && python -m cybn")  # run by the fresh test


def run_block(name):
    """exec() a Python block as a script would run it; returns (its globals, what it printed)."""
    lang, code = blocks()[name]
    assert lang == "python"
    ns, out = {"__name__": "__main__"}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{name}", "exec"), ns)
    return ns, out.getvalue()


def test_puzzlelib_example():
    ns, out = run_block("puzzlelib-example")
    bn = ns["bn"]
    x = np.arange(18, dtype=np.float64).reshape(3, 6)
    np.testing.assert_array_equal(bn.mean.get().ravel(), np.arange(6, 12))
    np.testing.assert_allclose(bn.var.get().ravel(), 36.0, rtol=1e-6)
    xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    y = ns["outdata"].get()
    scale0 = y[2] / xhat[2]  # the random initial scale, read back from the output (bias 0)
    np.testing.assert_allclose(y, scale0 * xhat, rtol=1e-5, atol=1e-6)
    g = np.linspace(-1, 1, 18).reshape(3, 6)
    dbias, dscale = g.sum(0), (g * xhat).sum(0)
    np.testing.assert_allclose(ns["ingrad"].get(), scale0 / np.sqrt(x.var(0) + 1e-5) *
                               (g - dbias / 3 - xhat * dscale / 3), rtol=1e-4, atol=1e-6)
    # updateParams(-0.1): data += -0.1 * grad, i.e. one descent step.
    np.testing.assert_allclose(bn.vars["bias"].data.get().ravel(), -0.1 * dbias, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn.vars["scale"].data.get().ravel(), scale0 - 0.1 * dscale, rtol=1e-5, atol=1e-6)
    assert "[[[[ 6.]]" in out and "[[[[36.]]" in out and out.count("[[[[") == 3  # mean, var, bias gradient
    del ns
    gc.collect()


def _batch_moments(x):
    x = x.astype(np.float64)
    return x.mean((0, 2, 3)), x.var((0, 2, 3))


def _per_channel(v):
    return v.reshape(1, -1, 1, 1)


def test_mxnet_example():
    ns, out = run_block("mxnet-example")
    x = ns["x"].get().astype(np.float64)
    mu, var_b = _batch_moments(x)
    invstd = 1 / np.sqrt(var_b + 1e-3)  # MXNet's operator default eps
    np.testing.assert_allclose(ns["y"].get(), (x - _per_channel(mu)) * _per_channel(invstd), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ns["mean"].get().ravel(), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ns["invstd"].get().ravel(), invstd, rtol=1e-5)
    # dy = 1: dbeta = sum(dy), dgamma = sum(dy * xhat) = 0, dx = invstd * (dy - mean(dy) - xhat mean(dy xhat)) = 0.
    np.testing.assert_allclose(ns["dbeta"].get().ravel(), x.size / 3, rtol=1e-6)
    np.testing.assert_allclose(ns["dgamma"].get().ravel(), 0, atol=1e-3)
    np.testing.assert_allclose(ns["dx"].get(), 0, atol=1e-5)
    # The backward moved the moving statistics: momentum 0.9 on the old value, the biased variance.
    mm, mv = 0.1 * mu, 0.9 + 0.1 * var_b
    np.testing.assert_allclose(ns["moving_mean"].get().ravel(), mm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ns["moving_var"].get().ravel(), mv, rtol=1e-5)
    np.testing.assert_allclose(np.array(out.strip().strip("[]").split(), float), mm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ns["y_eval"].get(), (x - _per_channel(mm)) / np.sqrt(_per_channel(mv) + 1e-3),
                               rtol=1e-5, atol=1e-5)
    del ns
    gc.collect()


def test_paddle_example():
    ns, out = run_block("paddle-example")
    bn, x = ns["bn"], ns["x"].get().astype(np.float64)
    mu, var_b = _batch_moments(x)
    xhat = (x - _per_channel(mu)) / np.sqrt(_per_channel(var_b) + 1e-5)
    np.testing.assert_allclose(ns["y"].get(), xhat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ns["dx"].get(), 0, atol=1e-5)  # dy = 1 through a batch norm: 0
    np.testing.assert_allclose(bn.bias.grad.get().ravel(), x.size / 3, rtol=1e-6)
    np.testing.assert_allclose(bn.weight.grad.get().ravel(), 0, atol=1e-3)
    rm, rv = 0.1 * mu, 0.9 + 0.1 * var_b  # momentum 0.9 on the old value, biased variance
    np.testing.assert_allclose(bn._mean.numpy().ravel(), rm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bn._variance.numpy().ravel(), rv, rtol=1e-5)
    assert "['weight', 'bias', '_mean', '_variance']" in out
    np.testing.assert_allclose(ns["y_eval"].get(), (x - _per_channel(rm)) / np.sqrt(_per_channel(rv) + 1e-5),
                               rtol=1e-5, atol=1e-5)
    del ns
    gc.collect()


def test_engine_epilogue_example():
    ns, out = run_block("engine-epilogue-example")
    assert out.count("against float64 numpy") == 5 and ns["dz"].dtype == np.float64
    del ns
def test_faces_float64_act_example():
    """float64 numpy from the maths (cybn.testing.reference): Paddle's y = relu(xhat) with its float32
    epsilon, dx through relu'; MXNet's eval backward = the training formula at the moving statistics."""
    from cybn.testing import reference
    ns, _ = run_block("faces-float64-act-example")
    x = ns["x"].get()
    assert x.dtype == np.float64
    ones, dy = np.ones(3), np.ones(x.shape)
    eps = float(np.float32(1e-5))
    v, _, _, mean, invstd = reference.forward_train(x, ones, 0 * ones, 0 * ones, ones, eps, 0.1)
    np.testing.assert_allclose(ns["y"].get(), np.maximum(v, 0), rtol=1e-10, atol=1e-10)
    dx = reference.backward(x, dy * (v > 0), ones, mean, invstd)[0]
    np.testing.assert_allclose(ns["dx"].get(), dx, rtol=1e-10, atol=1e-10)
    dx_eval, dgamma, dbeta = reference.backward(x, dy, 2 * ones, 0 * ones, ones / np.sqrt(1 + 1e-3))
    np.testing.assert_allclose(ns["dx_eval"].get(), dx_eval, rtol=1e-10, atol=1e-10)
    assert np.abs(dx_eval - 2 / np.sqrt(1 + 1e-3)).max() > 0.1  # not the frozen-statistics gradient
    np.testing.assert_allclose(ns["dgamma"].get(), dgamma, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ns["dbeta"].get(), dbeta, rtol=1e-10, atol=1e-10)
    del ns
    gc.collect()


def test_engine_example_prints_what_it_checks():
    ns, out = run_block("engine-example")
    lines = out.splitlines()
    assert [l.split(":")[0].strip() for l in lines] == ["y", "mean", "var", "dbias", "dscale", "dx"]
    for l in lines:  # the example asserts each error itself; check it printed a real number
        assert float(re.search(r"error ([0-9.e+-]+) against float64 numpy", l).group(1)) < 1e-5
    # The upstream gradient is independent data, not y.
    assert not np.array_equal(ns["dy_host"], ns["got"]["y"])
    del ns
    gc.collect()


def test_channels_last_example():
    ns, out = run_block("channels-last-example")
    assert out.startswith("channels-last y: max error") and float(out.split("error ")[1].split(";")[0]) < 1e-4
    assert ns["y"].shape == (4, 6, 6, 12)
    del ns
    gc.collect()


def test_engine_channels_last_dlpack_example():
    """The example asserts its values against cybn.testing's float64 references itself; here: the DLPack x
    was used in place (results in its memory order), fixed gamma's gradient is exactly 0, and the middle
    channel axis went through the (outer, C, inner) view."""
    ns, out = run_block("engine-channels-last-dlpack-example")
    assert out.startswith("y (4, 5, 5, 8): max error") and "dscale [0.0, 0.0" in out
    assert ns["y"].shape == ns["dx"].shape == (4, 5, 5, 8) and not ns["dscale"].get().any()
    assert ns["yz"].shape == (10, 8, 3)
    del ns
    gc.collect()


def _user_env():
    env = dict(os.environ, CFLAGS="-O0 -g0")
    env.pop("PYTHONPATH", None)  # only what the install put on sys.path
    return env


def build_readme_extensions(root, python=sys.executable):
    """The README's C and Cython extensions, each from the README's text in its own directory under root
    (outside the checkout), built with the README's setup.py and command. Returns the two directories."""
    b = blocks()
    dirs = []
    for src_block, src_name, setup_block in (("c-extension", "example_bn.c", "c-setup"),
                                             ("cython-extension", "example_bn_cy.pyx", "cython-setup")):
        d = os.path.join(root, src_name.split(".")[0])
        os.makedirs(d, exist_ok=True)
        for name, block in ((src_name, src_block), ("setup.py", setup_block)):
            with open(os.path.join(d, name), "w") as f:
                f.write(b[block][1])
        proc = subprocess.run([python, "setup.py", "build_ext", "--inplace"], cwd=d, env=_user_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"building {src_name} as the README says failed (an editable install from before cybn set "
            f"package-dir hides cybn's .pxd files: reinstall with pip install -e '.[test]'):\n"
            + proc.stdout[-3000:] + proc.stderr[-3000:])
        dirs.append(d)
    return dirs


def run_extensions_block(dirs, python=sys.executable):
    code = blocks()["extensions-from-python"][1]
    env = dict(_user_env(), PYTHONPATH=dirs[1])  # run beside the C extension, the Cython one on the path
    proc = subprocess.run([python, "-c", code], cwd=dirs[0], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "workspace bytes: 0" in out
    for which in ("C", "Cython"):
        assert float(re.search(rf"^{which} extension y max error: (\S+)$", out, re.M).group(1)) < 1e-5, out
    got, ref = re.search(r"bias_grad: \[(.*?)\] numpy: \[(.*?)\]", out, re.S).groups()
    np.testing.assert_allclose(np.array(got.split(), float), np.array(ref.split(), float), rtol=1e-4)


def test_extensions_build_from_outside_the_checkout_and_run_as_shown(tmp_path):
    import cybn
    assert not os.path.commonpath([str(tmp_path), REPO]) == REPO
    # The install (not a path hack) exposes the package: cybn imports from the checkout through its .pth.
    assert os.path.dirname(os.path.dirname(os.path.abspath(cybn.__file__))) == REPO
    run_extensions_block(build_readme_extensions(str(tmp_path)))


@pytest.mark.skipif(os.environ.get("CYBN_TEST_FRESH_INSTALL") != "1",
                    reason="minutes: set CYBN_TEST_FRESH_INSTALL=1 (a clone, new venvs, the README's installs)")
@pytest.mark.parametrize("install", ["pip install -e '.[build-ext]'", "pip install '.[build-ext]'"])
def test_fresh_clone_readme_commands(tmp_path, install):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", REPO, str(clone)], check=True)
    env = dict(_user_env(), CYBN_DEVICE="softgpu")
    first = blocks()["command-run"][1].strip()
    proc = subprocess.run(["bash", "-c", first], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "\ncybn: OK (" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    python = str(clone / ".venv" / "bin" / "python")
    proc = subprocess.run(["bash", "-c", f". .venv/bin/activate && {install}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "ext"
    out.mkdir()
    run_extensions_block(build_readme_extensions(str(out), python), python)


def test_faces_channels_last_example():
    """float64 numpy from the maths on (N, H, W, C) data: Paddle's NHWC layer and MXNet's axis=-1 (fix_gamma:
    gamma 1, dgamma 0; the moving statistics moved by the backward); dy = 1 through a batch norm gives dx = 0."""
    ns, _ = run_block("faces-channels-last-example")
    x = ns["x"].get().astype(np.float64)
    mu, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    for y, eps in ((ns["y"], float(np.float32(1e-5))), (ns["y_mx"], 1e-3)):
        np.testing.assert_allclose(y.get(), (x - mu) / np.sqrt(var + eps), rtol=1e-5, atol=1e-5)
    for dx in (ns["dx"], ns["dx_mx"]):
        assert dx.shape == x.shape
        np.testing.assert_allclose(dx.get(), 0, atol=1e-5)
    np.testing.assert_allclose(ns["bn"]._mean.numpy(), 0.1 * mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ns["bn"]._variance.numpy(), 0.9 + 0.1 * var, rtol=1e-5)
    np.testing.assert_array_equal(ns["dgamma"].get(), 0)
    np.testing.assert_allclose(ns["dbeta"].get(), x.size / 3, rtol=1e-6)
    np.testing.assert_allclose(ns["moving_mean"].get(), 0.1 * mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ns["moving_var"].get(), 0.9 + 0.1 * var, rtol=1e-5)
    del ns
    gc.collect()
