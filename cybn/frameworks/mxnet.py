"""MXNet's BatchNorm operator (mx.nd.BatchNorm, 1.9.1) on cybn's functional BatchNorm.

    from cybn.mxnet import BatchNorm, autograd
    with autograd.record() as tape:              # MXNet: with autograd.record():
        y = BatchNorm(x, gamma, beta, moving_mean, moving_var, fix_gamma=False)
    dx, dgamma, dbeta = tape.backward(y, dy)      # MXNet: y.backward(dy); x.grad, gamma.grad, beta.grad

Semantics, as measured on MXNet (peer-semantics.md, tests/frameworks/golden/mxnet.npz):
- training (default: MXNet's autograd mode, True inside autograd.record(), False outside): batch mean and
  biased variance normalise; the moving statistics move as
  moving = momentum * moving + (1 - momentum) * batch (biased variance), and only in the BACKWARD pass: a
  training forward with no backward leaves them unchanged. The forward's kernel writes the batch mean and
  variance into two scratch arrays; tape.backward folds them into the moving statistics as they are then
  (two axpby launches of C floats), so two recorded calls sharing the moving arrays compound as in MXNet.
- fix_gamma=True (the default): the forward uses gamma = 1, the gamma gradient is 0, and the gamma array
  passed in is overwritten with ones (after the forward succeeded).
- training=False or use_global_stats=True: the moving statistics normalise and nothing is updated;
  use_global_stats's backward is dy * gamma * invstd (and dgamma, dbeta from the moving statistics).
- output_mean_var=True: returns [y, mean, invstd], the batch mean and 1/sqrt(var + eps) in training, the
  moving mean and 1/sqrt(moving_var + eps) otherwise (that one computed from the C moving variances).
- eval-mode backward (the backward of a training=False forward; MXNet's backward runs in train mode):
  MXNet applies the TRAINING gradient formula around the moving statistics the forward used,
  dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) with xhat = (x - moving_mean) * invstd,
  and moves the moving statistics towards themselves (a float32 rounding step). A composition of three
  core calls: backward_infer (dgamma = sum(dy * xhat), dbeta = sum(dy)), forward_infer with dy as the
  residual and scale -dgamma/M, bias -dbeta/M (g = dy - xhat * dgamma/M - dbeta/M), backward_infer of g.
- data float32, or float16 with float32 gamma/beta/moving statistics, or float64 with float64 everything
  (MXNet's "uniform type" rule). bfloat16 data (ml_dtypes.bfloat16) like float16, with float32 parameters
  (no golden file: MXNet 1.9.1's CPU BatchNorm was not measured with bfloat16; tested against float64
  numpy). cudnn_off is accepted and has no effect.
- axis: any channel axis. The last one of data with more than two dimensions (axis=-1, channels-last) runs
  as the core's layout="NHWC" on data itself (no transpose, no copy); a middle one as an (N', C, S') view;
  every mode and dtype above the same.
"""
import threading

import numpy as np

from cybn.array.dtypes import BFLOAT16
from cybn.frameworks.common import as_device_array, channel_view, errors_as, factor


class MXNetError(RuntimeError):
    """What MXNet raises for bad operator arguments (mxnet.base.MXNetError is a RuntimeError)."""


class _Saved:
    """What one recorded training forward keeps for its backward."""
    __slots__ = ("x", "layout", "C", "gamma", "save_mean", "save_invstd", "moving", "scratch", "fix_gamma", "frozen",
                 "eps", "momentum")


_local = threading.local()


class Tape:
    """The recorded BatchNorm calls of one `autograd.record()` block; backward(y, dy) runs the backward of
    the call that returned y (once, as MXNet frees the graph) and updates its moving statistics."""

    def __init__(self):
        self._saved = []

    def _add(self, y, saved):
        self._saved.append((y, saved))

    def backward(self, y, out_grad):
        """(data_grad, gamma_grad, beta_grad) of the recorded call that returned y (or [y, mean, invstd])."""
        from cybn import batchnorm
        from cybn.array import elementwise, gpuarray
        head = y[0] if isinstance(y, list) else y
        for i, (out, s) in enumerate(self._saved):
            if out is head:
                break
        else:
            raise MXNetError("backward: this output was not recorded by this tape (run the forward inside "
                             "`with autograd.record() as tape:`), or its backward already ran")
        dy = as_device_array(out_grad, "out_grad", MXNetError)
        if tuple(dy.shape) != tuple(head.shape):
            raise MXNetError(f"backward: out_grad must have the output's shape {tuple(head.shape)}, got "
                             f"{tuple(dy.shape)}")
        with errors_as(MXNetError):
            dy = dy.reshape(*s.x.shape)  # the channel view of data, as the forward used
            if s.frozen is None:
                dx, dg, db = _eval_backward(s, dy)
            elif s.frozen:
                dx, dg, db = batchnorm.backward_infer(s.x, dy, s.gamma, s.moving[0], s.moving[1], s.eps,
                                                      layout=s.layout)
            else:
                dx, dg, db = batchnorm.backward(s.x, dy, s.gamma, s.save_mean, s.save_invstd, layout=s.layout)
        del self._saved[i]
        if s.scratch is not None:  # MXNet moves its statistics in the backward pass, from their value then:
            m = np.float32(s.momentum)  # moving = m * moving + (1 - m) * batch, in float32 as MXNet
            for moving, batch_stat in zip(s.moving, s.scratch):
                elementwise.axpby(batch_stat, moving, float(np.float32(1) - m), float(m))
        if s.fix_gamma:
            dg = gpuarray.zeros(dg.shape, dg.dtype)
        return dx.reshape(*head.shape), dg, db


def _eval_backward(s, dy):
    """MXNet's backward of an inference forward: the training formula around the statistics the forward
    used (s.scratch: the moving mean/variance then), from three core calls (module docstring)."""
    from cybn import batchnorm
    mean, var = s.scratch
    _, dg, db = batchnorm.backward_infer(s.x, dy, s.gamma, mean, var, s.eps, layout=s.layout)
    per = -1.0 / (s.x.size // s.C)  # -1/M, M values per channel
    g = batchnorm.forward_infer(s.x, dg * per, db * per, mean, var, s.eps, residual=dy, layout=s.layout)
    dx = batchnorm.backward_infer(s.x, g, s.gamma, mean, var, s.eps, out=g, layout=s.layout)[0]
    return dx, dg, db


class autograd:
    """The part of mxnet.autograd a BatchNorm backward needs: `with autograd.record() as tape:`."""

    @staticmethod
    def record():
        return _Recording()

    @staticmethod
    def is_recording():
        return getattr(_local, "tape", None) is not None


class _Recording:
    def __enter__(self):
        if getattr(_local, "tape", None) is not None:
            raise MXNetError("autograd.record() blocks do not nest here")
        _local.tape = Tape()
        return _local.tape

    def __exit__(self, *exc):
        _local.tape = None
        return False


# data dtype -> the parameters' dtype (MXNet's "uniform type" rule; float16 data keeps float32 parameters,
# and so does bfloat16, ml_dtypes' numpy dtype, where installed)
_PARAM_DTYPE = {np.dtype(np.float32): np.float32, np.dtype(np.float16): np.float32,
                np.dtype(np.float64): np.float64}
if BFLOAT16 is not None:
    _PARAM_DTYPE[BFLOAT16] = np.float32


def _param(obj, what, C, dtype):
    a = as_device_array(obj, what, MXNetError)
    if a.dtype != dtype:
        raise MXNetError(f"BatchNorm: {what} must be {np.dtype(dtype)} (MXNet requires uniform type: float32 "
                         f"parameters for float32, float16 or bfloat16 data, float64 for float64 data), got {a.dtype}")
    if a.size != C:
        raise MXNetError(f"BatchNorm: {what} must have {C} elements (the channel axis' size), got shape "
                         f"{tuple(a.shape)}")
    return a.reshape(C)


def BatchNorm(data, gamma, beta, moving_mean, moving_var, eps=0.001, momentum=0.9, fix_gamma=True,
              use_global_stats=False, output_mean_var=False, axis=1, cudnn_off=False, training=None):
    """mx.nd.BatchNorm: returns y, or [y, mean, invstd] with output_mean_var (see the module docstring).
    training None: MXNet's mode, taken from autograd (training inside autograd.record(), inference outside)."""
    from cybn import batchnorm
    from cybn.array import gpuarray
    if training is None:
        training = autograd.is_recording()
    x = as_device_array(data, "data", MXNetError)
    pdt = _PARAM_DTYPE.get(x.dtype)
    if pdt is None:
        raise MXNetError(f"BatchNorm: data must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise MXNetError(f"BatchNorm: axis must be an int, got {axis!r}")
    xv, layout, C = channel_view(x, int(axis), "data", MXNetError)
    g, b = _param(gamma, "gamma", C, pdt), _param(beta, "beta", C, pdt)
    mm, mv = _param(moving_mean, "moving_mean", C, pdt), _param(moving_var, "moving_var", C, pdt)
    f = factor(momentum, "momentum", MXNetError)
    tape = getattr(_local, "tape", None)
    scale = gpuarray.zeros((C,), pdt).fill(1.0) if fix_gamma else g
    with errors_as(MXNetError):
        if training and not use_global_stats:
            # factor 1 from zeros: the scratch pair receives the batch mean and biased variance exactly
            scratch = (gpuarray.zeros((C,), pdt), gpuarray.zeros((C,), pdt))
            y, mean, invstd = batchnorm.forward_train(xv, scale, b, scratch[0], scratch[1], eps, 1.0,
                                                      running_var_unbiased=False, layout=layout)
            frozen = False
        else:
            y = batchnorm.forward_infer(xv, scale, b, mm, mv, eps, layout=layout)
            # use_global_stats: the backward is dy * gamma * invstd, nothing moves; inference otherwise:
            # MXNet's eval backward centres on the statistics used here and moves the moving ones to them
            if use_global_stats:
                scratch, frozen = None, True
            else:
                scratch, frozen = ((mm.copy(), mv.copy()) if tape is not None else None), None
            if output_mean_var:
                mean = mm.copy()
                invstd = gpuarray.to_gpu((1.0 / np.sqrt(mv.get().astype(pdt) + pdt(eps))).astype(pdt))
    if fix_gamma:
        g.fill(1.0)  # MXNet overwrites the gamma it was given
    y = y.reshape(*x.shape)
    if tape is not None:
        s = _Saved()
        s.x, s.layout, s.C, s.gamma, s.moving, s.scratch, s.fix_gamma, s.frozen, s.eps = \
            xv, layout, C, scale, (mm, mv), scratch, bool(fix_gamma), frozen, eps
        s.momentum = float(np.float32(momentum))  # MXNet holds momentum as a float32
        if frozen is False:
            s.save_mean, s.save_invstd = mean, invstd
        tape._add(y, s)
    return [y, mean, invstd] if output_mean_var else y
