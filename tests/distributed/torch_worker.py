"""One rank of the torch.distributed (gloo) test: started by test_torch_gloo.py as a plain process per rank,
each with its own software GPU; a SyncBatchNorm training step through TorchCommunicator, pickled for the test."""
import os
import pickle
import sys

os.environ.setdefault("CYBN_DEVICE", "softgpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cybn import softgpu  # noqa: E402

softgpu.load()
import cybn  # noqa: E402
import cybn.batchnorm  # noqa: E402
from cybn.distributed import RankMismatchError, TorchCommunicator  # noqa: E402
from sync_bn_cases import EPS, FACTOR, STEPS, params, rank_data  # noqa: E402

rank, size, init, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=size)
comm = TorchCommunicator(timeout=60.0)  # the default group, created above by the user (this script)
res = {"rank": comm.rank, "size": comm.size, "steps": []}
gs, gb, rm, rv = (cybn.to_gpu(a) for a in params())
for step in range(STEPS):
    x, dy = rank_data(size, rank, "float32", step)
    gx, gdy = cybn.to_gpu(x), cybn.to_gpu(dy)
    y, sm, si = cybn.batchnorm.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, comm=comm)
    dx, ds, db = cybn.batchnorm.backward(gx, gdy, gs, sm, si, comm=comm)
    res["steps"].append({"y": y.get(), "rm": rm.get(), "rv": rv.get(), "dx": dx.get(), "ds": ds.get(), "db": db.get()})
x, _ = rank_data(size, rank, "float32", 0)
if rank == size - 1:  # one more channel on the last rank: every rank raises the same error
    x = np.concatenate([x, x[:, :1]], axis=1)
p = [cybn.to_gpu(np.ones(x.shape[1], np.float32)) for _ in range(2)]
try:
    cybn.batchnorm.forward_train(cybn.to_gpu(x), None, None, p[0], p[1], EPS, FACTOR, comm=comm)
    res["mismatch"] = None
except RankMismatchError as exc:
    res["mismatch"] = str(exc)
dist.barrier()
dist.destroy_process_group()
with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(res, f)
