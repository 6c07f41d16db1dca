# The nogil BatchNorm core: a C descriptor plus launch functions that touch no Python object, so
# Cython (or C) faces can call them without the GIL. cybn/batchnorm/batchnorm.pyx fills the kernel handles
# (prepare) and the workspace; the cores validate, plan and launch with cuLaunchKernel.
from cuda.bindings cimport cydriver

# The constants shared with the kernels and the C API (values: cybn/kernels/bn_abi.h, so they cannot drift).
cdef extern from "bn_abi.h":
    enum:
        BN_SPATIAL
        BN_PER_ACTIVATION
        BN_FLOAT32
        BN_FLOAT16
        BN_BFLOAT16
        BN_FLOAT64
        BN_LAYOUT_NCHW
        BN_LAYOUT_NHWC
        BN_ACT_NONE
        BN_ACT_RELU
        BN_ACT_CLIPPED_RELU
        BN_ACT_LEAKY_RELU
        BN_ACT_ELU
        BN_ACT_SIGMOID
        BN_ACT_TANH
        BN_ACT_SWISH
        BN_DESC_AFFINE
        BN_DESC_ACCUMULATE
        BN_DESC_BIASED_RUNNING_VAR
        BN_DESC_FIX_GAMMA
        BN_DESC_PARTIALS
        BN_DESC_SUMS
        BN_OK
        BN_EINVAL
        BN_ENOTPREPARED
        BN_EWORKSPACE
        BN_AFFINE           # kernel flags
        BN_VEC
        BN_STAT_IS_VAR
        BN_SHIFTED
        BN_ROWVEC
        BN_BIASED_RUNVAR
        BN_PARTIALS
        BN_SUMS
        BN_FIX_GAMMA
        BN_COOP
        BN_FWD_BATCH        # units in flight in the fused forward's 16-byte walks (16/32-bit types, no epilogue)
        BN_FWD_PART         # workspace entry sizes
        BN_FWD_TAIL
        BN_BWD_PART
        BN_BWD_TAIL
        BN_SPAN_SLOT_FWD    # the SPAN kernels' shared scratch (P values per thread / group)
        BN_SPAN_SLOT_BWD
        BN_SPAN_SLOT_EW

# Which kernels an operation uses.
cdef enum:
    BN_K_FWD_TRAIN = 0
    BN_K_NORMALIZE = 1
    BN_K_BWD = 2
    BN_K_BWD_DX = 3
    BN_NKERNELS = 4

ctypedef struct bn_plan:
    unsigned int grid[3]
    unsigned int block[3]
    unsigned int shared_bytes   # dynamic shared memory (the x / dy replay cache)
    int cache_units             # cache slots per thread
    int vec                     # spatial: 16-byte units (1: aligned rows; 2: N == 1, scalar head/tail;
                                #   3: SPAN, each CTA's channels x S span, the kernels of d.span_kernels)
    int split                   # CTAs per channel (grid.y); > 1: partials + last-CTA combine + 2nd launch
    int ctas_per_sm             # resident CTAs per SM for this launch (the occupancy calculator; 0: cannot run)
    int coop                    # 1: a split backward as one cooperative launch (BN_COOP: every CTA combines
                                #   its column's partials after a barrier, then writes dx for its slice from the cache)

ctypedef struct bn_desc:
    int mode                    # BN_SPATIAL / BN_PER_ACTIVATION
    int dtype                   # BN_FLOAT32 / BN_FLOAT16 / BN_BFLOAT16 / BN_FLOAT64 (statistics: float64 for float64)
    long long N                 # batch
    long long C                 # channels
    long long S                 # prod(spatial) (spatial mode) or prod(rest) (per-activation: C * S stats)
    double epsilon
    double factor               # running = (1 - factor) * running + factor * batch
    int flags                   # BN_DESC_AFFINE, BN_DESC_ACCUMULATE, BN_DESC_BIASED_RUNNING_VAR, BN_DESC_FIX_GAMMA
    double scale_grad_alpha     # with BN_DESC_ACCUMULATE: scale_grad = alpha * dscale + beta * scale_grad
    double scale_grad_beta      #   (beta == 0: scale_grad is not read)
    double bias_grad_alpha      # the same for bias_grad
    double bias_grad_beta
    int sm_count                # of the device: plans fill sm_count * occ CTA slots in whole waves
    unsigned char occ[4][32]           # CTAs per SM of kernel k with i + 1 warps (the occupancy calculator)
    unsigned int smem_budget[4][32]    # dynamic shared bytes per CTA that keep occ (the replay cache's room)
    cydriver.CUfunction kernels[4]     # BN_K_*, filled by prepare() for (dtype, mode)
    unsigned int static_shared[4]      # their static shared memory (smem_budget is what is left of the opt-in maximum)
    cydriver.CUdeviceptr workspace     # scratch: counters + partials; bn_workspace_size
    size_t workspace_bytes
    size_t* counters_armed      # NULL: the workspace's contents are unknown (each split call zeroes its counters);
                                #   else the bytes at its start known to be armed (zero) counters, kept by the
                                #   owner of the workspace (the Python face's) and updated by the core: scratch.pxi
    int force_group             # tests: threads per channel (spatial) / row lanes (per-activation); 0 auto
    int force_split             # tests: CTAs per channel; 0 auto
    int force_cache             # tests: cache slots per thread; -1 auto
    int layout                  # BN_LAYOUT_NCHW: x is (N, C, S); BN_LAYOUT_NHWC (channels last, spatial mode):
                                #   x is (N, S, C), the kernels of batchnorm_nhwc.cu
    int act                     # BN_ACT_*: the fused epilogue y = act(bn(x) [+ z]) (prepare picks EPI 1 kernels)
    double act_alpha            # clipped relu's ceiling, leaky relu's slope, elu's alpha
    int residual                # 1: the forward adds z (x's shape) before act; the backward writes dz
    # The SPAN programs' NCHW spatial kernels and their facts, as kernels .. smem_budget above; prepare() loads
    # them for shapes that can take SPAN (plan.pxi, _span_shape); NULL: not loaded, no SPAN plans.
    cydriver.CUfunction span_kernels[4]
    unsigned int span_static_shared[4]
    unsigned char span_occ[4][32]
    unsigned int span_smem_budget[4][32]
    int coop_ok                 # the device takes cooperative launches (CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)
    int force_coop              # tests: 0 the model decides, 1 cooperative wherever it can run, 2 never
    unsigned int smem_less[4][32]       # dynamic shared bytes per CTA that keep occ - 1 CTAs per SM (0: occ <= 1):
    unsigned int span_smem_less[4][32]  #   a fused plan's larger replay cache at one CTA per SM less (plan.pxi)

cdef const char* bn_last_error() noexcept nogil
# Shape/value checks of a descriptor (not its kernels or workspace): BN_OK or BN_EINVAL with a message.
cdef int bn_check_desc(const bn_desc* d) noexcept nogil
# With the GIL: fills kernels, static_shared, sm_count, occ and smem_budget for d.dtype/d.mode in the current (primary)
# context, compiling/loading on first use (ValueError for an unknown dtype/mode code).
cdef int bn_prepare_desc(bn_desc* d) except -1
cdef int bn_make_plan(const bn_desc* d, int kernel, int vec, bn_plan* p) noexcept nogil
cdef size_t bn_workspace_size(const bn_desc* d) noexcept nogil

cdef int bn_forward_train_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                               cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                               cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                               cydriver.CUstream stream) noexcept nogil
cdef int bn_forward_infer_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                               cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                               cydriver.CUstream stream) noexcept nogil
# frozen = 0: from the saved batch statistics (mean = save_mean, stat = save_invstd);
# frozen = 1: eval-mode backward over running statistics (mean = running_mean, stat = running_var).
# scale_grad/bias_grad get the desc's alpha/beta (BN_DESC_ACCUMULATE); batch_scale_grad/batch_bias_grad
# (0: not written) also receive this batch's plain gradients, in the same launch.
# The epilogue forms (d.act, d.residual): z is the residual (0 when d.residual is 0); the backward takes
# bias (0 when not affine), the forward's output y (0: v is recomputed from x), z (read only where v is
# recomputed) and dz (written when d.residual). The plain forms above are these with 0s.
cdef int bn_forward_train_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                             cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                             cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                             cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                             cydriver.CUdeviceptr z, cydriver.CUstream stream) noexcept nogil
cdef int bn_forward_infer_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                             cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                             cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                             cydriver.CUdeviceptr z, cydriver.CUstream stream) noexcept nogil
cdef int bn_backward_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                        cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr mean,
                        cydriver.CUdeviceptr stat, cydriver.CUdeviceptr scale_grad,
                        cydriver.CUdeviceptr bias_grad, cydriver.CUdeviceptr batch_scale_grad,
                        cydriver.CUdeviceptr batch_bias_grad, int frozen, cydriver.CUdeviceptr bias,
                        cydriver.CUdeviceptr y, cydriver.CUdeviceptr z, cydriver.CUdeviceptr dz,
                        cydriver.CUstream stream) noexcept nogil
cdef int bn_backward_core(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                          cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr mean,
                          cydriver.CUdeviceptr stat, cydriver.CUdeviceptr scale_grad,
                          cydriver.CUdeviceptr bias_grad, cydriver.CUdeviceptr batch_scale_grad,
                          cydriver.CUdeviceptr batch_bias_grad, int frozen, cydriver.CUstream stream) noexcept nogil

# SyncBatchNorm's second halves (sync.pxi; the C API's split entries use them too): the normalisation from a
# tail of (hi, lo, scale * invstd, 0) per statistic (BN_FWD_TAIL values), and dx from (a, dbias / M, k, lo)
# (BN_BWD_TAIL), mean = the saved mean (hi).
cdef int bn_normalize_given_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                               cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr tail,
                               cydriver.CUdeviceptr z, cydriver.CUstream stream) noexcept nogil
cdef int bn_backward_dx_given_ex(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                                 cydriver.CUdeviceptr dx, cydriver.CUdeviceptr mean, cydriver.CUdeviceptr tail,
                                 cydriver.CUdeviceptr bias, cydriver.CUdeviceptr y, cydriver.CUdeviceptr z,
                                 cydriver.CUstream stream) noexcept nogil
# Their aliasing checks for the C API's split (outputs against inputs, each other and the workspace).
cdef int bn_sync_forward_overlap(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                                 cydriver.CUdeviceptr z, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                                 cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                                 cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                                 cydriver.CUdeviceptr scratch) noexcept nogil
cdef int bn_sync_backward_overlap(const bn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                                  cydriver.CUdeviceptr dx, cydriver.CUdeviceptr y, cydriver.CUdeviceptr z,
                                  cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                                  cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                                  cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                                  cydriver.CUdeviceptr scratch) noexcept nogil
