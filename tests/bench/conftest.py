"""Tests of the benchmark scripts (bench/gpu_model.py, bench/gpu_check.py) and the performance model they
share (cybn.testing): on the software GPU, like every test."""
import os
import sys

import pytest

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(_TESTS)
sys.path.insert(0, os.path.join(REPO, "bench"))


@pytest.fixture(scope="session", autouse=True)
def _software_gpu():
    from cybn import backend
    backend.init()
    assert backend.name() == "softgpu", "the bench tests run on the software GPU"
