"""CI's async run: the engine's stream-heavy tests again in a subprocess with CYBN_SOFTGPU_ASYNC=1 (work on
the software GPU's worker thread, streamcheck on). The subset keeps CI fast; CYBN_ASYNC_SUITE=full runs
every engine test (tests/ except tests/softgpu, whose driver tests assert inline-mode return codes)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBSET = ["tests/engine/test_stream_event.py", "tests/engine/test_memory.py", "tests/engine/test_launch.py",
          "tests/batchnorm/test_bn_plans.py"]


def test_engine_suite_under_async_mode():
    if os.environ.get("CYBN_SOFTGPU_ASYNC") == "1":
        pytest.skip("this run is the async run already")
    targets = ["tests", "--ignore=tests/softgpu"] if os.environ.get("CYBN_ASYNC_SUITE") == "full" else SUBSET
    targets = [t for t in targets if t.startswith("-") or os.path.exists(os.path.join(ROOT, t))]
    env = dict(os.environ, CYBN_SOFTGPU_ASYNC="1", CYBN_SOFTGPU_ASYNC_SEED="3")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "streamcheck" not in proc.stdout + proc.stderr
