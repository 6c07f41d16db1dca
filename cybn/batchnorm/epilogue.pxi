# The Python face's epilogue arguments: activation names -> BN_ACT_* ids with their alpha,
# the residual array, and the statistics dtype of x. Included by batchnorm.pyx.

_ACTIVATIONS = {"relu": BN_ACT_RELU, "relu6": BN_ACT_CLIPPED_RELU, "clipped_relu": BN_ACT_CLIPPED_RELU,
                "leaky_relu": BN_ACT_LEAKY_RELU, "elu": BN_ACT_ELU, "sigmoid": BN_ACT_SIGMOID,
                "tanh": BN_ACT_TANH, "swish": BN_ACT_SWISH, "silu": BN_ACT_SWISH}
_ACTIVATION_NAMES = ", ".join(repr(n) for n in _ACTIVATIONS)


cdef int _set_activation(bn_desc* d, activation, activation_alpha) except -1:
    """d.act and d.act_alpha from a name (None: no activation). relu6 is clipped_relu with alpha 6;
    clipped_relu needs alpha > 0, leaky_relu and elu alpha >= 0 (their derivative is read from y)."""
    alpha = _real(activation_alpha, "activation_alpha")
    if not abs(alpha) <= 1.7976931348623157e308:
        raise ValueError(f"activation_alpha must be finite, got {activation_alpha!r}")
    if activation is None:
        d.act, d.act_alpha = BN_ACT_NONE, 0.0
        return 0
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or a name ({_ACTIVATION_NAMES}), got {activation!r}")
    act = _ACTIVATIONS.get(activation.lower())
    if act is None:
        raise ValueError(f"unknown activation {activation!r}: use None or one of {_ACTIVATION_NAMES}")
    if activation.lower() == "relu6":
        alpha = 6.0
    if act == BN_ACT_CLIPPED_RELU and not alpha > 0:
        raise ValueError(f"clipped_relu needs activation_alpha > 0 (its ceiling), got {activation_alpha!r}")
    if (act == BN_ACT_LEAKY_RELU or act == BN_ACT_ELU) and alpha < 0:
        raise ValueError(f"{activation} needs activation_alpha >= 0, got {activation_alpha!r}")
    if d.dtype != BN_FLOAT64 and not abs(alpha) <= _FLT_MAX:
        raise ValueError(f"activation_alpha must be finite as a float32, got {activation_alpha!r}")
    d.act, d.act_alpha = act, alpha
    return 0


cdef GPUArray _residual(obj, GPUArray x, str what):
    """The residual z: x's shape and dtype (None: no residual)."""
    if obj is None:
        return None
    cdef GPUArray z = _like(obj, what, x)
    return z


cdef object _pdtype(const bn_desc* d):
    """The statistics/parameter dtype of the descriptor's data."""
    return np.float64 if d.dtype == BN_FLOAT64 else np.float32
