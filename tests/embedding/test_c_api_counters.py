"""The C API's workspaces are the caller's memory, whose contents between calls the engine cannot know (the
extension here even fills it with 0xA5 first): every split call zeroes its counters with one memset, call after
call, and stays right (cybn/batchnorm/scratch.pxi's trust rule; the Python face's own workspaces skip it)."""
import re

import pytest

from cybn import softgpu

from embed_cases import SPLIT_CASES
from test_c_api import run_and_check

REDUCTION = re.compile(r"bn_(nhwc_)?(fwd_train|bwd)(_spatial|_pa)?I")  # the split plans' first launches


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_every_split_call_on_caller_memory_zeroes_its_counters(cext, case):
    runs = []
    for seed in (0, 1):
        with softgpu.seed(seed + 5), softgpu.measure() as m:
            run_and_check(cext, case, seed)
        split = sum(1 for ln in m.launches if REDUCTION.search(ln["kernel"]) and ln["grid"][1] > 1)
        runs.append((split, m.counters["memset"]["calls"]))
    assert runs[0] == runs[1]
    split, memsets = runs[0]
    assert split >= 2  # forward_train and backward at least
    assert memsets == 1 + split  # the extension's garbage fill, then one per split call
