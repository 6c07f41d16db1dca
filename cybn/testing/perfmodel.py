"""A latency-bandwidth (Little's law) model of BatchNorm calls on named GPUs. Every number it returns is
a MODEL output, never a measurement; bench/gpu_model.py prints it and bench/gpu_check.py prints it beside
real timings so it can be calibrated.

Model, per kernel launch:
- occupancy: CTAs per SM = min(max CTAs/SM, warps limit, register limit (per-warp allocation rounded up to
  256 registers, the register file split over 4 sub-partitions), shared-memory limit (1 KiB reserved per
  CTA)); resident slots = SMs x CTAs/SM; a grid runs in waves of that many CTAs, the last wave partial.
- bytes in flight per wave = resident CTAs x threads x bytes in flight per thread (independent global loads
  issued before the first use, read from the kernel's SASS loop structure by cybn.testing.cubin_report).
- achieved bandwidth by Little's law with a loaded-latency curve: BW = u x peak where u solves
  u x peak x L(u) = bytes in flight, L(u) = L0 / (1 - u**4): the unloaded DRAM latency L0 at low load,
  rising steeply as HBM nears its peak (queueing), so no finite amount in flight reaches 100 %.
- time = sum over waves of the wave's bytes / its BW, + launches x LAUNCH_US (+ MEMSET_US per memset,
  + BARRIER_US for a cooperative backward's column barrier).
Assumptions (stated in the README too): all traffic goes to DRAM (no L2 reuse between a split plan's two
launches or a fused kernel's re-read of x, which makes re-reads cost full price); bytes are spread evenly
over a grid's CTAs; issue rate, instruction latency and divergence are free (a kernel is modelled as
purely memory-bound); per-SM request limits are not modelled; clocks are at boost.
"""
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Device:
    name: str
    arch: str            # the CUBIN architecture whose register counts apply
    sms: int
    hbm_gbs: float       # HBM peak, GB/s (vendor figure)
    latency_ns: float    # unloaded DRAM latency L0 (assumed; pointer-chase figures lie near 450-700 ns)
    l2_mb: int
    max_warps_sm: int
    regs_sm: int
    max_ctas_sm: int
    smem_sm_kb: int


DEVICES = {
    "h100": Device("H100 SXM5 80GB (HBM3)", "sm_90", 132, 3350, 600, 50, 64, 65536, 32, 228),
    "h200": Device("H200 SXM 141GB (HBM3e)", "sm_90", 132, 4800, 600, 50, 64, 65536, 32, 228),
    "a100": Device("A100 SXM4 80GB (HBM2e)", "sm_80", 108, 2039, 600, 40, 64, 65536, 32, 164),
}
LAUNCH_US = 2.0   # per kernel launch back to back on one stream (launch + dependent-kernel gap), assumed
MEMSET_US = 1.0   # a small cuMemsetD32Async on the stream, assumed
BARRIER_US = LAUNCH_US  # a cooperative backward's column barrier, as much as a launch (assumed, unmeasured)
LATENCY_EXPONENT = 4

# Bytes per element of the 1-read limit, in units of the element size: forward-train and inference read x
# and write y; backward reads x and dy and writes dx.
IDEAL = {"forward_train": 2, "forward_infer": 2, "backward": 3}
OVERHEAD_PER_STAT_CTA = 48  # parameters, statistics and partials per (statistic, CTA, launch), approximate


def bandwidth(inflight_bytes, dev):
    """Achieved bytes/s with `inflight_bytes` outstanding device-wide (the latency curve above)."""
    peak, l0 = dev.hbm_gbs * 1e9, dev.latency_ns * 1e-9
    if inflight_bytes <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # u*peak*L0 = F*(1 - u**4): the left side rises, the right falls in u
        u = (lo + hi) / 2
        if u * peak * l0 < inflight_bytes * (1 - u ** LATENCY_EXPONENT):
            lo = u
        else:
            hi = u
    return lo * peak


def occupancy(threads, registers, smem_bytes, dev):
    """Resident CTAs per SM of a kernel (NVIDIA's calculator's rules, simplified as stated above)."""
    warps = -(-threads // 32)
    by_warps = dev.max_warps_sm // warps
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (4 * ((dev.regs_sm // 4) // per_warp)) // warps
    by_smem = (dev.smem_sm_kb * 1024) // (smem_bytes + 1024)
    return max(0, min(dev.max_ctas_sm, by_warps, by_regs, by_smem))


def launch_seconds(nbytes, ctas, threads, bytes_per_thread, ctas_per_sm, dev):
    """Memory time of one launch (no launch overhead): waves of resident CTAs, each at its Little's-law BW."""
    if nbytes <= 0 or ctas <= 0:
        return 0.0
    slots = max(1, dev.sms * max(ctas_per_sm, 1))
    full, rest = divmod(ctas, slots)
    per_cta = nbytes / ctas
    t = 0.0
    for resident, waves in ((slots, full), (rest, 1 if rest else 0)):
        if waves:
            bw = bandwidth(resident * threads * bytes_per_thread, dev)
            t += waves * resident * per_cta / bw
    return t


def _cdiv(a, b):
    return -(-a // b)


def _units_and_threads(shape, dtype, mode, plan):
    """(units per statistic, threads walking one statistic's units) of a plan."""
    N, S = shape[0], int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    if mode == "spatial":
        V = 16 // np.dtype(dtype).itemsize
        if plan["vec"] == 3:  # SPAN: a channel owns floor or ceil(S / V) units per row (the plan's count)
            return _cdiv(N * S, V), plan["block"][0]
        return N * (S // V if plan["vec"] else S), plan["block"][0]
    return N, plan["block"][1]


# ---------------------------------------------------------------- cybn's bytes per launch, from its plan
def _walk_counts(units, threads, P):
    """Units each thread of one statistic's CTA walks, for every CTA of the split: a list of counts."""
    chunk = _cdiv(units, P)
    counts = []
    for q in range(P):
        n = max(0, min(units, chunk * (q + 1)) - min(units, chunk * q))
        counts.extend(max(0, _cdiv(n - t, threads)) for t in range(min(threads, n)))
    return counts


def _reread_units(units, threads, cache, P=1):
    """Units a one-launch kernel (fused, or cooperative over P CTAs) reads twice: each thread's units past its
    cache_units slots."""
    return sum(max(0, k - cache) for k in _walk_counts(units, threads, P))


def _rowvec_edges(shape, dtype):
    """Scalar head + tail elements per channel of the N == 1 row-vector path (16-byte aligned tensor)."""
    z = np.dtype(dtype).itemsize
    S = int(np.prod(shape[2:], dtype=np.int64))
    V = 16 // z
    edges = 0
    for c in range(shape[1]):
        mis = (c * S * z) % 16
        h = min(S, (16 - mis) // z if mis else 0)
        edges += h + (S - h) % V
    return edges / shape[1]


# The row-major kernels' bytes per (statistic, CTA, launch) besides the element streams, in parameter-sized
# values (P: 4 bytes, 8 for float64), from the software GPU's counters: inference / a split's normalise 4 (mean,
# variance or constants, scale, bias), fused forward-train 9 (+ the shift sample, running statistics read and
# written, saved statistics), fused backward 5, a split's first launch 13 (forward) / 12.5 (backward; partials
# written, combined and the tail written, on top of the 12 B charged per statistic and CTA), bwd_dx 5.
ROWS_OVERHEAD = {"bn_normalize": 4, "bn_fwd_train": 9, "bn_bwd": 5, "split bn_fwd_train": 13, "split bn_bwd": 12.5,
                 "bn_bwd_dx": 5}


def rows_family(mode, layout="NCHW"):
    """True where the call runs the row-major kernels (batchnorm_nhwc.cu): channels last, per-activation."""
    return layout == "NHWC" or mode == "per_activation"


def _rows_launches(shape, dtype, mode, op, plan, layout):
    """launches() for the row-major kernels: x is (M, K) rows (per-activation: M = N, K = F; channels last:
    M = N * spatial, K = C); a CTA of a grid column walks its share of the M rows in BY lanes, each thread
    one 16-byte unit (or element) of K per row, so one read of x is exactly E * z bytes and the fused plan
    re-reads, per lane, the rows past its cache_units slots."""
    z = np.dtype(dtype).itemsize
    E = int(np.prod(shape, dtype=np.int64))
    K = E // shape[0] if mode == "per_activation" else shape[-1]
    M = E // K
    P, BY = plan["split"], plan["block"][1]
    pz = 8 if np.dtype(dtype).itemsize == 8 else 4
    over = lambda name, ctas_per_column: ROWS_OVERHEAD[name] * pz * K * ctas_per_column  # noqa: E731
    stream = E * z
    ctas = plan["grid"][0] * P
    block = plan["block"][:2]
    if op == "forward_infer":
        return [dict(kernel="bn_normalize", bytes=stream + E * z + over("bn_normalize", P), ctas=ctas, block=block,
                     shared=0)]
    arrays = 2 if op == "backward" else 1
    kname = "bn_bwd" if op == "backward" else "bn_fwd_train"
    if P == 1:
        reread = K * z * _reread_units(M, BY, plan["cache_units"])
        return [dict(kernel=kname, bytes=arrays * (stream + reread) + E * z + over(kname, 1), ctas=ctas, block=block,
                     shared=plan["shared_bytes"])]
    first = dict(kernel=kname, bytes=arrays * stream + over("split " + kname, P) + 12 * K * P, ctas=ctas,
                 block=block, shared=0, memset=True)
    q = plan.get("second", plan)
    P2 = q["split"]
    sname = "bn_bwd_dx" if op == "backward" else "bn_normalize"
    second = dict(kernel=sname, bytes=arrays * stream + E * z + over(sname, P2), ctas=q["grid"][0] * P2,
                  block=q["block"][:2], shared=0)
    return [first, second]


def launches(shape, dtype, mode, op, plan, layout="NCHW"):
    """cybn's launches for one call: [{"kernel", "bytes", "grid", "block", "shared", "memset"}], bytes being
    the element streams exactly (from the plan's walk) plus OVERHEAD_PER_STAT_CTA per statistic, CTA and
    launch. A test checks the total against the software GPU's counters. Channels last (layout "NHWC",
    shape (N, *spatial, C)) and per-activation calls run the row-major kernels (_rows_launches)."""
    if rows_family(mode, layout):
        return _rows_launches(shape, dtype, mode, op, plan, layout)
    z = np.dtype(dtype).itemsize
    E = int(np.prod(shape, dtype=np.int64))
    K = shape[1] if mode == "spatial" else E // shape[0]
    P = plan["split"]
    units, threads = _units_and_threads(shape, dtype, mode, plan)
    ub = 16 if (mode == "spatial" and plan["vec"]) else z
    edges = 0.0
    if mode == "spatial" and plan["vec"] == 2:
        edges = _rowvec_edges(shape, dtype)
        units = (E // K - round(edges)) // (16 // z)
    stream = K * (units * ub + edges * z)   # one read of one tensor
    if mode == "spatial" and plan["vec"] == 3:
        stream = E * z  # SPAN: every element once, in whole units
    ctas = plan["grid"][0] * P
    over = OVERHEAD_PER_STAT_CTA * K * P
    grid, block = (plan["grid"][0], P), plan["block"][:2]
    main = {"fwd": "bn_fwd_train", "bwd": "bn_bwd"}
    if op == "forward_infer":
        return [dict(kernel="bn_normalize", bytes=stream + E * z + over, ctas=ctas, block=block, shared=0)]
    arrays = 2 if op == "backward" else 1
    coop = bool(plan.get("coop"))
    if P == 1 or coop:  # one launch; a cooperative backward: its CTAs each also read all of its column's partials
        reread = K * (_reread_units(units, threads, plan["cache_units"], P) * ub + edges * z)
        partials = K * P * (P + 1) * 6 * (8 if z == 8 else 4) if coop else 0  # BN_BWD_PART values each
        kname = main["bwd" if op == "backward" else "fwd"]
        return [dict(kernel=kname, bytes=arrays * (stream + reread) + E * z + over + partials, ctas=ctas, block=block,
                     shared=plan["shared_bytes"], barrier=coop)]
    # No counter memset: the last CTAs re-arm them, so the Python face's workspaces need none after their first
    # split call (cybn/batchnorm/scratch.pxi); caller-provided memory (C API) still gets one per call.
    first = dict(kernel=main["bwd" if op == "backward" else "fwd"], bytes=arrays * stream + over + 12 * K * P,
                 ctas=ctas, block=block, shared=0, memset=False)
    q = plan.get("second", plan)  # the element-wise launch is planned on its own (batchnorm.plan)
    P2 = q["split"]
    second = dict(kernel="bn_bwd_dx" if op == "backward" else "bn_normalize",
                  bytes=arrays * stream + E * z + OVERHEAD_PER_STAT_CTA * K * P2, ctas=q["grid"][0] * P2,
                  block=q["block"][:2], shared=0)
    return [first, second]


def ideal_seconds(shape, dtype, op, dev):
    return IDEAL[op] * np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)) / (dev.hbm_gbs * 1e9)


def model_call(shape, dtype, mode, op, plan, kernels, dev, layout="NCHW"):
    """The modelled time of one cybn call. kernels: {kernel base name: {"registers", "smem", "inflight"}}
    (cubin_report.kernel_facts for this dtype, mode and layout; "inflight" is {"vec", "scalar"} bytes per
    thread)."""
    total_t, total_b, rows = 0.0, 0.0, []
    for ln in launches(shape, dtype, mode, op, plan, layout):
        k = kernels[ln["kernel"] + ("_span" if plan["vec"] == 3 else "")]  # SPAN plans run the SPAN programs
        threads = ln["block"][0] * ln["block"][1]
        per_sm = occupancy(threads, k["registers"], k["smem"] + ln["shared"], dev)
        vec = bool(plan["vec"])  # 16-byte units (NCHW rows, row vectors, row-major feature vectors)
        bpt = k["inflight"]["vec" if vec else "scalar"]
        t = launch_seconds(ln["bytes"], ln["ctas"], threads, bpt, per_sm, dev)
        t += (LAUNCH_US + (MEMSET_US if ln.get("memset") else 0) + (BARRIER_US if ln.get("barrier") else 0)) * 1e-6
        rows.append(dict(ln, ctas_per_sm=per_sm, bytes_per_thread=bpt, seconds=t, registers=k["registers"],
                         spills=k["spill_stores"] + k["spill_loads"],
                         waves=ln["ctas"] / max(1, per_sm * dev.sms)))
        total_t += t
        total_b += ln["bytes"]
    return dict(seconds=total_t, bytes=total_b, launches=rows, peak_fraction=total_b / total_t / (dev.hbm_gbs * 1e9))


# ---------------------------------------------------------------- PyTorch's native kernels, same model
def _torch_threads(n):
    """ATen's getNumThreads: the smallest of 32..512 covering n (512 past it)."""
    for t in (32, 64, 128, 256, 512):
        if n <= t:
            return t
    return 512


def torch_native_launches(shape, dtype, op, dev, layout="NCHW"):
    """PyTorch-native's launches for the call (modelled from ATen's Normalization.cu/.cuh as read, v2.x):
    contiguous NCHW (ndim > 2): statistics one CTA per channel, block (tf, 512/tf), tf = getNumThreads(S);
    then update+invert (a tiny TensorIterator kernel) and the element-wise transform, grid (C, min(256K/C,
    ceil(N/tb))), block (tf', tb), tf' = max(getNumThreads(S/4), min(getNumThreads(S), 64)), tb =
    max(64/tf', 1); eval: a copy of the running mean, an invstd kernel, the transform; backward: one fused
    kernel per channel, same block as the statistics, reading x and dy twice. 2-D (N, F) inputs and
    channels-last tensors (layout "NHWC": shape (N, *spatial, C), torch's channels_last) take the
    channels-last kernels: modelled as device-filling grids of 256 threads with 4 loads in flight per
    thread (ATen's PARALLEL_LOADS) for reductions and 1 for element-wise passes. One scalar load in flight
    per thread per tensor elsewhere; registers assumed not limiting (occupancy from threads only)."""
    z = np.dtype(dtype).itemsize
    E = int(np.prod(shape, dtype=np.int64))
    N, C = shape[0], (shape[-1] if layout == "NHWC" else shape[1])
    # TensorIterator kernels over C values: 128 threads x 4 values each (4 loads in flight)
    tiny = lambda nbytes: dict(bytes=nbytes, ctas=max(1, _cdiv(C, 512)), threads=128, bpt=16)  # noqa: E731
    if len(shape) == 2 or layout == "NHWC":
        fill = dev.sms * (2048 // 256)
        red = lambda nb, arrays: dict(bytes=nb, ctas=fill, threads=256, bpt=4 * z * arrays)  # noqa: E731
        elt = lambda nb, arrays: dict(bytes=nb, ctas=max(1, E // 1024), threads=256, bpt=z * arrays)  # noqa: E731
        if op == "forward_train":
            return [red(E * z, 1), tiny(24 * C), elt(2 * E * z, 1)]
        if op == "forward_infer":
            return [tiny(8 * C), tiny(8 * C), elt(2 * E * z, 1)]
        return [red(2 * E * z, 2), elt(3 * E * z, 2)]
    S = E // (N * C)
    tf = _torch_threads(S)
    stats = dict(ctas=C, threads=tf * max(1, 512 // tf))
    tf2 = max(_torch_threads(S // 4), min(_torch_threads(S), 64))
    tb = max(64 // tf2, 1)
    gy = min(65535, max(1, min(262144 // C, _cdiv(N, tb))))
    elemt = dict(bytes=2 * E * z, ctas=C * gy, threads=tf2 * tb, bpt=z)
    if op == "forward_train":
        return [dict(stats, bytes=E * z, bpt=z), tiny(24 * C), elemt]
    if op == "forward_infer":
        return [tiny(8 * C), tiny(8 * C), elemt]
    return [dict(stats, bytes=5 * E * z, bpt=2 * z)]


def model_torch(shape, dtype, op, dev, layout="NCHW"):
    t = 0.0
    for ln in torch_native_launches(shape, dtype, op, dev, layout):
        per_sm = occupancy(ln["threads"], 32, 0, dev)
        t += launch_seconds(ln["bytes"], ln["ctas"], ln["threads"], ln["bpt"], per_sm, dev) + LAUNCH_US * 1e-6
    return t


def needed_inflight_per_sm(dev, fraction=0.9):
    """Bytes in flight per SM the latency curve needs to reach `fraction` of peak."""
    u = fraction
    return u * dev.hbm_gbs * 1e9 * dev.latency_ns * 1e-9 / (1 - u ** LATENCY_EXPONENT) / dev.sms

