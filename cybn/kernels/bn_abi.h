/* cybn's batch-norm ABI: the constants the kernels, the Cython core and the C API share, once.
 *
 * Plain C #defines (no C++): included by cybn/kernels/batchnorm.cu (NVRTC, -I cybn/kernels) and by the
 * Cython core (cybn/batchnorm/batchnorm.pxd: cdef extern from "bn_abi.h"); cybn/include/cybn.h mirrors
 * the ones the C API exposes as CYBN_*, and tests/embedding/test_abi_header.py checks that they agree. */
#ifndef CYBN_BN_ABI_H
#define CYBN_BN_ABI_H

/* Kernel flags: the `flags` argument of the batchnorm.cu kernels. */
#define BN_AFFINE 1             /* scale/bias given; else 1 and 0 */
#define BN_VEC 2                /* spatial: 16-byte units (rows 16-byte aligned) */
#define BN_STAT_IS_VAR 4        /* normalize/backward: `stat` is a variance (running_var), else an inverse std */
#define BN_SHIFTED 8            /* normalize: the training mean as the workspace's (hi, lo) pair */
#define BN_ROWVEC 16            /* spatial, N == 1 (with VEC): 16-byte units of each channel's aligned middle,
                                   scalar head and tail (S odd or the channel start not 16-byte aligned) */
#define BN_BIASED_RUNVAR 32     /* forward train: the biased batch variance into running_var (MXNet, Paddle) */
#define BN_PARTIALS 64          /* forward train, SyncBatchNorm: only this process's statistics, save_mean = mean hi,
                                   save_invstd = mean lo, running_mean = biased variance; nothing else written */
#define BN_SUMS 128             /* backward, SyncBatchNorm: only the raw sums, bias_grad = sum(dy), scale_grad =
                                   sum(dy * (x - mean)), batch_scale_grad = sum(x - mean); no dx */
#define BN_FIX_GAMMA 256        /* scale is 1 (not read, may be null); the scale gradient is written as 0
                                   (with alpha/beta: beta * old + alpha * 0), as MXNet's fix_gamma */
#define BN_COOP 512             /* backward, NCHW spatial, P > 1, launched cooperatively (all CTAs co-resident):
                                   the CTAs of a column meet at a barrier on its counter, each combines the
                                   partials itself and goes on to write dx for its own slice: one launch */

/* Statistic modes (bn_desc.mode; CYBN_SPATIAL, CYBN_PER_ACTIVATION). */
#define BN_SPATIAL 0            /* (N, C, *spatial): one statistic per channel */
#define BN_PER_ACTIVATION 1     /* (N, C, *rest): one statistic per (c, *rest) position */

/* Data types (bn_desc.dtype; CYBN_FLOAT32, CYBN_FLOAT16). Statistics and parameters are float32 for the
   first three, float64 for float64. */
#define BN_FLOAT32 0
#define BN_FLOAT16 1
#define BN_BFLOAT16 2
#define BN_FLOAT64 3

/* Layouts: NCHW views x as (N, C, S); NHWC (channels last) as (M = N * S, C) row-major. */
#define BN_LAYOUT_NCHW 0
#define BN_LAYOUT_NHWC 1

/* Fused activations of the epilogue y = act(bn(x) [+ z]). */
#define BN_ACT_NONE 0
#define BN_ACT_RELU 1
#define BN_ACT_CLIPPED_RELU 2   /* min(max(v, 0), alpha); relu6: alpha 6 */
#define BN_ACT_LEAKY_RELU 3     /* v > 0 ? v : alpha * v */
#define BN_ACT_ELU 4            /* v > 0 ? v : alpha * (exp(v) - 1) */
#define BN_ACT_SIGMOID 5
#define BN_ACT_TANH 6
#define BN_ACT_SWISH 7          /* v * sigmoid(v), also "silu" */

/* Descriptor flags (bn_desc.flags; CYBN_AFFINE, CYBN_ACCUMULATE_GRADS). */
#define BN_DESC_AFFINE 1        /* scale and bias are given; else they are 1 and 0 (pointers may be 0) */
#define BN_DESC_ACCUMULATE 2    /* backward: grad = alpha * this batch + beta * grad with the desc's alphas/betas;
                                   without it alpha 1 and beta 0 (the gradients are overwritten) */
#define BN_DESC_BIASED_RUNNING_VAR 4  /* forward train: the biased batch variance into running_var */
#define BN_DESC_FIX_GAMMA 8     /* scale is 1 (the pointer may be 0), scale_grad written 0: BN_FIX_GAMMA */
#define BN_DESC_PARTIALS 64     /* internal (SyncBatchNorm): forward train launches BN_PARTIALS, one launch */
#define BN_DESC_SUMS 128        /* internal (SyncBatchNorm): backward launches BN_SUMS, one launch */

/* Status codes of the core: 0, a negative BN_E* (message: bn_last_error()), or a positive CUresult from
   the launch (CYBN_OK, CYBN_EINVAL, CYBN_ENOTPREPARED, CYBN_EWORKSPACE). */
#define BN_OK 0
#define BN_EINVAL (-1)          /* a bad descriptor or pointer; nothing launched */
#define BN_ENOTPREPARED (-2)    /* prepare() was not called for this dtype/mode/context */
#define BN_EWORKSPACE (-3)      /* the descriptor's workspace is smaller than bn_workspace_size() */

/* Internal (plans and kernels): 16-byte units per thread the fused forward-train's walks keep in flight (its
   16- and 32-bit types without an epilogue; 1 elsewhere in the reductions). */
#define BN_FWD_BATCH 2

/* The split plans' workspace: values of the statistics type P per entry (float; double for float64 data). */
#define BN_FWD_PART 5           /* per (statistic, CTA) partial: Welford n, mean, variance, compensated sum (2) */
#define BN_FWD_TAIL 4           /* per statistic for the second launch: the mean (hi, lo), scale * invstd, pad */
#define BN_BWD_PART 6           /* the backward's compensated sums (dy, dy * (x - hi), x - hi), 2 floats each */
#define BN_BWD_TAIL 4           /* dx constants (a, dbias / M, k, lo) for the second launch */
/* The SPAN kernels' scratch (bn_span.cuh) in dynamic shared memory after the replay cache, P values per thread
   of the reductions (forward: the next channel's Welford spill + its shift, later 4 constants; backward: its
   sums + hi, a, bias, later 5 constants) and per group of the element-wise kernels (6 constants). */
#define BN_SPAN_SLOT_FWD 6
#define BN_SPAN_SLOT_BWD 9
#define BN_SPAN_SLOT_EW 6

#endif
