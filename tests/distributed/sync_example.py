import numpy as np

import cybn
from cybn.distributed import MPICommunicator, sync_moments

comm = MPICommunicator()  # mpi4py's COMM_WORLD; each collective waits at most timeout=300 s
rng = np.random.default_rng(comm.rank)
x = rng.standard_normal((comm.rank, 4))  # uneven slices: rank r has r rows (rank 0 none)
mean, var = cybn.to_gpu(x.mean(0) if len(x) else np.zeros(4)), cybn.to_gpu(x.var(0) if len(x) else np.zeros(4))
n, mean, var = sync_moments(comm, len(x), mean, var, dtype=np.float32, layout="spatial")
print(f"rank {comm.rank}: n={n[0]:g} mean={mean.tolist()} var={var.tolist()}")
