"""Communication for SyncBatchNorm: a small communicator interface and its implementations over the
engines that already do the transport (MPI through mpi4py, torch.distributed, NCCL), plus the exact
cross-process combination of per-channel batch statistics.

Nothing here initialises anything behind the user's back: each communicator wraps a communicator or
process group the user chose (MPICommunicator(None) means mpi4py's COMM_WORLD, which importing mpi4py
initialises). Importing cybn.distributed imports none of mpi4py, torch or NCCL."""
import importlib

_EXPORTS = {
    "Communicator": "communicator",
    "MPICommunicator": "mpi", "TorchCommunicator": "torch_comm", "NCCLCommunicator": "nccl",
    "DistributedError": "errors", "CommunicatorTimeout": "errors", "RankMismatchError": "errors",
    "combine_moments": "stats", "sync_moments": "stats", "sync_sums": "stats", "call_header": "stats",
    "exchange_call": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    sub = _EXPORTS.get(name)
    if sub is None:
        raise AttributeError(f"module 'cybn.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{sub}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
