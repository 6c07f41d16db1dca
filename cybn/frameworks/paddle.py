"""Paddle's BatchNorm layer (paddle.nn.BatchNorm, 3.3.1, dygraph) and paddle.nn.functional.batch_norm on
cybn's functional BatchNorm.

    from cybn.paddle import BatchNorm
    bn = BatchNorm(16)                 # weight ones, bias zeros, _mean zeros, _variance ones (float32)
    y = bn(x)                          # train() by default: batch statistics, running ones updated
    dx = bn.backward(dy)               # sets (accumulates, as Paddle) bn.weight.grad and bn.bias.grad
    bn.eval(); y = bn(x)               # running statistics

Semantics, as measured on Paddle (peer-semantics.md, tests/frameworks/golden/paddle.npz):
- training: running = momentum * running + (1 - momentum) * batch with the BIASED batch variance, in the
  forward; momentum is a float32 attribute (0.9 acts as 0.89999998).
- eval(): running statistics, nothing updated; backward dx = dy * weight * invstd(running).
  trainable_statistics=True in eval(): batch statistics AND the running ones are updated, as in train();
  its backward is eval's (dy * weight * invstd) with the running statistics as that forward left them.
  use_global_stats=True: the running statistics in train() too, nothing updated.
- is_test, moving_mean_name, moving_variance_name, do_model_average_for_mean_and_var: accepted; in dygraph
  Paddle ignores them (is_test acts only in static graphs), so does this layer.
- Gradients accumulate into weight.grad/bias.grad across backward calls (in the backward kernel: the
  core's alpha/beta) until clear_gradients().
- in_place=True writes y into the input's memory (Paddle 3.3.1's dygraph leaves the input unchanged; the
  values of y are the same); a backward after an in-place forward is refused (the input is gone).
- state_dict(): {'weight', 'bias', '_mean', '_variance'} (the layer's own Tensors); set_state_dict()
  checks every entry before it sets any and returns (missing_keys, unexpected_keys) as Paddle.
- dtype 'float32' or 'float64' (the layer's parameters and buffers in that dtype, the input must match);
  paddle.nn.functional.batch_norm takes float32 or float64 x with parameters of x's dtype.
- act: fused into the core's epilogue (forward y = act(bn(x)), backward through act' in the same kernel),
  for the activations the core has, with Paddle's default attributes: relu, relu6 (threshold 6), elu
  (alpha 1), sigmoid, tanh, swish (beta 1: x * sigmoid(x)) and silu. Paddle's other activations (gelu,
  hard_sigmoid, hard_swish, mish, selu, softsign, tanh_shrink, ...) raise EngineFeatureMissing at
  construction; leaky_relu and softplus raise ValueError, as Paddle 3.3.1's layer does (its op reads their
  attribute with the wrong type); an unknown name raises ValueError.
- data_layout NHWC (the functional's NLC, NHWC, NDHWC): channel last, run by the core's layout="NHWC" on
  the input itself (no transpose, no copy), every mode above included (in_place, use_global_stats,
  trainable_statistics); 2-d input is channel axis 1 in either layout.
  act and float64 the same.
Not supported yet (EngineFeatureMissing, nothing changed): SyncBatchNorm with NHWC (the core's comm= paths
take NCHW).
"""
from collections import OrderedDict

import numpy as np

from cybn.frameworks.common import EngineFeatureMissing, as_device_array, channel_view, errors_as, factor

# The activations Paddle's layer accepts by name (its legacy op table; leaky_relu and softplus are in it).
ACTIVATIONS = ("relu", "sigmoid", "tanh", "relu6", "elu", "swish", "gelu", "hard_sigmoid", "hard_swish", "silu",
               "mish", "selu", "softsign", "tanh_shrink", "leaky_relu", "softplus", "brelu", "softshrink", "celu",
               "abs", "exp", "square", "sqrt")
# Paddle's act -> the core's activation and alpha (Paddle's default attribute of that op).
FUSED = {"relu": ("relu", 0.0), "relu6": ("relu6", 6.0), "elu": ("elu", 1.0), "sigmoid": ("sigmoid", 0.0),
         "tanh": ("tanh", 0.0), "swish": ("swish", 0.0), "silu": ("silu", 0.0)}
REFUSED_BY_PADDLE = ("leaky_relu", "softplus")  # Paddle 3.3.1's layer fails on these (attribute type)
DTYPES = {"float32": np.float32, "float64": np.float64}
LAYER_LAYOUTS = ("NCHW", "NHWC")  # what the layer takes, for any rank (NCL, NDHWC, ... raise there)
FUNCTIONAL_FORMATS = {"NC": 1, "NCL": 1, "NCHW": 1, "NCDHW": 1, "NLC": -1, "NHWC": -1, "NDHWC": -1}


class Tensor:
    """A layer's parameter or buffer: a GPUArray of the layer's dtype with Paddle's Tensor surface (numpy(),
    set_value(), shape, dtype, stop_gradient, grad, name) and __cuda_array_interface__."""

    def __init__(self, array, name, stop_gradient):
        self.value, self.name, self.stop_gradient, self.grad = array, name, stop_gradient, None

    shape = property(lambda self: list(self.value.shape))
    dtype = property(lambda self: self.value.dtype)
    __cuda_array_interface__ = property(lambda self: self.value.__cuda_array_interface__)

    def numpy(self):
        return self.value.get()

    def _checked(self, v):
        a = np.asarray(v.get() if hasattr(v, "get") else v.numpy() if hasattr(v, "numpy") else v)
        if a.size != self.value.size or (a.ndim and a.shape != tuple(self.value.shape)):
            raise ValueError(f"{self.name}: the value must have shape {self.shape}, got {list(a.shape)}")
        if not np.can_cast(a.dtype, self.value.dtype, "same_kind"):
            raise ValueError(f"{self.name}: the value must be floating point, got {a.dtype}")
        return a.astype(self.value.dtype).reshape(self.value.shape)

    def set_value(self, v):
        self.value.set(self._checked(v))

    def __repr__(self):
        return f"Tensor(name={self.name}, shape={self.shape}, stop_gradient={self.stop_gradient})"


def _initial(attr, C, default, what, dtype):
    """The initial value of weight/bias from param_attr/bias_attr: None (Paddle's default), False (no
    parameter: 1 / 0, frozen), a number (a constant) or an array of C values."""
    if attr is None or attr is True or attr is False:
        return np.full(C, default, dtype)
    if np.isscalar(attr) and not isinstance(attr, str):
        return np.full(C, float(attr), dtype)
    a = np.asarray(attr.get() if hasattr(attr, "get") else attr)
    if a.dtype.kind not in "fiu" or a.size != C:
        raise ValueError(f"BatchNorm: {what} must be None, False, a number or {C} initial values, got {attr!r}")
    return a.astype(dtype).reshape(C)


def _data(x, layout_axis, what="input"):
    """(x as a GPUArray, (view, core layout, C)) for channel axis 1 or -1."""
    a = as_device_array(x, what, ValueError)
    if len(a.shape) < 2:
        raise ValueError(f"(InvalidArgument) the dimension of {what} must be >= 2 (N, C, ...), got shape "
                         f"{list(a.shape)}")
    return a, channel_view(a, layout_axis, what, ValueError)


def _float32_attr(value, what):
    """A Paddle op attribute of type float: value rounded to float32."""
    try:
        return float(np.float32(value))
    except (TypeError, ValueError):
        raise ValueError(f"BatchNorm: {what} must be a number, got {value!r}") from None


class BatchNorm:
    """paddle.nn.BatchNorm (see the module docstring)."""

    _comm = None  # SyncBatchNorm (paddle_sync.py): the communicator the training statistics span

    def __init__(self, num_channels, act=None, is_test=False, momentum=0.9, epsilon=1e-05, param_attr=None,
                 bias_attr=None, dtype="float32", data_layout="NCHW", in_place=False, moving_mean_name=None,
                 moving_variance_name=None, do_model_average_for_mean_and_var=True, use_global_stats=False,
                 trainable_statistics=False):
        from cybn.array import gpuarray
        if not isinstance(num_channels, (int, np.integer)) or isinstance(num_channels, bool) or num_channels < 1:
            raise ValueError(f"BatchNorm: num_channels must be a positive int, got {num_channels!r}")
        if act is not None and act not in ACTIVATIONS:
            raise ValueError(f"BatchNorm: unknown act {act!r} (Paddle's names: {', '.join(ACTIVATIONS)})")
        if act in REFUSED_BY_PADDLE:
            raise ValueError(f"(InvalidArgument) BatchNorm(act={act!r}): Paddle's layer fails on this activation (its "
                             f"op reads the {act} attribute with the wrong type); apply paddle.nn.functional.{act} "
                             f"to the output instead")
        if act is not None and act not in FUSED:
            raise EngineFeatureMissing(f"BatchNorm(act={act!r})", f"that activation in its fused epilogue (it has "
                                       f"{', '.join(FUSED)}; or use act=None and apply {act} to the output)")
        if data_layout not in LAYER_LAYOUTS:
            raise ValueError(f"BatchNorm: unknown data layout type string {data_layout!r}: the layer takes NCHW or "
                             f"NHWC for any rank (NHWC: channel last)")
        dt = str(np.dtype(dtype)) if not hasattr(dtype, "name") else dtype.name
        if dt not in DTYPES:
            raise ValueError(f"BatchNorm: dtype must be 'float32' or 'float64', got {dtype!r}")
        self._factor = factor(momentum, "momentum")
        # momentum and epsilon are float32 attributes in Paddle: 0.9 acts as 0.89999998, 1e-5 as 9.99999975e-06
        # (visible in float64, peer-semantics.md)
        self._momentum, self._epsilon = float(np.float32(momentum)), _float32_attr(epsilon, "epsilon")
        if not self._epsilon > 0:
            raise ValueError(f"BatchNorm: epsilon must be > 0, got {epsilon!r}")
        C = int(num_channels)
        self._num_channels, self._act, self._data_layout, self._in_place = C, act, data_layout, bool(in_place)
        self._use_global_stats, self._trainable_statistics = bool(use_global_stats), bool(trainable_statistics)
        self._is_test, self._dtype = bool(is_test), dt
        pdt = DTYPES[dt]
        w0, b0 = _initial(param_attr, C, 1.0, "param_attr", pdt), _initial(bias_attr, C, 0.0, "bias_attr", pdt)
        self.weight = Tensor(gpuarray.to_gpu(w0), "weight", param_attr is False)
        self.bias = Tensor(gpuarray.to_gpu(b0), "bias", bias_attr is False)
        self._mean = Tensor(gpuarray.zeros((C,), pdt), moving_mean_name or "_mean", True)
        self._variance = Tensor(gpuarray.to_gpu(np.ones(C, pdt)), moving_variance_name or "_variance", True)
        self._epi = dict(activation=FUSED[act][0], activation_alpha=FUSED[act][1]) if act else {}
        self.training = True
        self._saved = None

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def __call__(self, input):
        return self.forward(input)

    def forward(self, input):
        from cybn import batchnorm
        x, (xv, layout, C) = _data(input, -1 if self._data_layout == "NHWC" else 1)
        if C != self._num_channels:
            raise ValueError(f"(InvalidArgument) ShapeError: the input has {C} channels on its "
                             f"{'last' if self._data_layout == 'NHWC' else 'second'} axis, the layer "
                             f"{self._num_channels} (input shape {list(x.shape)}, data_layout {self._data_layout})")
        if x.dtype != self._dtype:
            raise ValueError(f"(InvalidArgument) the input must be {self._dtype} like the layer, got {x.dtype}")
        w, b, rm, rv = self.weight.value, self.bias.value, self._mean.value, self._variance.value
        out = xv if self._in_place else None
        batch = (self.training or self._trainable_statistics) and not self._use_global_stats
        with errors_as(ValueError):
            if batch:
                y, sm, si = batchnorm.forward_train(xv, w, b, rm, rv, self._epsilon, self._factor, out=out,
                                                    running_var_unbiased=False, comm=self._comm, layout=layout,
                                                    **self._epi)
            else:
                y = batchnorm.forward_infer(xv, w, b, rm, rv, self._epsilon, out=out, layout=layout, **self._epi)
                sm = si = None
        # eval with trainable_statistics: Paddle's backward is the frozen one, with the running statistics as
        # this forward updated them (act' still at this forward's values)
        self._saved = (xv, layout, x.shape, sm, si, not (batch and self.training), self._in_place, y)
        return y.reshape(*x.shape)

    def backward(self, grad):
        """The input gradient of the last forward; weight.grad / bias.grad accumulate (Paddle's rule)."""
        from cybn import batchnorm
        from cybn.array import gpuarray
        if self._saved is None:
            raise RuntimeError("BatchNorm.backward: no forward to differentiate (call the layer first)")
        xv, layout, shape, sm, si, frozen, in_place, y = self._saved
        if in_place:
            raise RuntimeError("BatchNorm.backward: the forward ran with in_place=True, so its input now holds "
                               "the output and the gradient (which needs the input) cannot be computed")
        dy = as_device_array(grad, "grad", ValueError)
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"BatchNorm.backward: grad must have the input's shape {list(shape)}, got "
                             f"{list(dy.shape)}")
        wg, bg = self.weight.grad, self.bias.grad
        acc = dict(scale_grad=wg, bias_grad=bg, scale_grad_beta=0.0 if wg is None else 1.0,
                   bias_grad_beta=0.0 if bg is None else 1.0, layout=layout)
        epi = dict(self._epi, y=y, bias=self.bias.value) if self._act else {}  # act' from y (swish: recomputed)
        w = self.weight.value
        with errors_as(ValueError):
            dy = dy.reshape(*xv.shape)
            if not frozen:
                dx, dw, db = batchnorm.backward(xv, dy, w, sm, si, comm=self._comm, **acc, **epi)
            else:
                if sm is not None and self._act:
                    # the forward normalised with the batch (trainable_statistics): act' at its v, which the
                    # core may recompute from x and the statistics it is given (swish, relu6), so take
                    # dy * act'(v) from the training backward's residual path, then the frozen backward
                    zero = gpuarray.zeros(xv.shape, xv.dtype)
                    dy = batchnorm.backward(xv, dy, w, sm, si, residual=zero, layout=layout, **epi)[1]
                    epi = {}
                dx, dw, db = batchnorm.backward_infer(xv, dy, w, self._mean.value, self._variance.value,
                                                      self._epsilon, **acc, **epi)
        if not self.weight.stop_gradient:
            self.weight.grad = dw
        if not self.bias.stop_gradient:
            self.bias.grad = db
        return dx.reshape(*shape)

    def clear_gradients(self):
        self.weight.grad = self.bias.grad = None

    def parameters(self):
        return [t for t in (self.weight, self.bias) if not t.stop_gradient]

    def state_dict(self):
        return OrderedDict([("weight", self.weight), ("bias", self.bias), ("_mean", self._mean),
                            ("_variance", self._variance)])

    def set_state_dict(self, state_dict):
        """Sets the entries present (numpy, GPUArray or Tensor values), each checked before any is set;
        returns (missing_keys, unexpected_keys)."""
        own = self.state_dict()
        values = {k: own[k]._checked(v) for k, v in state_dict.items() if k in own}
        for k, v in values.items():
            own[k].value.set(v)
        return [k for k in own if k not in state_dict], [k for k in state_dict if k not in own]

    set_dict = load_dict = set_state_dict

    def extra_repr(self):
        return f"num_channels={self._num_channels}, momentum={self._momentum}, epsilon={self._epsilon}"


class functional:
    """paddle.nn.functional's batch_norm."""

    @staticmethod
    def batch_norm(x, running_mean, running_var, weight, bias, training=False, momentum=0.9, epsilon=1e-05,
                   data_format="NCHW", use_global_stats=None, name=None):
        """y; in training (unless use_global_stats) the running statistics are updated in place with the
        biased batch variance. use_global_stats None: the running statistics exactly when not training."""
        from cybn import batchnorm
        if data_format not in FUNCTIONAL_FORMATS:
            raise ValueError(f"batch_norm: data_format must be one of {', '.join(FUNCTIONAL_FORMATS)}, got "
                             f"{data_format!r}")
        a, (xv, layout, C) = _data(x, FUNCTIONAL_FORMATS[data_format], "x")
        f = factor(momentum, "momentum")
        epsilon = _float32_attr(epsilon, "epsilon")
        params = [as_device_array(t.value if isinstance(t, Tensor) else t, n, ValueError) if t is not None else None
                  for t, n in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"),
                               (bias, "bias"))]
        for t, n in zip(params, ("running_mean", "running_var", "weight", "bias")):
            if t is not None and t.size != C:
                raise ValueError(f"(InvalidArgument) batch_norm: {n} must have {C} elements, one per channel of x "
                                 f"(shape {list(a.shape)}, data_format {data_format}: channel axis "
                                 f"{'last' if FUNCTIONAL_FORMATS[data_format] == -1 else 1}), "
                                 f"got shape {list(t.shape)}")
        rm, rv, w, b = params
        glob = (not training) if use_global_stats is None else bool(use_global_stats)
        with errors_as(ValueError):
            if training and not glob:
                y = batchnorm.forward_train(xv, w, b, rm, rv, epsilon, f, running_var_unbiased=False,
                                            layout=layout)[0]
            else:
                y = batchnorm.forward_infer(xv, w, b, rm, rv, epsilon, layout=layout)
        return y.reshape(*a.shape)


batch_norm = functional.batch_norm


def __getattr__(name):
    # SyncBatchNorm lives in paddle_sync.py (it subclasses BatchNorm and needs cybn.distributed)
    if name == "SyncBatchNorm":
        from cybn.frameworks.paddle_sync import SyncBatchNorm
        return SyncBatchNorm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
