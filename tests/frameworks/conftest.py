"""Framework-face tests: cybn's MXNet and Paddle faces against golden files from the real frameworks
(tests/frameworks/golden), on the software GPU with all its checks."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
os.environ.setdefault("CYBN_DEVICE", "softgpu")


@pytest.fixture(scope="session", autouse=True)
def _software_gpu():
    from cybn import backend
    backend.init()
    assert backend.name() == "softgpu"


@pytest.fixture
def rng():
    return np.random.default_rng(20261201)
