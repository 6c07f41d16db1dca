"""The communicator interface SyncBatchNorm needs: allgather and allreduce of a host (numpy) or device
(GPUArray) buffer on a stream, and a small header exchange.

A subclass provides one primitive, an allgather of host arrays (`_allgather_host`) and/or of device
arrays (`_allgather_device`); this class stages between the two through page-locked buffers and the
caller's stream. allreduce is an allgather followed by a sum in rank order 0, 1, ..., size-1 on every
rank, so its result is deterministic and bitwise identical on all ranks (MPI's and NCCL's reductions
promise neither); the buffers SyncBatchNorm reduces hold 2-3 x C values, so the gather costs nothing."""
import time

import numpy as np

from cybn.distributed.errors import CommunicatorTimeout, DistributedError


def _is_device(a):
    from cybn.array.gpuarray import GPUArray
    return isinstance(a, GPUArray)


def _stream_object(stream):
    from cybn.driver.stream import Stream, current_stream
    if stream is None:
        return current_stream()
    if isinstance(stream, Stream):
        return stream
    if isinstance(stream, int):
        return Stream.external(stream)
    raise TypeError(f"stream must be a cybn Stream, a CUstream int or None, got {type(stream).__name__}")


class Communicator:
    """Base of MPICommunicator, TorchCommunicator and NCCLCommunicator. rank, size: this process's place
    in the group; timeout: seconds a collective waits for the other ranks (None: forever) where the
    transport can poll, after which it raises CommunicatorTimeout and the communicator is unusable."""

    has_host = True      # _allgather_host works on numpy arrays
    has_device = False   # _allgather_device works on GPUArrays (CUDA-aware MPI, NCCL)

    def __init__(self, rank, size, timeout):
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        self.rank = int(rank)
        self.size = int(size)
        self.timeout = None if timeout is None else float(timeout)
        self._broken = None   # why the communicator cannot be used again (a collective left pending)
        self._pinned = None   # staging buffer, grown as needed
        self._staged = None   # event after the last upload from _pinned: wait before rewriting it

    # ------------------------------------------------------------------ the interface
    def allgather(self, send, recv=None, stream=None):
        """Gather every rank's `send` (a C-contiguous numpy array or GPUArray, the same shape and dtype on
        every rank) into `recv` of shape (size,) + send.shape (same kind and dtype; allocated if None),
        row r from rank r. Device buffers: ordered after the work queued on `stream`, and the result is
        ready for work queued on it afterwards. Returns recv."""
        self._check_usable()
        device = _is_device(send)
        recv = self._recv_for(send, recv, device)
        if send.size == 0:
            return recv
        if device and self.has_device:
            s = _stream_object(stream)
            self._allgather_device(send, recv, s)
        elif device:
            self._staged_allgather(send, recv, _stream_object(stream))
        elif self.has_host:
            self._allgather_host(np.ascontiguousarray(send), recv)
        else:
            self._uploaded_allgather(send, recv, _stream_object(stream))
        return recv

    def allreduce(self, buf, stream=None):
        """Sum `buf` (numpy array or GPUArray) over the ranks in place, in rank order (deterministic,
        identical on every rank). Returns buf."""
        gathered = self.allgather(buf, stream=stream)
        if _is_device(buf):
            host = gathered.get(stream=stream)
            buf.set(_sum_in_rank_order(host).astype(buf.dtype, copy=False), stream=stream)
        else:
            buf[...] = _sum_in_rank_order(gathered)
        return buf

    def exchange_header(self, values):
        """Allgather a few integers (host, int64): returns an array (size, len(values)), row r from
        rank r. SyncBatchNorm sends its call header through this before any data."""
        row = np.ascontiguousarray(np.asarray(values, dtype=np.int64).ravel())
        return self.allgather(row)

    # ------------------------------------------------------------------ for subclasses
    def _allgather_host(self, send, recv):
        raise NotImplementedError

    def _allgather_device(self, send, recv, stream):
        raise NotImplementedError

    def _wait(self, done, what):
        """Poll `done()` until it is true or the timeout passes (then the communicator is marked
        unusable: a started collective cannot be cancelled, and its buffers stay the transport's)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pause = 1e-5
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                self._broken = (f"a {what} timed out after {self.timeout:g} s and is still pending in the "
                                f"transport")
                raise CommunicatorTimeout(
                    f"{type(self).__name__}.{what}: rank {self.rank} of {self.size} waited {self.timeout:g} s "
                    f"for the other ranks to join (one may have raised before the collective, or be slower than "
                    f"timeout=); this communicator cannot be used again: end the job (e.g. MPI Abort) or "
                    f"create the communicator with a larger timeout")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    # ------------------------------------------------------------------ helpers
    def _check_usable(self):
        if self._broken is not None:
            raise DistributedError(f"{type(self).__name__}: this communicator cannot be used again: "
                                   f"{self._broken}")

    def _recv_for(self, send, recv, device):
        shape = (self.size,) + tuple(send.shape)
        if recv is None:
            if device:
                from cybn.array.gpuarray import empty
                return empty(shape, send.dtype)
            return np.empty(shape, send.dtype)
        if _is_device(recv) != device:
            raise TypeError(f"allgather: send is a {type(send).__name__} but recv is a {type(recv).__name__}; "
                            f"pass two numpy arrays or two GPUArrays")
        if tuple(recv.shape) != shape or recv.dtype != send.dtype:
            raise ValueError(f"allgather: recv must have shape {shape} and dtype {send.dtype} "
                             f"(size x send), got {tuple(recv.shape)} {recv.dtype}")
        if not device and not (recv.flags.c_contiguous and recv.flags.writeable):
            raise ValueError("allgather: recv must be a writeable C-contiguous numpy array")
        return recv

    def _staging(self, nbytes):
        """The pinned staging buffer (at least nbytes), free to rewrite."""
        from cybn.driver.memory import PinnedBuffer
        if self._staged is not None:
            self._staged.synchronize()  # the previous upload from it has finished
            self._staged = None
        if self._pinned is None or self._pinned.nbytes < nbytes:
            self._pinned = PinnedBuffer(max(nbytes, 4096))
        return self._pinned

    def _staged_allgather(self, send, recv, stream):
        # Device -> pinned (on the stream), collective on the host, pinned -> device (on the stream).
        from cybn.driver.event import Event
        pinned = self._staging(send.nbytes + recv.nbytes)
        hs = pinned.array(np.uint8, send.nbytes).view(send.dtype).reshape(send.shape)
        hr = pinned.array(np.uint8, send.nbytes + recv.nbytes)[send.nbytes:].view(recv.dtype).reshape(recv.shape)
        send.get(hs, stream=stream, async_=True)
        stream.synchronize()
        self._allgather_host(hs, hr)
        recv.set(hr, stream=stream, async_=True)
        self._staged = Event(timing=False).record(stream)

    def _uploaded_allgather(self, send, recv, stream):
        # A device-only transport given host arrays: through temporary device buffers.
        from cybn.array.gpuarray import empty, to_gpu
        dsend = to_gpu(np.ascontiguousarray(send), stream=stream)
        drecv = empty(recv.shape, recv.dtype, stream=stream)
        self._allgather_device(dsend, drecv, stream)
        drecv.get(recv, stream=stream)

    def close(self):
        """Release staging memory (the wrapped communicator or group stays the user's)."""
        if self._staged is not None:
            self._staged.synchronize()
        self._staged = self._pinned = None

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


def _sum_in_rank_order(gathered):
    acc = np.array(gathered[0], copy=True)
    for r in range(1, gathered.shape[0]):
        acc += gathered[r]
    return acc
