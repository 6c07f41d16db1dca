"""BatchNorm traffic figures on the software GPU: global-memory bytes per element and launches per call,
from the exact counters (cybn.softgpu.measure), beside the ideal. These are not timings.

    python bench/batchnorm_bench.py            # the issue's shapes (a minute or two on the interpreter)
    python bench/batchnorm_bench.py --quick    # smaller shapes
"""
import os
import sys

import numpy as np

os.environ.setdefault("CYBN_DEVICE", "softgpu")
os.environ.setdefault("CYBN_SOFTGPU_CHECKS", "none")  # traffic does not depend on the checks
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(_ROOT, "tests", "batchnorm"))  # the measurement is shared with the tests
sys.path.append(_ROOT)  # a source checkout that is not pip-installed

from bn_traffic import BAR, IDEAL, MAX_LAUNCHES, allowance, measure_call  # noqa: E402

SHAPES = [((32, 64, 28, 28), "spatial"), ((2, 4, 256, 256), "spatial"), ((4096, 512), "per_activation")]
QUICK = [((8, 16, 14, 14), "spatial"), ((2, 4, 64, 64), "spatial"), ((1024, 128), "per_activation")]


def main():
    from cybn import backend, batchnorm
    backend.init()
    shapes = QUICK if "--quick" in sys.argv else SHAPES
    print(f"{'shape':>20} {'mode':>15} {'dtype':>8} {'op':>14} {'B/elem':>8} {'ideal':>6} {'bar':>6} "
          f"{'launches':>8} {'plan (grid, block, split)':>30}")
    for shape, mode in shapes:
        for dtype in (np.float32, np.float16):
            size = np.dtype(dtype).itemsize
            for op in ("forward_train", "backward", "forward_infer"):
                per_element, launches = measure_call(shape, dtype, mode, op)
                p = batchnorm.plan(shape, dtype, mode, op)
                ok = per_element <= allowance(shape, mode, dtype, op, launches) and launches <= MAX_LAUNCHES[op]
                print(f"{str(shape):>20} {mode:>15} {np.dtype(dtype).name:>8} {op:>14} {per_element:8.3f} "
                      f"{IDEAL[op] * size:6d} {BAR[op] * size:6d} {launches:8d} "
                      f"{str((p['grid'][:2], p['block'][:2], p['split'])):>30}{'' if ok else '  OVER BAR'}")


if __name__ == "__main__":
    main()
