import numpy as np

import cybn
import cybn.batchnorm
from cybn.distributed import MPICommunicator

comm = MPICommunicator()  # mpi4py's COMM_WORLD; each collective waits at most timeout=300 s
rng = np.random.default_rng(comm.rank)
n = comm.rank  # uneven slices: rank r has r samples (rank 0 none, rank 1 one)
x = cybn.to_gpu(rng.standard_normal((n, 4, 3)).astype(np.float32))
scale, bias = cybn.to_gpu(np.ones(4, np.float32)), cybn.to_gpu(np.zeros(4, np.float32))
mean, var = cybn.to_gpu(np.zeros(4, np.float32)), cybn.to_gpu(np.ones(4, np.float32))
y, save_mean, save_invstd = cybn.batchnorm.forward_train(x, scale, bias, mean, var, 1e-5, 1.0, comm=comm)
dy = cybn.to_gpu(np.ones((n, 4, 3), np.float32))
dx, dscale, dbias = cybn.batchnorm.backward(x, dy, scale, save_mean, save_invstd, comm=comm)
print(f"rank {comm.rank}: mean={mean.get().tolist()} var={var.get().tolist()} dbias={dbias.get().tolist()}")
