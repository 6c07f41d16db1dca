"""BatchNorm traffic figures on the software GPU: global-memory bytes per element and launches per call,
from the exact counters (cybn.softgpu.measure), beside the ideal, per shape and layout (channels first, and
channels last: shape (N, H, W, C)). These are not timings.
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

SHAPES = [((32, 64, 28, 28), "spatial", "NCHW"), ((2, 4, 256, 256), "spatial", "NCHW"),
          ((4096, 512), "per_activation", "NCHW"),
          ((32, 28, 28, 64), "spatial", "NHWC"), ((2, 256, 256, 4), "spatial", "NHWC")]
QUICK = [((8, 16, 14, 14), "spatial", "NCHW"), ((2, 4, 64, 64), "spatial", "NCHW"),
         ((1024, 128), "per_activation", "NCHW"), ((8, 14, 14, 16), "spatial", "NHWC")]


def main():
    from cybn import backend, batchnorm
    backend.init()
    shapes = QUICK if "--quick" in sys.argv else SHAPES
    print(f"{'shape':>20} {'mode':>15} {'layout':>6} {'dtype':>8} {'op':>14} {'B/elem':>8} {'ideal':>6} {'bar':>6} "
          f"{'launches':>8} {'plan (grid, block, split)':>30}")
    for shape, mode, layout in shapes:
        for dtype in (np.float32, np.float16):
            size = np.dtype(dtype).itemsize
            for op in ("forward_train", "backward", "backward_acc", "forward_infer"):
                per_element, launches = measure_call(shape, dtype, mode, op, layout=layout)
                p = batchnorm.plan(shape, dtype, mode, op.replace("_acc", ""), layout=layout)
                ok = (per_element <= allowance(shape, mode, dtype, op, launches, layout)
                      and launches <= MAX_LAUNCHES[op])
                coop = " coop" if p["coop"] else ""
                print(f"{str(shape):>20} {mode:>15} {layout:>6} {np.dtype(dtype).name:>8} {op:>14} {per_element:8.3f} "
                      f"{IDEAL[op] * size:6d} {BAR[op] * size:6d} {launches:8d} "
                      f"{str((p['grid'][:2], p['block'][:2], p['split'])) + coop:>30}{'' if ok else '  OVER BAR'}")
    print()
    print(f"{'PuzzleLib module':>20} {'shape':>20} {'backward(grad, scale=0.5, momentum=0.9) launches':>50}")
    for shape, mode, layout in shapes:
        if layout == "NCHW":  # PuzzleLib's modules are channels first
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
