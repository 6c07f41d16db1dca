"""The exact cross-process combination of per-channel batch statistics (SyncBatchNorm's forward) and
of the backward's per-channel sums.

Each rank brings per-channel partials (count, mean, variance = M2 / count) from one pass over its own
slice. One header exchange checks that every rank makes the same call (C, dtype, layout, op); one
allgather of 3 x C float64 per rank brings every partial to every rank; Chan's pairwise formula folds
them in rank order 0, 1, ..., size-1 in float64. Every rank folds the same numbers in the same order, so
the result is deterministic and bitwise identical on all ranks. The variance form (not M2) keeps
values of std 1e17 from overflowing; a count may be 0 (that rank's mean and variance are ignored)."""
import zlib

import numpy as np

from cybn.distributed.errors import DistributedError, RankMismatchError

_MAGIC = 0x6379626E  # "cybn": a peer running another protocol shows up as a mismatch, not garbage
_VERSION = 2
# refused: 1 where that rank's own checks rejected its arguments (it raises its own error; the others a
# DistributedError naming it), so a rank that refuses a call never leaves the others waiting for it.
_FIELDS = ("protocol", "version", "C", "dtype", "layout", "op", "activation", "activation_alpha", "residual",
           "affine", "refused")
_REFUSED = _FIELDS.index("refused")
_NAMES = ("float16", "bfloat16", "float32", "float64", "spatial", "per_activation", "NCHW", "NHWC",
          "channels_first", "channels_last", "forward", "backward", "moments", "gradients", "none", "relu",
          "relu6", "clipped_relu", "leaky_relu", "elu", "sigmoid", "tanh", "swish", "silu")
_BY_CODE = {zlib.crc32(n.encode()): n for n in _NAMES}


def _code(value):
    """A stable int64 for a name (dtype, layout, op): the same on every rank and every run."""
    if isinstance(value, str):
        name = value
    else:
        try:
            name = np.dtype(value).name
        except TypeError:
            name = str(value)
    return zlib.crc32(name.encode())


def _show(field, code):
    if field in ("dtype", "layout", "op", "activation"):
        return _BY_CODE.get(int(code), f"#{int(code):08x}")
    if field == "activation_alpha":
        return repr(float(np.array(code, np.int64).view(np.float64)))
    return str(int(code))


def call_header(channels, dtype, layout, op, *, activation=None, activation_alpha=0.0, residual=False,
                affine=True, refused=False):
    """The header a rank sends before a SyncBatchNorm collective (int64 values): the call's channel count,
    dtype, layout (or mode), op and fused epilogue (activation name, its alpha as float64 bits, residual or
    not), affine or not, and whether this rank refused its own arguments."""
    alpha = np.array(float(activation_alpha), np.float64).view(np.int64)
    act = "none" if activation is None else str(activation).lower()
    return np.array([_MAGIC, _VERSION, int(channels), _code(dtype), _code(layout), _code(op), _code(act), alpha,
                     int(bool(residual)), int(bool(affine)), int(bool(refused))], np.int64)


def check_headers(headers):
    """Raise unless every row of `headers` (size x fields) is the same: DistributedError naming the ranks that
    refused their own arguments, else RankMismatchError naming every differing field. The message is built
    from the gathered rows only, so every rank raises the same one."""
    headers = np.asarray(headers)
    if headers.shape[1] != len(_FIELDS) or not (headers[:, :2] == headers[0, :2]).all():
        raise RankMismatchError("SyncBatchNorm: the ranks run different cybn call-header protocols (protocol, version: "
                                + ", ".join(f"rank {r}={tuple(int(v) for v in row[:2])}"
                                            for r, row in enumerate(headers)) + "); run one cybn version on every rank")
    refused = [r for r in range(headers.shape[0]) if headers[r, _REFUSED]]
    if refused:
        raise DistributedError(f"SyncBatchNorm: rank(s) {', '.join(map(str, refused))} of {headers.shape[0]} refused "
                               f"the call's arguments (the error raised there says why); no rank has changed anything")
    if (headers == headers[0]).all():
        return
    parts = []
    for j, field in enumerate(_FIELDS):
        col = headers[:, j]
        if (col != col[0]).any():
            parts.append(f"{field}: " + ", ".join(f"rank {r}={_show(field, v)}" for r, v in enumerate(col)))
    raise RankMismatchError("SyncBatchNorm: the ranks disagree on the call (every rank must pass the same channel "
                            "count C, dtype, layout, op, activation, residual and affine-ness): " + "; ".join(parts) +
                            ". Fix the rank(s) whose values differ; no rank has changed anything")


def exchange_call(comm, header, refusal=None):
    """The header exchange before a SyncBatchNorm collective. refusal: the exception this rank's own checks
    raised (then a refused header is sent and that exception re-raised here, so the other ranks raise a
    DistributedError naming this rank instead of waiting for it); otherwise raises as check_headers."""
    if refusal is not None:
        row = call_header(0, "none", "none", "none", refused=True) if header is None else np.array(header)
        row[_REFUSED] = 1
        comm.exchange_header(row)
        raise refusal
    check_headers(comm.exchange_header(header))


def combine_moments(partials):
    """Fold per-rank partials, an array (ranks, 3, C) of (count, mean, variance) rows, with Chan's formula
    in rank order, in float64. Returns (count, mean, variance) per channel (variance biased: M2 / count;
    NaN for a channel with no values at all)."""
    p = np.asarray(partials, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] != 3:
        raise ValueError(f"combine_moments: partials must have shape (ranks, 3, C), got {p.shape}")
    if (p[:, 0] < 0).any() or not np.isfinite(p[:, 0]).all():
        raise ValueError("combine_moments: counts must be finite and not negative")
    n, m, v = (np.array(p[0, i]) for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for r in range(1, p.shape[0]):
            nb, mb, vb = p[r]
            tot = n + nb
            wa, wb = n / tot, nb / tot
            d = mb - m
            first, other = n == 0, nb == 0
            m = np.where(first, mb, np.where(other, m, m + d * wb))
            v = np.where(first, vb, np.where(other, v, wa * v + wb * vb + (wa * wb) * d * d))
            n = tot
        empty = n == 0
        m = np.where(empty, np.nan, m)
        v = np.where(empty, np.nan, v)
    return n, m, v


def sync_moments(comm, count, mean, variance, *, dtype, layout, op="moments", stream=None, header=None):
    """Combine this rank's per-channel (count, mean, variance) with every other rank's over `comm`.

    count: a scalar or a C-vector; mean, variance: C-vectors (numpy or GPUArray; variance = M2 / count,
    anything where count is 0). dtype, layout, op describe the call and go in the header, so a rank whose C,
    dtype or layout differs makes every rank raise the same RankMismatchError before any data moves.
    header=False: the caller has already exchanged the call's header (exchange_call). Returns float64 numpy
    (count, mean, variance) of the union of the ranks' values."""
    from cybn.distributed.communicator import _is_device
    host = [a.get(stream=stream) if _is_device(a) else np.asarray(a) for a in (mean, variance)]
    C = host[0].size
    if header is not False:
        check_headers(comm.exchange_header(call_header(C, dtype, layout, op)))
    row = np.empty((3, C), np.float64)
    row[0] = np.asarray(count, np.float64).ravel() if np.ndim(count) else float(count)
    row[1] = host[0].ravel()
    row[2] = host[1].ravel()
    return combine_moments(comm.allgather(row))


def sync_sums(comm, sums, *, dtype, layout, op="gradients", stream=None, header=None):
    """Sum per-channel partial sums over the ranks: `sums` is (k, C) (numpy or GPUArray; the backward's
    k = 2 rows sum(dy), sum(dy * xhat)). The same header check as sync_moments comes first; the sum is
    float64 in rank order (deterministic, identical on every rank); header=False as in sync_moments. Returns a
    float64 (k, C) array."""
    from cybn.distributed.communicator import _is_device
    local = np.asarray(sums.get(stream=stream) if _is_device(sums) else sums, dtype=np.float64)
    if local.ndim != 2:
        raise ValueError(f"sync_sums: sums must have shape (k, C), got {local.shape}")
    if header is not False:
        check_headers(comm.exchange_header(call_header(local.shape[1], dtype, layout, op)))
    return comm.allreduce(np.ascontiguousarray(local))
