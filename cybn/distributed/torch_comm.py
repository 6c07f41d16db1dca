"""TorchCommunicator: collectives over a torch.distributed process group the user created."""
import datetime

import numpy as np

from cybn.distributed.communicator import Communicator
from cybn.distributed.errors import CommunicatorTimeout, DistributedError


class TorchCommunicator(Communicator):
    """TorchCommunicator(group=None, *, timeout=None).

    group: a torch.distributed ProcessGroup (None: the default group, which the user must already have
    created with init_process_group: cybn initialises nothing). Buffers travel as CPU tensors sharing
    the numpy staging memory (gloo, mpi backends); device buffers are staged through pinned memory on
    the caller's stream. An nccl-backend group wants CUDA tensors: use NCCLCommunicator for that. timeout
    (seconds; None: the group's own timeout from init_process_group) bounds each collective's wait."""

    def __init__(self, group=None, *, timeout=None):
        try:
            import torch
            import torch.distributed as dist
        except ImportError as exc:
            raise DistributedError(f"TorchCommunicator needs torch ({exc})") from None
        if not dist.is_available() or not dist.is_initialized():
            raise DistributedError("TorchCommunicator: torch.distributed is not initialised; call "
                                   "torch.distributed.init_process_group(...) first (cybn initialises nothing)")
        backend = str(dist.get_backend(group)).lower()
        if backend == "nccl":
            raise DistributedError("TorchCommunicator: the group's backend is nccl, which cannot take the CPU "
                                   "tensors this communicator stages through; use a gloo group or "
                                   "cybn.distributed.NCCLCommunicator")
        super().__init__(dist.get_rank(group), dist.get_world_size(group), timeout)
        self._torch, self._dist, self.group = torch, dist, group

    def _allgather_host(self, send, recv):
        torch = self._torch
        # as bytes: any numpy dtype travels (torch has no ml_dtypes bfloat16); views, so results land in recv
        outs = [torch.from_numpy(recv[r].reshape(-1).view(np.uint8)) for r in range(self.size)]
        work = self._dist.all_gather(outs, torch.from_numpy(send.reshape(-1).view(np.uint8)), group=self.group,
                                     async_op=True)
        try:
            if self.timeout is None:
                work.wait()
            else:
                work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except RuntimeError as exc:
            if "timed out" not in str(exc).lower() and "timeout" not in str(exc).lower():
                raise
            self._broken = f"an allgather timed out: {exc}"
            raise CommunicatorTimeout(f"TorchCommunicator.allgather: rank {self.rank} of {self.size} timed out "
                                      f"waiting for the other ranks ({exc}); this communicator cannot be used "
                                      f"again") from None
