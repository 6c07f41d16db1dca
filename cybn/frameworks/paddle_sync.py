"""Paddle's SyncBatchNorm (paddle.nn.SyncBatchNorm, 3.3.1, dygraph) and its convert_sync_batchnorm, on the
Paddle face's BatchNorm with a cybn.distributed communicator.

    from cybn.distributed import MPICommunicator
    from cybn.paddle import SyncBatchNorm
    bn = SyncBatchNorm(16, comm=MPICommunicator())
    y = bn(x)                          # statistics over every rank's x (uneven batches, 0 or 1 samples too)
    dx = bn.backward(dy)               # gradient sums over every rank; weight.grad / bias.grad accumulate

Paddle takes its process group from paddle.distributed's global environment; cybn initialises nothing
behind the caller's back, so the communicator is a required keyword (`comm=`). Semantics otherwise as the
face's BatchNorm: factor = 1 - momentum, the biased batch variance into _variance (Paddle's sync_batch_norm
kernel keeps that convention), eval() local with the running statistics (the same on every rank)."""
from cybn.frameworks.paddle import BatchNorm

# Paddle's data_format names: channel second (C first after N) or channel last.
_FORMATS = {"NC": "NCHW", "NCL": "NCHW", "NCHW": "NCHW", "NCDHW": "NCHW", "NLC": "NHWC", "NHWC": "NHWC",
            "NDHWC": "NHWC"}


def _check_comm(comm, what):
    from cybn.distributed.communicator import Communicator
    if not isinstance(comm, Communicator):
        raise TypeError(f"{what}: comm must be a cybn.distributed communicator (MPICommunicator(), "
                        f"TorchCommunicator(group), NCCLCommunicator()), got {type(comm).__name__}")
    return comm


class SyncBatchNorm(BatchNorm):
    """paddle.nn.SyncBatchNorm(num_features, momentum=0.9, epsilon=1e-05, weight_attr=None, bias_attr=None,
    data_format='NCHW', name=None, *, comm)."""

    def __init__(self, num_features, momentum=0.9, epsilon=1e-05, weight_attr=None, bias_attr=None,
                 data_format="NCHW", name=None, *, comm):
        _check_comm(comm, "SyncBatchNorm")
        if data_format not in _FORMATS:
            raise ValueError(f"SyncBatchNorm: data_format must be one of {', '.join(_FORMATS)}, got {data_format!r}")
        super().__init__(num_features, momentum=momentum, epsilon=epsilon, param_attr=weight_attr,
                         bias_attr=bias_attr, data_layout=_FORMATS[data_format])
        self._comm = comm
        self._name = name

    @classmethod
    def convert_sync_batchnorm(cls, layer, comm):
        """A BatchNorm becomes a SyncBatchNorm sharing its weight, bias, _mean and _variance Tensors (and
        momentum, epsilon, layout, stop_gradient); in a list, tuple, dict or an object's attributes every
        BatchNorm is replaced, recursively. Returns the converted layer (the same object for containers and
        objects, changed in place, as Paddle's)."""
        _check_comm(comm, "convert_sync_batchnorm")
        return _convert(cls, layer, comm, set())


def _convert(cls, layer, comm, seen):
    if isinstance(layer, BatchNorm) and not isinstance(layer, SyncBatchNorm):
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        new._comm, new._name, new._saved = comm, None, None
        return new
    if id(layer) in seen or isinstance(layer, (str, bytes, int, float, SyncBatchNorm)) or layer is None:
        return layer
    seen.add(id(layer))
    if isinstance(layer, list):
        layer[:] = [_convert(cls, v, comm, seen) for v in layer]
    elif isinstance(layer, tuple):
        return type(layer)(_convert(cls, v, comm, seen) for v in layer)
    elif isinstance(layer, dict):
        for k in list(layer):
            layer[k] = _convert(cls, layer[k], comm, seen)
    elif hasattr(layer, "__dict__") and not isinstance(layer, type):
        for k, v in list(vars(layer).items()):
            setattr(layer, k, _convert(cls, v, comm, seen))
    return layer
