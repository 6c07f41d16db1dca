"""The import paths of before the layer subpackages (cybn/_moved.py, cybn.batchnorm, cybn.capi, cybn.kernels)
give the very objects of the new homes, in a fresh process too, whichever path is imported first."""
import importlib
import subprocess
import sys

import pytest

import cybn
from cybn import _moved


@pytest.mark.parametrize("old,new", sorted(_moved.MOVED.items()))
def test_old_module_path_is_the_new_module(old, new):
    mod = importlib.import_module(f"cybn.{old}")
    assert mod is importlib.import_module(f"cybn.{new}")
    assert getattr(cybn, old) is mod
    assert mod.__name__ == mod.__spec__.name == f"cybn.{new}"  # the alias does not rename the module


def test_packages_reexport_their_old_names():
    from cybn.batchnorm import batchnorm as core
    from cybn.capi import capi
    from cybn.jit import functions
    import cybn.batchnorm
    import cybn.capi
    import cybn.kernels
    for name in ("forward_train", "forward_infer", "backward", "backward_infer", "plan", "plan_override",
                 "prepare", "free_workspaces", "workspace_count", "Mode", "_KERNEL_NAMES", "_SIGNATURES"):
        assert getattr(cybn.batchnorm, name) is getattr(core, name)
    for name in ("get_function", "get_module", "loaded_modules", "target"):
        assert getattr(cybn.kernels, name) is getattr(functions, name)
    assert cybn.capi.C_API_VERSION == capi.C_API_VERSION and cybn._C_API is capi._C_API
    with pytest.raises(AttributeError, match="cybn.batchnorm"):
        cybn.batchnorm.no_such_name
    with pytest.raises(AttributeError, match="cybn.kernels"):
        cybn.kernels.no_such_name


def test_old_path_first_in_a_fresh_process():
    code = ("import cybn.stream, cybn.gpuarray, sys\n"
            "from cybn.memory import DeviceBuffer\n"
            "import cybn.driver.stream as s, cybn.driver.memory as m\n"
            "assert cybn.stream is s and callable(cybn.stream) and DeviceBuffer is m.DeviceBuffer\n"
            "assert sys.modules['cybn.stream'] is s and cybn.gpuarray is sys.modules['cybn.array.gpuarray']\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
