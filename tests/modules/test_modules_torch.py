"""A BatchNorm2D trained for a few SGD steps equals torch.nn.BatchNorm2d (float64, CPU) trained the same way
(the optional `torch` extra; skipped without it).

torch's module uses a fixed momentum; PuzzleLib's schedule is factor = max(initFactor / n, minFactor) at step n,
so torch's momentum is set to that factor before each step. Both weight the new batch with it and use the
unbiased batch variance for running_var."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # module level: without torch the whole file is skipped cleanly

from modules_helpers import to_gpu  # noqa: E402
from cybn.modules import BatchNorm2D  # noqa: E402

# cybn runs in float32 (Welford statistics, ~1e-6 relative); three steps of SGD keep the parameters O(1), so
# 1e-4 is ~100x the expected float32 error while any formula or schedule slip moves values by >= 1e-2.
TOL = dict(rtol=1e-4, atol=1e-4)


def test_batchnorm2d_three_sgd_steps_equal_torch():
    shape, maps, lr, eps = (4, 3, 5, 6), 3, 0.5, 1e-5
    init_factor, min_factor = 1.0, 0.4  # factors 1, 0.5, 0.4: both branches of the schedule
    bn = BatchNorm2D(maps, epsilon=eps, initFactor=init_factor, minFactor=min_factor, sscale=0.2)
    tbn = torch.nn.BatchNorm2d(maps, eps=eps).double()
    with torch.no_grad():  # the same starting weights (cybn draws its scale; its bias and statistics start at 0/1)
        tbn.weight.copy_(torch.from_numpy(bn.scale.get().ravel().astype(np.float64)))
        tbn.bias.zero_()
    np.testing.assert_array_equal(bn.bias.get().ravel(), 0)
    np.testing.assert_array_equal(bn.mean.get().ravel(), tbn.running_mean.numpy())
    np.testing.assert_array_equal(bn.var.get().ravel(), tbn.running_var.numpy())
    rng = np.random.default_rng(3)

    for step in range(1, 4):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        y = bn(to_gpu(x))
        bn.backward(to_gpu(g))
        bn.updateParams(-lr)  # PuzzleLib's step is data += rate * grad: a negative rate descends

        tbn.momentum = max(init_factor / step, min_factor)
        tbn.zero_grad()
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        ty = tbn(xt)
        ty.backward(torch.from_numpy(g.astype(np.float64)))
        with torch.no_grad():
            for p in tbn.parameters():
                p -= lr * p.grad

        msg = "step %d" % step
        np.testing.assert_allclose(y.get(), ty.detach().numpy(), **TOL, err_msg="y, " + msg)
        np.testing.assert_allclose(bn.grad.get(), xt.grad.numpy(), **TOL, err_msg="dx, " + msg)
        np.testing.assert_allclose(bn.scale.get().ravel(), tbn.weight.detach().numpy(), **TOL,
                                   err_msg="scale, " + msg)
        np.testing.assert_allclose(bn.bias.get().ravel(), tbn.bias.detach().numpy(), **TOL, err_msg="bias, " + msg)
        np.testing.assert_allclose(bn.mean.get().ravel(), tbn.running_mean.numpy(), **TOL, err_msg="mean, " + msg)
        np.testing.assert_allclose(bn.var.get().ravel(), tbn.running_var.numpy(), **TOL, err_msg="var, " + msg)
        assert bn.numOfProps == int(tbn.num_batches_tracked) == step

    # Eval mode on new data: both normalise with the running statistics and the trained parameters.
    bn.evalMode()
    tbn.eval()
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    with torch.no_grad():
        want = tbn(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(bn(to_gpu(x)).get(), want, **TOL, err_msg="eval y")
    assert bn.numOfProps == 3  # eval forwards do not advance the schedule
