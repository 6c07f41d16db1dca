"""Live cross-check against an installed PaddlePaddle (the optional `paddle` extra; skipped without it, like
the torch tests): the same float32 inputs through paddle.nn.BatchNorm and cybn.paddle.BatchNorm, three
training steps, then eval, NCHW and NHWC; y, dx, parameter gradients and running statistics within the golden
tolerances."""
import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from golden_compare import assert_close  # noqa: E402
from cybn import gpuarray  # noqa: E402
from cybn.paddle import BatchNorm  # noqa: E402


@pytest.mark.parametrize("shape,momentum,layout", [((6, 4), 0.9, "NCHW"), ((4, 3, 7), 0.5, "NCHW"),
                                                   ((3, 5, 4, 6), 0.99, "NCHW"), ((2, 3, 2, 3, 4), 0.9, "NCHW"),
                                                   ((4, 7, 3), 0.5, "NHWC"), ((3, 4, 6, 5), 0.9, "NHWC"),
                                                   ((2, 2, 3, 4, 3), 0.99, "NHWC")])
def test_against_paddle(rng, shape, momentum, layout):
    paddle.set_device("cpu")
    C = shape[-1 if layout == "NHWC" else 1]
    theirs = paddle.nn.BatchNorm(C, momentum=momentum, data_layout=layout)
    ours = BatchNorm(C, momentum=momentum, data_layout=layout)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    theirs.weight.set_value(w)
    ours.weight.set_value(w)
    for step in range(4):
        if step == 3:
            theirs.eval()
            ours.eval()
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = paddle.to_tensor(x, stop_gradient=False)
        yt = theirs(xt)
        yt.backward(paddle.to_tensor(dy))
        y = ours(gpuarray.to_gpu(x))
        dx = ours.backward(gpuarray.to_gpu(dy))
        assert_close(y, yt.numpy(), f"step {step} y", "y")
        assert_close(dx, xt.grad.numpy(), f"step {step} dx", "grad")
        assert_close(ours.weight.grad, theirs.weight.grad.numpy(), f"step {step} weight.grad", "grad")
        assert_close(ours.bias.grad, theirs.bias.grad.numpy(), f"step {step} bias.grad", "grad")
        assert_close(ours._mean.value, theirs._mean.numpy(), f"step {step} _mean", "stat")
        assert_close(ours._variance.value, theirs._variance.numpy(), f"step {step} _variance", "stat")
