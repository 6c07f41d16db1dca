/* cybn.h - cybn's BatchNorm for C and C++ extensions, through the capsule `cybn._C_API`.
 *
 * Build with -I$(python -c "import cybn; print(cybn.get_include())"); no CUDA header is needed
 * (device pointers are unsigned long long, streams void*). In the module's init function:
 *
 *     if (cybn_import() < 0) return NULL;          (an ImportError is set)
 *
 * then, with the GIL:     cybn_prepare(CYBN_FLOAT32, CYBN_SPATIAL);   (compiles/loads the kernels once,
 *                                                                      makes the primary context current)
 * and from any thread whose current context is the device's primary context, GIL held or not:
 *     cybn_desc d; cybn_desc_init(&d, CYBN_SPATIAL, CYBN_FLOAT32, N, C, H * W, 1e-5f, 0.1f, CYBN_AFFINE);
 *     cybn_forward_train(&d, x, y, scale, bias, running_mean, running_var, save_mean, save_invstd, stream);
 *
 * Every call returns CYBN_OK (0), a negative CYBN_E* (nothing was launched; the reason is in
 * cybn_last_error()), or a positive CUresult from the launch. The table is versioned: cybn_import()
 * refuses a cybn whose CYBN_C_API_VERSION differs from this header's.
 *
 * The static table pointer is per translation unit: call cybn_import() in each C file that uses it
 * (cheap), or define CYBN_NO_IMPORT to get only the types. */
#ifndef CYBN_H
#define CYBN_H

#include <stdint.h>

/* Bumped on any change of the table or the descriptor. Version 2: the descriptor's parameter-gradient
 * alpha/beta (CYBN_ACCUMULATE_GRADS; taken from version 1's reserved zero tail). Version 3 (the engine's
 * layouts, dtypes and epilogues): layout (version 2's reserved0), bfloat16/float64 dtype ids, activation
 * and activation_alpha (version 2's reserved[0]), the CYBN_BIASED_RUNNING_VAR, CYBN_FIX_GAMMA and
 * CYBN_RESIDUAL flags; the table gains prepare_desc and the *_ex calls that take the fused epilogue's
 * arrays (residual z, its gradient dz, the saved output y), appended after version 2's entries.
 * An extension built against an older version gets cybn_import()'s version error (cybn.h's check is
 * compiled into it, so a newer cybn cannot answer to an older version number) and is rebuilt unchanged:
 * its calls keep their meaning, since desc_init zeroes the new fields (NCHW, no activation, no residual,
 * unbiased running variance) and the version 2 entries are kept. Version 4 (issue 14, SyncBatchNorm):
 * the table gains the split entries forward_train_partials, forward_train_combined, backward_sums and
 * backward_combined, appended after version 3's; the descriptor is unchanged. */
#define CYBN_C_API_VERSION 4

/* Layouts (cybn_desc.mode). */
#define CYBN_SPATIAL 0          /* x is (N, C, S) with S = prod(spatial): one statistic per channel */
#define CYBN_PER_ACTIVATION 1   /* x is (N, C, S): one statistic per (c, s) position, C * S of them */

/* Data types of x, y, dy, dx, z, dz (cybn_desc.dtype). Statistics, scale, bias and their gradients
 * ("parameters" below) are float32, except with CYBN_FLOAT64 data: then they are float64 too. */
#define CYBN_FLOAT32 0
#define CYBN_FLOAT16 1
#define CYBN_BFLOAT16 2         /* bfloat16 data (ml_dtypes.bfloat16 on the Python side), float32 parameters */
#define CYBN_FLOAT64 3          /* float64 data and float64 parameters */

/* Memory layouts of the data (cybn_desc.layout; version 3). Per-activation mode has one layout (NCHW). */
#define CYBN_LAYOUT_NCHW 0      /* x is (N, C, S) in C order: spatial innermost */
#define CYBN_LAYOUT_NHWC 1      /* channels last: x is (N, S, C) in C order, i.e. (N * S, C) rows */

/* Fused activations (cybn_desc.activation; version 3): y = act(bn(x) [+ z]). Gradients at the kinks as
 * torch's: relu'(0) = 0, clipped relu' = 1 only for 0 < v < alpha, leaky'(0) = alpha, elu'(0) = alpha. */
#define CYBN_ACT_NONE 0
#define CYBN_ACT_RELU 1
#define CYBN_ACT_CLIPPED_RELU 2 /* min(max(v, 0), alpha): relu6 is alpha 6 */
#define CYBN_ACT_LEAKY_RELU 3   /* v > 0 ? v : alpha * v */
#define CYBN_ACT_ELU 4          /* v > 0 ? v : alpha * (exp(v) - 1) */
#define CYBN_ACT_SIGMOID 5
#define CYBN_ACT_TANH 6
#define CYBN_ACT_SWISH 7        /* v * sigmoid(v), also called silu */

/* cybn_desc.flags */
#define CYBN_AFFINE 1           /* scale and bias are given; without it they are 1 and 0 (pointers may be 0) */
#define CYBN_ACCUMULATE_GRADS 2 /* backward, backward_infer: scale_grad = scale_grad_alpha * dscale +
                                 * scale_grad_beta * scale_grad, bias_grad likewise (cuDNN's alpha/beta), in
                                 * the same launch; beta == 0 never reads the array. Without the flag the four
                                 * fields are ignored and the gradients overwritten (alpha 1, beta 0). */
#define CYBN_BIASED_RUNNING_VAR 4 /* forward_train: the biased batch variance (divided by M, not M - 1) goes
                                 * into running_var, as MXNet and Paddle do (version 3) */
#define CYBN_FIX_GAMMA 8        /* scale is treated as 1 (the pointer may be 0) and scale_grad is written 0
                                 * (with CYBN_ACCUMULATE_GRADS: scale_grad_beta * scale_grad), as MXNet's
                                 * fix_gamma (version 3) */
#define CYBN_RESIDUAL 16        /* y = act(bn(x) + z): the forward reads z, the backward writes dz (the
                                 * pre-activation's gradient, which is z's); only the *_ex calls take z and
                                 * dz, the others refuse the flag (version 3) */

/* Status codes; positive values are CUresult codes of a failed launch. */
#define CYBN_OK 0
#define CYBN_EINVAL (-1)        /* bad descriptor or pointer: nothing launched */
#define CYBN_ENOTPREPARED (-2)  /* no cybn_prepare(dtype, mode) for the calling thread's current context */
#define CYBN_EWORKSPACE (-3)    /* workspace missing or smaller than cybn_workspace_size() */
#define CYBN_EPYTHON (-4)       /* cybn_prepare only: a Python exception is set */

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned long long cybn_deviceptr;   /* a CUdeviceptr */

/* What to normalise. Fill with cybn_desc_init(), then set workspace/workspace_bytes if
 * cybn_workspace_size() is non-zero. The workspace is device scratch with no required content: the engine
 * cannot know what the caller's memory held since its last call, so each split call zeroes its counters
 * with one async memset on the stream before its two launches. Used by one stream and thread at a time. */
typedef struct cybn_desc {
    int32_t mode;                /* CYBN_SPATIAL / CYBN_PER_ACTIVATION */
    int32_t dtype;               /* CYBN_FLOAT32 / CYBN_FLOAT16 */
    int32_t flags;               /* CYBN_AFFINE | CYBN_ACCUMULATE_GRADS | CYBN_BIASED_RUNNING_VAR | ... */
    int32_t layout;              /* CYBN_LAYOUT_NCHW (desc_init) / CYBN_LAYOUT_NHWC; was reserved0 */
    int64_t N;                   /* batch */
    int64_t C;                   /* channels */
    int64_t S;                   /* prod of the remaining axes (1 for (N, C) data) */
    float epsilon;               /* > 0 */
    float factor;                /* running = (1 - factor) * running + factor * batch; in [0, 1] */
    cybn_deviceptr workspace;
    uint64_t workspace_bytes;
    float scale_grad_alpha;      /* with CYBN_ACCUMULATE_GRADS (finite); desc_init sets 1, 0, 1, 0 */
    float scale_grad_beta;
    float bias_grad_alpha;
    float bias_grad_beta;
    int32_t activation;          /* CYBN_ACT_* (desc_init: CYBN_ACT_NONE); version 3, was reserved[0] */
    float activation_alpha;      /* clipped relu's ceiling (> 0), leaky relu's slope and elu's alpha (>= 0,
                                  * finite); ignored by the other activations; desc_init sets 0 */
    uint64_t reserved[5];        /* zero: room for future fields */
} cybn_desc;

/* The layout is ABI: 128 bytes on every platform. */
#if defined(__cplusplus) && __cplusplus >= 201103L
static_assert(sizeof(cybn_desc) == 128, "cybn_desc must be 128 bytes");
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(cybn_desc) == 128, "cybn_desc must be 128 bytes");
#else
typedef char cybn_desc_is_128_bytes[sizeof(cybn_desc) == 128 ? 1 : -1];
#endif

/* The function table in the capsule. Pointers x, y, dy, dx (and z, dz): N * C * S elements of dtype in
 * d->layout's order. scale, bias, means, variances, invstds and gradients: the parameter type (float32;
 * float64 for CYBN_FLOAT64 data), one per statistic (C spatial, C * S per-activation).
 * A descriptor's new fields (layout, dtype, activation, flags) are honoured by every entry; the version 2
 * entries refuse only what needs an array they do not take: CYBN_RESIDUAL (z, dz) everywhere, and an
 * activation in the backward (it needs y or bias: use backward_ex / backward_infer_ex). */
typedef struct cybn_api {
    uint32_t version;            /* CYBN_C_API_VERSION of the installed cybn */
    uint32_t size;               /* sizeof(cybn_api) of the installed cybn */
    /* GIL held. Compiles (once per process) and loads (once per context) the kernels of (dtype, mode),
     * making the device's primary context current on this thread. 0, or CYBN_EPYTHON with an
     * exception set (its text also in last_error()). */
    int (*prepare)(int32_t dtype, int32_t mode);
    /* Validates and fills *d (workspace 0, reserved zero); on error *d is unchanged. */
    int (*desc_init)(cybn_desc *d, int32_t mode, int32_t dtype, int64_t N, int64_t C, int64_t S,
                     float epsilon, float factor, int32_t flags);
    /* Workspace bytes d needs (0: none) for the current context's device; needs prepare(). */
    int (*workspace_size)(const cybn_desc *d, uint64_t *nbytes);
    /* Training forward: y, saved batch mean and invstd = 1/sqrt(biased var + eps); updates the running
     * statistics in place (running var with the unbiased batch variance). */
    int (*forward_train)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr y, cybn_deviceptr scale,
                         cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                         cybn_deviceptr save_mean, cybn_deviceptr save_invstd, void *stream);
    /* Inference forward with the running statistics. */
    int (*forward_infer)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr y, cybn_deviceptr scale,
                         cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                         void *stream);
    /* Backward of forward_train from its saved statistics: dx, scale_grad, bias_grad (overwritten, or
     * accumulated with CYBN_ACCUMULATE_GRADS). The exact batch mean is save_mean + mean(x - save_mean),
     * recomputed in the same reduction: nothing beyond the saved statistics is needed. */
    int (*backward)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr dy, cybn_deviceptr dx,
                    cybn_deviceptr scale, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                    cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void *stream);
    /* Backward of forward_infer (frozen running statistics, d->epsilon). */
    int (*backward_infer)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr dy, cybn_deviceptr dx,
                          cybn_deviceptr scale, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                          cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void *stream);
    /* The calling thread's last error message ("" if none); valid until its next failing call. */
    const char *(*last_error)(void);

    /* ---- version 3 ---- */
    /* GIL held. Compiles and loads every kernel d needs (its dtype, mode, layout and epilogue): prepare()
     * for a version 3 descriptor. 0, CYBN_EINVAL (bad descriptor, nothing compiled) or CYBN_EPYTHON. */
    int (*prepare_desc)(const cybn_desc *d);
    /* forward_train with the residual z (read with CYBN_RESIDUAL, else ignored and may be 0). In the *_ex
     * calls z and dz are ignored without CYBN_RESIDUAL, and y (backward) without an activation. */
    int (*forward_train_ex)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                            cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                            cybn_deviceptr running_var, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                            void *stream);
    int (*forward_infer_ex)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                            cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                            cybn_deviceptr running_var, void *stream);
    /* backward through the activation: y is the forward's output (0: act' is recomputed from x, the saved
     * statistics, scale, bias and z; swish always recomputes); z the forward's residual (read only when
     * recomputing); with CYBN_RESIDUAL dz receives dy * act'(v) (z's gradient) and dx, scale_grad and
     * bias_grad are the BatchNorm gradients of dz. bias may be 0 without CYBN_AFFINE. */
    int (*backward_ex)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                       cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr dz, cybn_deviceptr scale,
                       cybn_deviceptr bias, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                       cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void *stream);
    int (*backward_infer_ex)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                             cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr dz, cybn_deviceptr scale,
                             cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                             cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void *stream);

    /* ---- version 4: SyncBatchNorm split (the caller communicates between the halves) ----
     * K = C (spatial) or C * S statistics; M = N * S (spatial) or N values per statistic on this process.
     * d->N may be 0 in these four (set it after desc_init, which refuses 0): a process with no samples
     * launches nothing, contributes count 0, and still calls the combined entries, which then write only the
     * saved and running statistics / the gradients, so every process keeps the same copies.
     * Training forward: 1. forward_train_partials writes this process's partials to `partials`, (4, K)
     * parameter values: rows mean hi, mean lo (the mean is hi + lo, exact beyond one float), biased variance
     * M2 / M; row 3 is scratch. One launch, nothing else written. 2. The caller gathers (M, hi + lo, variance)
     * of every process and combines them in float64 (Chan's formula, in a fixed process order so that every
     * process gets the same bits). 3. forward_train_combined takes the combined mean[K] and biased var[K]
     * (host float64) and count (values per statistic over all processes, >= 2): writes y = act(bn(x) [+ z])
     * (one launch), save_mean, save_invstd and the running statistics (unbiased with count - 1 unless
     * CYBN_BIASED_RUNNING_VAR). scratch: 4 * K parameter values of device scratch.
     * Backward: 1. backward_sums writes (3, K) parameter values to `sums`: sum(g), sum(g * (x - save_mean)),
     * sum(x - save_mean), g = dy * act'(v) (dy without an activation; with CYBN_RESIDUAL also written to dz).
     * 2. The caller sums them over the processes (float64, fixed order) and the counts. 3. backward_combined
     * takes the summed sums[3 * K] (host float64) and count: writes dx (one launch) and scale_grad, bias_grad
     * (CYBN_ACCUMULATE_GRADS honoured). y, z, bias as in backward_ex. scratch: 4 * K parameter values.
     * The combined entries read what they need of scale, the running statistics, save_invstd and the
     * accumulated gradients after the stream's earlier work and return with the stream synchronised; they
     * check everything before writing (a refused call leaves every statistic and gradient as it was). */
    int (*forward_train_partials)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr partials, void *stream);
    int (*forward_train_combined)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                  cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                                  cybn_deviceptr running_var, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                                  const double *mean, const double *var, int64_t count, cybn_deviceptr scratch,
                                  void *stream);
    int (*backward_sums)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                         cybn_deviceptr dy, cybn_deviceptr dz, cybn_deviceptr scale, cybn_deviceptr bias,
                         cybn_deviceptr save_mean, cybn_deviceptr save_invstd, cybn_deviceptr sums, void *stream);
    int (*backward_combined)(const cybn_desc *d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                             cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr scale, cybn_deviceptr bias,
                             cybn_deviceptr save_mean, cybn_deviceptr save_invstd, const double *sums,
                             int64_t count, cybn_deviceptr scale_grad, cybn_deviceptr bias_grad,
                             cybn_deviceptr scratch, void *stream);
} cybn_api;

#ifdef __cplusplus
}
#endif

#ifndef CYBN_NO_IMPORT
#include <Python.h>

#if defined(__GNUC__)
#define CYBN_UNUSED __attribute__((unused))
#else
#define CYBN_UNUSED
#endif

static const cybn_api *cybn_api_table CYBN_UNUSED = NULL;

/* Imports cybn and its table; 0, or -1 with an ImportError set (cybn missing, or built with another
 * CYBN_C_API_VERSION). Like NumPy's import_array(): call it once in the module init. */
static CYBN_UNUSED int cybn_import(void)
{
    const cybn_api *api = (const cybn_api *)PyCapsule_Import("cybn._C_API", 0);
    if (api == NULL)
        return -1;
    if (api->version != CYBN_C_API_VERSION || api->size < sizeof(cybn_api)) {
        PyErr_Format(PyExc_ImportError,
                     "cybn C API version mismatch: this extension was built against cybn.h version %d "
                     "(table of %d bytes) but the installed cybn provides version %d (%d bytes); rebuild "
                     "the extension against the installed cybn (cybn.get_include())",
                     (int)CYBN_C_API_VERSION, (int)sizeof(cybn_api), (int)api->version, (int)api->size);
        return -1;
    }
    cybn_api_table = api;
    return 0;
}

#define cybn_prepare(dtype, mode) (cybn_api_table->prepare((dtype), (mode)))
#define cybn_desc_init (cybn_api_table->desc_init)
#define cybn_workspace_size (cybn_api_table->workspace_size)
#define cybn_forward_train (cybn_api_table->forward_train)
#define cybn_forward_infer (cybn_api_table->forward_infer)
#define cybn_backward (cybn_api_table->backward)
#define cybn_backward_infer (cybn_api_table->backward_infer)
#define cybn_last_error() (cybn_api_table->last_error())
#define cybn_prepare_desc(d) (cybn_api_table->prepare_desc((d)))
#define cybn_forward_train_ex (cybn_api_table->forward_train_ex)
#define cybn_forward_infer_ex (cybn_api_table->forward_infer_ex)
#define cybn_backward_ex (cybn_api_table->backward_ex)
#define cybn_backward_infer_ex (cybn_api_table->backward_infer_ex)
#define cybn_forward_train_partials (cybn_api_table->forward_train_partials)
#define cybn_forward_train_combined (cybn_api_table->forward_train_combined)
#define cybn_backward_sums (cybn_api_table->backward_sums)
#define cybn_backward_combined (cybn_api_table->backward_combined)
#endif /* CYBN_NO_IMPORT */

#endif /* CYBN_H */
