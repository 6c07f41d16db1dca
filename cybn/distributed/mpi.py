"""MPICommunicator: collectives over an mpi4py communicator (the user's, or COMM_WORLD)."""
from cybn.distributed.communicator import Communicator
from cybn.distributed.errors import CommunicatorTimeout, DistributedError


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"MPICommunicator needs mpi4py and an MPI library ({exc}): "
                               f"pip install 'cybn[mpi]' (mpi4py and the mpich wheel)") from None
    return MPI


class MPICommunicator(Communicator):
    """MPICommunicator(comm=None, *, timeout=300.0, cuda_aware=None).

    comm: an mpi4py communicator (None: MPI.COMM_WORLD). Collectives are nonblocking MPI requests
    polled against `timeout` seconds, so a rank that raised before a collective makes the others raise
    CommunicatorTimeout instead of hanging. Device buffers are staged through pinned host memory on the
    caller's stream, unless cuda_aware (None: asked of the MPI through mpi4py's Query_cuda_support
    where it has one; never on the software GPU) lets MPI read device memory (untested here)."""

    def __init__(self, comm=None, *, timeout=300.0, cuda_aware=None):
        MPI = _mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"MPICommunicator: comm must be an mpi4py communicator, got {type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("MPICommunicator: comm is MPI.COMM_NULL")
        super().__init__(comm.Get_rank(), comm.Get_size(), timeout)
        self.comm = comm
        if cuda_aware is None:
            query = getattr(MPI, "Query_cuda_support", None)
            cuda_aware = bool(query()) if query is not None else False
        if cuda_aware:
            from cybn import backend
            cuda_aware = backend.name() == "cuda"  # the software GPU's memory is no real device memory
        self.cuda_aware = bool(cuda_aware)
        self.has_device = self.cuda_aware
        self._abandoned = []  # timed-out requests and their buffers: MPI may still write into them

    def _gather(self, send, recv):
        req = self.comm.Iallgather(send, recv)
        try:
            self._wait(req.Test, "allgather")
        except CommunicatorTimeout:
            self._abandoned.append((req, send, recv))
            raise

    def _allgather_host(self, send, recv):
        self._gather(send, recv)

    def _allgather_device(self, send, recv, stream):
        # CUDA-aware MPI reads __cuda_array_interface__ but does not order itself on our stream.
        stream.synchronize()
        self._gather(send, recv)
