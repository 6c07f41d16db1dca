"""Helpers for the NVRTC / kernel-cache tests: run Python snippets in fresh subprocesses."""
import json
import os
import subprocess
import sys
import textwrap

import cybn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cybn.__file__)))


def run_py(code, env=None, timeout=300, check=True):
    """Run `code` in a fresh interpreter (cybn importable from this checkout) with the current
    environment plus `env`; returns the CompletedProcess (raises if it failed and check is set)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(proc):
    """The JSON object a snippet printed on its last stdout line."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def entries(directory):
    """The cache entry files in `directory` (sorted names)."""
    return sorted(p for p in os.listdir(directory) if p.endswith(".cybnk"))
