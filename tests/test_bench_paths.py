"""Benchmark scripts take their shared helpers from cybn.testing, never from tests/ through sys.path
(issue 11: the benches reached into tests/softgpu for ptxutil)."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _path_entries(tree):
    """The string constants in every sys.path.insert/append call of a module."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("insert", "append")
                and ast.unparse(node.func.value) == "sys.path"):
            yield ast.unparse(node)


def test_no_bench_script_puts_tests_on_sys_path():
    scripts = glob.glob(os.path.join(ROOT, "bench", "*.py"))
    assert len(scripts) >= 5
    offending = []
    for path in scripts:
        with open(path) as f:
            tree = ast.parse(f.read())
        offending += [f"{os.path.basename(path)}: {c}" for c in _path_entries(tree) if "tests" in c]
        offending += [f"{os.path.basename(path)}: import {n.names[0].name}" for n in ast.walk(tree)
                      if isinstance(n, ast.Import) and n.names[0].name == "ptxutil"]
    assert offending == []


def test_softgpu_bench_uses_the_shared_ptx_helpers():
    with open(os.path.join(ROOT, "bench", "softgpu_bench.py")) as f:
        tree = ast.parse(f.read())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "P"}
    assert {"ok", "Module", "compile_ptx", "Device", "run"} <= used
    from cybn.testing import ptx
    assert [n for n in used if not hasattr(ptx, n)] == []
