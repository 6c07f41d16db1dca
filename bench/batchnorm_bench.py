"""BatchNorm traffic figures on the software GPU: global-memory bytes per element and launches per call,
from the exact counters (cybn.softgpu.measure), beside the ideal. These are not timings.
backward_acc: the backward accumulating its parameter gradients (grad = 0.5 * batch + 0.9 * grad) in its
own launches; then the launches of a PuzzleLib module backward(grad, scale, momentum), which used to add
two axpby launches for the accumulation.

    python bench/batchnorm_bench.py            # the issue's shapes (a minute or two on the interpreter)
    python bench/batchnorm_bench.py --quick    # smaller shapes
"""
import os
import sys

import numpy as np

os.environ.setdefault("CYBN_DEVICE", "softgpu")
os.environ.setdefault("CYBN_SOFTGPU_CHECKS", "none")  # traffic does not depend on the checks
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.append(_ROOT)  # a source checkout that is not pip-installed

from cybn.testing.traffic import BAR, IDEAL, MAX_LAUNCHES, allowance, measure_call  # noqa: E402

# (32, 64, 7, 7): rows of 49 elements, not whole 16-byte units (the SPAN path, vec 3)
SHAPES = [((32, 64, 28, 28), "spatial"), ((2, 4, 256, 256), "spatial"), ((32, 64, 7, 7), "spatial"),
          ((4096, 512), "per_activation")]
QUICK = [((8, 16, 14, 14), "spatial"), ((2, 4, 64, 64), "spatial"), ((8, 16, 7, 7), "spatial"),
         ((1024, 128), "per_activation")]


def main():
    from cybn import backend, batchnorm
    backend.init()
    shapes = QUICK if "--quick" in sys.argv else SHAPES
    print(f"{'shape':>20} {'mode':>15} {'dtype':>8} {'op':>14} {'B/elem':>8} {'ideal':>6} {'bar':>6} "
          f"{'launches':>8} {'plan (grid, block, split), vec':>34}")
    for shape, mode in shapes:
        for dtype in (np.float32, np.float16):
            size = np.dtype(dtype).itemsize
            for op in ("forward_train", "backward", "backward_acc", "forward_infer"):
                per_element, launches = measure_call(shape, dtype, mode, op)
                p = batchnorm.plan(shape, dtype, mode, op.replace("_acc", ""))
                ok = per_element <= allowance(shape, mode, dtype, op, launches) and launches <= MAX_LAUNCHES[op]
                print(f"{str(shape):>20} {mode:>15} {np.dtype(dtype).name:>8} {op:>14} {per_element:8.3f} "
                      f"{IDEAL[op] * size:6d} {BAR[op] * size:6d} {launches:8d} "
                      f"{str((p['grid'][:2], p['block'][:2], p['split'])):>30} v{p['vec']}{'' if ok else '  OVER BAR'}")
    print()
    print(f"{'PuzzleLib module':>20} {'shape':>20} {'backward(grad, scale=0.5, momentum=0.9) launches':>50}")
    for shape, mode in shapes:
        print(f"{module_name(shape, mode):>20} {str(shape):>20} {module_backward_launches(shape, mode):>50d}")


def module_name(shape, mode):
    return "BatchNorm" if mode == "per_activation" else "BatchNorm%dD" % (len(shape) - 2)


def module_backward_launches(shape, mode):
    """Launches of one accumulating PuzzleLib backward (forward outside the measurement)."""
    from cybn import gpuarray, modules, softgpu
    module = getattr(modules, module_name(shape, mode))(shape[1])
    rng = np.random.default_rng(0)
    module(gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32)))
    grad = gpuarray.to_gpu(rng.standard_normal(shape).astype(np.float32))
    with softgpu.measure() as m:
        module.backward(grad, scale=0.5, momentum=0.9)
    return m.launches_count


if __name__ == "__main__":
    main()
