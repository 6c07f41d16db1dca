"""Global-memory traffic of one BatchNorm call, from the software GPU's exact counters."""
import numpy as np

from cybn import batchnorm, gpuarray, softgpu

# Ideal bytes per element in units of the element size: forward reads x and writes y (2); backward
# reads x and dy and writes dx (3); inference reads x and writes y (2).
# "backward_acc": the backward accumulating its parameter gradients (alpha 0.5, beta 0.9): same bars.
IDEAL = {"forward_train": 2, "backward": 3, "backward_acc": 3, "forward_infer": 2}
BAR = {"forward_train": 3, "backward": 5, "backward_acc": 5, "forward_infer": 2}  # 12, 20, 8 B for fp32
MAX_LAUNCHES = {"forward_train": 2, "backward": 2, "backward_acc": 2, "forward_infer": 1}


# Besides the element streams, each (statistic, CTA, launch) of the plan moves a few dozen bytes: its
# scale, bias and statistics, the running-average update, and in split plans the Welford partials,
# their combination and the second launch's constants. Allowed on top of the bar: 64 B each. A cooperative
# backward counts as two launches here (it does at a barrier the combination a split does between its two,
# and its wait polls the counter), and its CTAs each read all P partials of their column (P^2 per statistic:
# L2-resident, read in parallel after the barrier, so one round trip instead of the last CTA's merge and a
# second one to hand its total out), which are allowed on top as well.
PER_STAT_CTA = 64
COOP_PARTIAL = 24  # bytes of one backward partial (BN_BWD_PART float32 values)


def _stats(shape, mode, layout):
    """Statistics of a call: C (channel axis 1, or last with layout NHWC) or F = prod(shape[1:])."""
    if mode != "spatial":
        return int(np.prod(shape[1:]))
    return shape[-1] if layout == "NHWC" else shape[1]


def allowance(shape, mode="spatial", dtype=np.float32, op="forward_train", launches=1, layout="NCHW"):
    """Bytes per element allowed: the bar plus the per-(statistic, CTA, launch) allowance."""
    K = _stats(shape, mode, layout)
    plan = batchnorm.plan(shape, dtype, mode, op.replace("_acc", ""), layout=layout)
    P, coop = plan["split"], plan["coop"]
    extra = PER_STAT_CTA * K * P * launches
    if coop:
        extra += PER_STAT_CTA * K * P + COOP_PARTIAL * K * P * P
    return BAR[op] * np.dtype(dtype).itemsize + extra / int(np.prod(shape))


def measure_call(shape, dtype=np.float32, mode="spatial", op="forward_train", seed=0, layout="NCHW"):
    """(bytes per element, launches) of one call on random data (the inputs are uploaded outside the
    measured block); layout "NHWC": shape is (N, *spatial, C)."""
    rng = np.random.default_rng(seed)
    K = _stats(shape, mode, layout)
    x = gpuarray.to_gpu(rng.standard_normal(shape).astype(dtype))
    dy = gpuarray.to_gpu(rng.standard_normal(shape).astype(dtype))
    scale, bias, rm = (gpuarray.to_gpu(rng.standard_normal(K).astype(np.float32)) for _ in range(3))
    rv = gpuarray.to_gpu(rng.uniform(0.5, 2, K).astype(np.float32))
    outs = [gpuarray.empty(shape, dtype)] + [gpuarray.empty((K,), np.float32) for _ in range(2)]
    acc = [gpuarray.to_gpu(rng.standard_normal(K).astype(np.float32)) for _ in range(2)]  # gradients to accumulate into
    batchnorm.prepare(dtype, mode, layout)  # compile/load outside the measurement
    kw = dict(mode=mode, layout=layout)
    with softgpu.measure() as m:
        if op == "forward_train":
            batchnorm.forward_train(x, scale, bias, rm, rv, 1e-5, 0.1, out=outs[0], save_mean=outs[1],
                                    save_invstd=outs[2], **kw)
        elif op == "backward":
            batchnorm.backward(x, dy, scale, rm, rv, out=outs[0], scale_grad=outs[1], bias_grad=outs[2], **kw)
        elif op == "backward_acc":
            batchnorm.backward(x, dy, scale, rm, rv, out=outs[0], scale_grad=acc[0], bias_grad=acc[1], **kw,
                               scale_grad_alpha=0.5, scale_grad_beta=0.9, bias_grad_alpha=0.5, bias_grad_beta=0.9)
        else:
            batchnorm.forward_infer(x, scale, bias, rm, rv, 1e-5, out=outs[0], **kw)
    elements = int(np.prod(shape))
    return (m.load_bytes + m.store_bytes) / elements, m.launches_count
