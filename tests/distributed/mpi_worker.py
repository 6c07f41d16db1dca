"""One rank of the MPI tests (started by test_mpi_sync.py under mpiexec, each rank with its own software
GPU). Runs every scenario in order and pickles what it saw to OUT/rank<r>.pkl; the test checks it."""
import os
import pickle
import sys
import time

os.environ.setdefault("CYBN_DEVICE", "softgpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from cybn import softgpu  # noqa: E402

softgpu.load()
import cybn  # noqa: E402
from cybn.distributed import (CommunicatorTimeout, MPICommunicator, RankMismatchError,  # noqa: E402
                              call_header, sync_moments, sync_sums)
from dist_cases import C, CASES, local_moments, rank_rows  # noqa: E402

out_dir = sys.argv[1]
world = MPI.COMM_WORLD
rank, size = world.rank, world.size
comm = MPICommunicator(timeout=60.0)
short = MPICommunicator(world.Dup(), timeout=1.0)  # the timeout scenario's own communicator
short_bn = MPICommunicator(world.Dup(), timeout=1.0)  # and that of the forward_train one
res = {"rank": rank, "size": size}


def moments(case, device):
    n, m, v = local_moments(rank_rows(size, rank, case))
    if device:
        m, v = cybn.to_gpu(m), cybn.to_gpu(v)
    return sync_moments(comm, n, m, v, dtype=np.float32, layout="spatial")


# 1. host partials, twice (determinism); 2. device partials staged through pinned memory
for case, *_ in CASES:
    res[f"host/{case}"] = moments(case, False)
    res[f"host2/{case}"] = moments(case, False)
    res[f"device/{case}"] = moments(case, True)

# 3. raw device collectives on a stream: allgather and allreduce of float32
s = cybn.Stream()
mine = (np.arange(7, dtype=np.float32) + 0.1) * (rank + 1) ** 3
dg = comm.allgather(cybn.to_gpu(mine, stream=s), stream=s)
res["allgather"] = dg.get(stream=s)
res["allreduce"] = comm.allreduce(cybn.to_gpu(mine, stream=s), stream=s).get(stream=s)
res["allreduce_host"] = comm.allreduce(mine.copy())
x = rank_rows(size, rank, "plain")  # the backward's 2 x C sums, from the device
res["sums"] = sync_sums(comm, cybn.to_gpu(np.stack([x.sum(0), (x * x).sum(0)])), dtype=np.float16,
                        layout="spatial")

# 3b. SyncBatchNorm through the functional API (forward_train / backward with comm=): every dtype, run twice
from sync_bn_cases import COUNTS as COUNTS_BN, DTYPES, EPS, FACTOR, STEPS, params, rank_data  # noqa: E402
import cybn.batchnorm  # noqa: E402


def sync_bn_run(dtype):
    gs, gb, rm, rv = (cybn.to_gpu(a) for a in params(dtype))
    steps = []
    for step in range(STEPS):
        x, dy = rank_data(size, rank, dtype, step)
        gx, gdy = cybn.to_gpu(x), cybn.to_gpu(dy)
        y, sm, si = cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm)
        dx, ds, db = cybn.batchnorm.backward(gx, gdy, gs, sm, si, comm=comm)
        steps.append({"y": y.get(), "rm": rm.get(), "rv": rv.get(), "dx": dx.get(), "ds": ds.get(), "db": db.get()})
    return steps


for dt in DTYPES:
    res[f"sbn/{dt}"] = sync_bn_run(dt)
    res[f"sbn2/{dt}"] = sync_bn_run(dt)

# 3b'. the fused epilogue through comm=: y = act(bn(x) + z), backward through act with dz
from sync_bn_cases import EPI_DTYPES, EPILOGUES, epilogue_data  # noqa: E402

for dt in EPI_DTYPES:
    for k, (act, with_z, pass_y) in enumerate(EPILOGUES):
        gs, gb, rm, rv = (cybn.to_gpu(a) for a in params(dt))
        x, dy = rank_data(size, rank, dt, 0)
        gx, gdy = cybn.to_gpu(x), cybn.to_gpu(dy)
        gz = cybn.to_gpu(epilogue_data(size, rank, dt, k)) if with_z else None
        y, sm, si = cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm, activation=act,
                                                 residual=gz)
        got = cybn.batchnorm.backward(gx, gdy, gs, sm, si, comm=comm, activation=act, y=y if pass_y else None,
                                      residual=gz if with_z else False, bias=gb)
        r = {"y": y.get(), "rm": rm.get(), "rv": rv.get(), "dx": got[0].get(), "ds": got[-2].get(),
             "db": got[-1].get()}
        if with_z:
            r["dz"] = got[1].get()
        res[f"epi/{dt}/{k}"] = r

# 3b''. refused calls: the same error on every rank (a rank of 0 samples too), nothing changed anywhere
from cybn.distributed import DistributedError  # noqa: E402

zero = COUNTS_BN[size].index(min(COUNTS_BN[size]))  # the rank with the fewest samples (0 from 3 ranks on)


def refused(name, call):
    gs, gb, rm, rv = (cybn.to_gpu(a) for a in params())
    x, dy = rank_data(size, rank, "float32", 0)
    before = (rm.get(), rv.get())
    try:
        call(cybn.to_gpu(x), cybn.to_gpu(dy), gs, gb, rm, rv)
        out = None
    except (DistributedError, TypeError, ValueError) as exc:
        out = f"{type(exc).__name__}: {exc}"
    res[f"refused/{name}"] = {"error": out, "unchanged": all(a.tobytes() == b.get().tobytes()
                                                            for a, b in zip(before, (rm, rv)))}


def fwd(**kw):
    return lambda gx, gdy, gs, gb, rm, rv: cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm,
                                                                        **kw)


mine = rank == zero
refused("activation", fwd(activation="relu" if mine else "tanh"))
refused("alpha", fwd(activation="leaky_relu", activation_alpha=0.2 if mine else 0.1))


def residual_on_zero(gx, gdy, gs, gb, rm, rv):
    z = cybn.to_gpu(np.zeros(gx.shape, np.float32)) if mine else None
    return cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm, residual=z)


refused("residual", residual_on_zero)


def dtype_on_zero(gx, gdy, gs, gb, rm, rv):
    if mine:
        gx = cybn.to_gpu(gx.get().astype(np.float16))
    return cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm)


refused("dtype", dtype_on_zero)


def channels_on_zero(gx, gdy, gs, gb, rm, rv):
    if mine:
        n = gx.shape[0]
        gx = cybn.to_gpu(np.ones((n, C + 1) + tuple(gx.shape[2:]), np.float32))
        gs, gb, rm2, rv2 = (cybn.to_gpu(np.ones(C + 1, np.float32)) for _ in range(4))
        return cybn.batchnorm.forward_train(gx, gs, gb, rm2, rv2, EPS, FACTOR, comm=comm)
    return cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm)


refused("channels", channels_on_zero)
refused("bad_name", fwd(activation="bogus" if mine else None))


def backward_activation(gx, gdy, gs, gb, rm, rv):
    y, sm, si = cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm, activation="tanh")
    rm.set(params()[2]), rv.set(params()[3])  # the forward's update undone: "unchanged" checks the backward
    return cybn.batchnorm.backward(gx, gdy, gs, sm, si, comm=comm, activation=None if mine else "tanh", y=None if
                                   mine else y, bias=gb)


refused("backward", backward_activation)
res["after_refused"] = sync_bn_run("float32")[:1]  # the communicator goes on working

# 3c. the faces, float32, one step: PuzzleLib-style SyncBatchNorm2D (scale 1, bias 0, factor 1 at the first
# step) and Paddle's SyncBatchNorm (momentum 0.5: factor 0.5, biased running variance), direct and converted
from cybn.modules import SyncBatchNorm2D  # noqa: E402
from cybn.paddle import BatchNorm as PaddleBatchNorm, SyncBatchNorm as PaddleSyncBatchNorm  # noqa: E402

x, dy = rank_data(size, rank, "float32", 0)
gx, gdy = cybn.to_gpu(x), cybn.to_gpu(dy)
mod = SyncBatchNorm2D(x.shape[1], comm, sscale=0.0)
mod(gx)
mod.backward(gdy)
res["face/puzzlelib"] = {"y": mod.data.get(), "dx": mod.grad.get(), "ds": mod.scalegrad.get().ravel(),
                         "db": mod.biasgrad.get().ravel(), "rm": mod.mean.get().ravel(), "rv": mod.var.get().ravel()}


def paddle_run(bn):
    y = bn(gx)
    dx = bn.backward(gdy)
    return {"y": y.get(), "dx": dx.get(), "ds": bn.weight.grad.get(), "db": bn.bias.grad.get(),
            "rm": bn._mean.value.get(), "rv": bn._variance.value.get()}


res["face/paddle"] = paddle_run(PaddleSyncBatchNorm(x.shape[1], momentum=0.5, comm=comm))
holder = {"layers": [PaddleBatchNorm(x.shape[1], momentum=0.5)]}
PaddleSyncBatchNorm.convert_sync_batchnorm(holder, comm)
res["face/paddle_converted_type"] = type(holder["layers"][0]).__name__
res["face/paddle_converted"] = paddle_run(holder["layers"][0])

# 4. a mismatched call: the last rank has one more channel; from 3 ranks on, rank 1 passes float16
n, m, v = local_moments(rank_rows(size, rank, "plain"))
if rank == size - 1:
    m, v = np.append(m, 0.0), np.append(v, 0.0)
try:
    sync_moments(comm, n, m, v, dtype=np.float16 if (rank == 1 and size >= 3) else np.float32, layout="spatial")
    res["mismatch"] = None
except RankMismatchError as exc:
    res["mismatch"] = str(exc)
res["after_mismatch"] = moments("plain", False)  # the communicator is still usable

# 5. the last rank "raises" before the collective: the others must time out, not hang
t0 = time.monotonic()
if rank == size - 1:
    res["timeout"] = "skipped"
else:
    try:
        sync_moments(short, n, m, v, dtype=np.float32, layout="spatial")
        res["timeout"] = None
    except CommunicatorTimeout as exc:
        res["timeout"] = str(exc)
    try:
        short.allgather(np.zeros(1))
    except Exception as exc:  # a timed-out communicator refuses further use
        res["after_timeout"] = f"{type(exc).__name__}: {exc}"
res["timeout_s"] = time.monotonic() - t0
# 5b. the same through SyncBatchNorm's forward: the others time out in the header exchange, changing nothing
if rank != size - 1:
    gs, gb, rm, rv = (cybn.to_gpu(a) for a in params())
    x, _ = rank_data(size, rank, "float32", 0)
    try:
        cybn.batchnorm.forward_train(cybn.to_gpu(x), gs, gb, rm, rv, EPS, FACTOR, comm=short_bn)
        res["timeout_bn"] = None
    except CommunicatorTimeout as exc:
        res["timeout_bn"] = str(exc)
    res["timeout_bn_unchanged"] = rm.get().tobytes() == params()[2].tobytes() and rv.get().tobytes() == \
        params()[3].tobytes()
world.Barrier()
if rank == size - 1:  # join late, so that the others' abandoned header exchanges complete before MPI_Finalize
    short.exchange_header(call_header(C, np.float32, "spatial", "moments"))
    short_bn.exchange_header(call_header(C, np.float32, "spatial", "forward"))
world.Barrier()  # the others' MPI progress (here) completes their side of it

with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(res, f)
