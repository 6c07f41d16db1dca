"""Helpers for the PTX corpus tests: cybn.testing.ptx (NVRTC compile, load, launch, Device buffers; shared
with bench/softgpu_bench.py) plus this directory's kernels/*.cu files and fresh-interpreter runs."""
import os
import subprocess
import sys
import textwrap

from cybn import softgpu
from cybn.testing.ptx import (SUCCESS, Device, cccl_include_dir, compile_ptx, include_dir, launch, ok,  # noqa: F401
                              run)
from cybn.testing.ptx import Module as _PTXModule

KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")


def kernel_source(name):
    with open(os.path.join(KERNELS, name)) as f:
        return f.read()


class Module(_PTXModule):
    """A module loaded from PTX text (bytes or str) or from a kernels/*.cu file name."""

    def __init__(self, ptx=None, cu_file=None, options=()):
        if cu_file is not None:
            ptx = compile_ptx(kernel_source(cu_file), tuple(options))
        super().__init__(ptx)


def run_python(script, source, **env_extra):
    """Runs script in a fresh interpreter (the library reads its environment when it loads) with
    SOURCE = source defined and this directory importable; returns the CompletedProcess."""
    env = dict(os.environ, **env_extra)
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.abspath(softgpu.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here, root, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", "SOURCE = %r\n" % source + textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=120)
