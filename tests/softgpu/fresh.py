"""A Python script in a fresh process (the software GPU's profile and environment are read once per
process), with this checkout first on the path and CYBN_SOFTGPU_PROFILE taken only from `env`."""
import os
import subprocess
import sys
import textwrap

from cybn import softgpu


def run_fresh(script, **env):
    full = {k: v for k, v in os.environ.items() if k != "CYBN_SOFTGPU_PROFILE"}
    full.update(env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(softgpu.__file__)))
    full["PYTHONPATH"] = os.pathsep.join([root, full.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full, capture_output=True,
                          text=True, timeout=300)
