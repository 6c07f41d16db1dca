"""One rank of the channels-last SyncBatchNorm MPI test (test_sync_nhwc.py runs it under mpiexec, each rank with
its own software GPU): forward_train and backward with comm= and layout="NHWC" for every scenario and dtype of
sync_nhwc_cases.py, each run twice (determinism); pickles what it saw to OUT/rank<r>.pkl."""
import os
import pickle
import sys

os.environ.setdefault("CYBN_DEVICE", "softgpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpi4py import MPI  # noqa: E402

from cybn import softgpu  # noqa: E402

softgpu.load()
import cybn  # noqa: E402
import cybn.batchnorm as bn  # noqa: E402
from cybn.distributed import MPICommunicator  # noqa: E402
from sync_nhwc_cases import DTYPES, EPS, FACTOR, SCENARIOS, STEPS, params, rank_data  # noqa: E402

out_dir = sys.argv[1]
world = MPI.COMM_WORLD
rank, size = world.rank, world.size
comm = MPICommunicator(timeout=60.0)
res = {"rank": rank, "size": size}


def run(dtype, scenario):
    _, override, act, residual = SCENARIOS[scenario]
    gs, gb, rm, rv = (cybn.to_gpu(a) for a in params())
    steps = []
    for step in range(STEPS):
        x, dy, z = rank_data(size, rank, dtype, scenario, step)
        gx, gdy, gz = cybn.to_gpu(x), cybn.to_gpu(dy), None if z is None else cybn.to_gpu(z)
        with bn.plan_override(**override):
            y, sm, si = bn.forward_train(gx, gs, gb, rm, rv, EPS, FACTOR, layout="NHWC", activation=act,
                                         residual=gz, comm=comm)
            outs = bn.backward(gx, gdy, gs, sm, si, layout="NHWC", activation=act, y=y if act or residual else None,
                               residual=residual, bias=gb, comm=comm)
        dx, ds, db = outs[0], outs[-2], outs[-1]
        got = {"y": y.get(), "rm": rm.get(), "rv": rv.get(), "dx": dx.get(), "ds": ds.get(), "db": db.get()}
        if residual:
            got["dz"] = outs[1].get()
        steps.append(got)
    return steps


for scenario in SCENARIOS:
    for dt in DTYPES:
        res[f"{scenario}/{dt}"] = run(dt, scenario)
        res[f"{scenario}/{dt}/again"] = run(dt, scenario)

with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(res, f)
