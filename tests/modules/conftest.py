import numpy as np
import pytest

from modules_helpers import CASES


@pytest.fixture(params=sorted(CASES))
def case(request):
    """(factory, data shape, per-activation?) of each module class."""
    return CASES[request.param]


@pytest.fixture(autouse=True)
def _seeded():
    np.random.seed(1234)
