"""cybn.testing.reference (float64 BatchNorm from the maths) in the shapes tests/modules compares with:
statistics and parameter gradients with keepdims shapes ((1, C, 1, ...) or (1, *rest)), per_activation a bool."""
import numpy as np

from cybn.testing import reference as ref


def _mode(per_activation):
    return "per_activation" if per_activation else "spatial"


def _keep(x, mode, *flat):
    pshape = ref.layout(np.shape(x), mode)[1]
    return tuple(np.asarray(v).reshape(pshape) for v in flat)


def train_forward(x, scale, bias, mean, var, eps, factor, per_activation=False):
    """-> y, batch mean, 1/sqrt(biased var + eps), new running mean, new running var (float64, keepdims shapes)."""
    mode = _mode(per_activation)
    y, rm, rv, mu, invstd = ref.forward_train(x, scale, bias, mean, var, eps, factor, mode)
    return (y,) + _keep(x, mode, mu, invstd, rm, rv)


def infer_forward(x, scale, bias, mean, var, eps):
    return ref.forward_infer(x, scale, bias, mean, var, eps, "spatial")


def train_backward(x, grad, scale, per_activation=False, eps=1e-5):
    """Gradients of the training forward (batch statistics depend on x): -> dx, dscale, dbias."""
    mode = _mode(per_activation)
    K = ref.layout(np.shape(x), mode)[2]
    _, _, _, mu, invstd = ref.forward_train(x, scale, None, np.zeros(K), np.ones(K), eps, 0.0, mode)
    dx, dscale, dbias = ref.backward(x, grad, scale, mu, invstd, mode)
    return (dx,) + _keep(x, mode, dscale, dbias)


def eval_backward(x, grad, scale, mean, var, eps):
    """Gradients of the eval-mode function (running statistics are constants): -> dx, dscale, dbias."""
    dx, dscale, dbias = ref.backward_infer(x, grad, scale, mean, var, eps, "spatial")
    return (dx,) + _keep(x, "spatial", dscale, dbias)
