"""BatchNorm kernel tests: on the software GPU with memcheck, racecheck and initcheck on."""
import os

import numpy as np
import pytest

os.environ.setdefault("CYBN_DEVICE", "softgpu")
os.environ.setdefault("CYBN_SOFTGPU_CHECKS", "all")


@pytest.fixture(scope="session", autouse=True)
def _software_gpu():
    from cybn import backend
    backend.init()
    assert backend.name() == "softgpu", "the BatchNorm tests run on the software GPU"


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def fresh():
    """The test starts without kept workspaces (its first split call meets a fresh allocation) and leaves none."""
    from cybn import batchnorm
    batchnorm.free_workspaces()
    yield
    batchnorm.free_workspaces()
