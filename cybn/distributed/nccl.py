"""NCCLCommunicator: device-to-device collectives through libnccl (the nvidia-nccl-cu13 wheel), on real
GPUs only. UNTESTED on a GPU: no machine of this project has run it yet.

The binding is ctypes over five C calls (ncclGetUniqueId, ncclCommInitRank, ncclAllGather,
ncclCommDestroy, ncclGetErrorString). cuda-python has no NCCL binding, and the Python bindings that
exist come with a large framework (CuPy, torch); NCCL's C ABI for these calls has been stable since 2.x."""
import ctypes
import importlib
import os

from cybn.distributed.communicator import Communicator
from cybn.distributed.errors import DistributedError

_UNIQUE_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES in nccl.h
_NCCL_UINT8 = 1         # ncclUint8: the gather moves bytes, whatever the dtype


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * _UNIQUE_ID_BYTES)]


def _load(library):
    if library is None:
        try:
            pkg = importlib.import_module("nvidia.nccl")
            candidates = [os.path.join(p, "lib", "libnccl.so.2") for p in pkg.__path__]
        except ImportError:
            candidates = []
        candidates.append("libnccl.so.2")
    else:
        candidates = [library]
    errors = []
    for path in candidates:
        if os.sep in path and not os.path.exists(path):
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as exc:
            errors.append(str(exc))
    raise DistributedError("NCCLCommunicator: libnccl.so.2 not found (pip install 'cybn[nccl]', i.e. the "
                           "nvidia-nccl-cu13 wheel, or pass library=PATH)" + (f": {errors}" if errors else ""))


class NCCLCommunicator(Communicator):
    """NCCLCommunicator(bootstrap=None, *, library=None).

    bootstrap: a Communicator (None: MPICommunicator()) that carries NCCL's unique id from rank 0 and the
    SyncBatchNorm call header (with its timeout); the collectives then run on the GPUs, in the caller's
    stream. library: a path to libnccl.so.2 (None: the nvidia-nccl wheel's, then the loader's). Host
    arrays go through temporary device buffers. NCCL has no wait to bound here, so a collective whose
    peers never come hangs on the stream: the header exchange over `bootstrap` before each SyncBatchNorm
    collective is what catches a rank that raised. Refused on the software GPU."""

    has_host = False
    has_device = True

    def __init__(self, bootstrap=None, *, library=None):
        from cybn import backend
        if backend.name() != "cuda":
            raise DistributedError("NCCLCommunicator needs a real NVIDIA GPU: cybn is running on its software GPU "
                                   "(CYBN_DEVICE=softgpu, or no CUDA device found), whose memory NCCL cannot "
                                   "reach; use MPICommunicator or TorchCommunicator (gloo), which stage "
                                   "through host memory")
        if bootstrap is None:
            from cybn.distributed.mpi import MPICommunicator
            bootstrap = MPICommunicator()
        if not isinstance(bootstrap, Communicator):
            raise TypeError(f"NCCLCommunicator: bootstrap must be a cybn.distributed communicator, got "
                            f"{type(bootstrap).__name__}")
        lib = _load(library)
        lib.ncclGetErrorString.restype = ctypes.c_char_p
        self._lib = lib
        import numpy as np
        uid = _UniqueId()
        if bootstrap.rank == 0:
            self._check(lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        mine = np.frombuffer(bytes(uid), np.uint8).copy()
        ids = bootstrap.allgather(mine)
        uid = _UniqueId.from_buffer_copy(ids[0].tobytes())
        super().__init__(bootstrap.rank, bootstrap.size, bootstrap.timeout)
        self.bootstrap = bootstrap
        from cybn.driver.device import get_device
        get_device()  # cybn's context is current on this thread: NCCL uses the current device
        self._comm = ctypes.c_void_p()
        self._check(lib.ncclCommInitRank(ctypes.byref(self._comm), ctypes.c_int(self.size), uid,
                                         ctypes.c_int(self.rank)), "ncclCommInitRank")

    def _check(self, rc, what):
        if rc != 0:
            msg = self._lib.ncclGetErrorString(rc).decode(errors="replace")
            raise DistributedError(f"NCCLCommunicator: {what} failed with {rc} ({msg})")

    def exchange_header(self, values):
        return self.bootstrap.exchange_header(values)

    def _allgather_device(self, send, recv, stream):
        self._check(self._lib.ncclAllGather(ctypes.c_void_p(send.ptr), ctypes.c_void_p(recv.ptr),
                                            ctypes.c_size_t(send.nbytes), ctypes.c_int(_NCCL_UINT8), self._comm,
                                            ctypes.c_void_p(stream.handle)), "ncclAllGather")

    def close(self):
        if getattr(self, "_comm", None) and self._comm.value:
            self._check(self._lib.ncclCommDestroy(self._comm), "ncclCommDestroy")
            self._comm = ctypes.c_void_p()
        super().close()
