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
 * alpha/beta (CYBN_ACCUMULATE_GRADS; taken from version 1's reserved zero tail). An extension built
 * against version 1 gets cybn_import()'s version error and is rebuilt unchanged. */
#define CYBN_C_API_VERSION 2

/* Layouts (cybn_desc.mode). */
#define CYBN_SPATIAL 0          /* x is (N, C, S) with S = prod(spatial): one statistic per channel */
#define CYBN_PER_ACTIVATION 1   /* x is (N, C, S): one statistic per (c, s) position, C * S of them */

/* Data types of x, y, dy, dx (cybn_desc.dtype); statistics, scale and bias are always float32. */
#define CYBN_FLOAT32 0
#define CYBN_FLOAT16 1

/* cybn_desc.flags */
#define CYBN_AFFINE 1           /* scale and bias are given; without it they are 1 and 0 (pointers may be 0) */
#define CYBN_ACCUMULATE_GRADS 2 /* backward, backward_infer: scale_grad = scale_grad_alpha * dscale +
                                 * scale_grad_beta * scale_grad, bias_grad likewise (cuDNN's alpha/beta), in
                                 * the same launch; beta == 0 never reads the array. Without the flag the four
                                 * fields are ignored and the gradients overwritten (alpha 1, beta 0). */

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
 * cybn_workspace_size() is non-zero. The workspace is device scratch with no required content (each
 * call that needs it zeroes its counters on the stream first), used by one stream and thread at a time. */
typedef struct cybn_desc {
    int32_t mode;                /* CYBN_SPATIAL / CYBN_PER_ACTIVATION */
    int32_t dtype;               /* CYBN_FLOAT32 / CYBN_FLOAT16 */
    int32_t flags;               /* CYBN_AFFINE */
    int32_t reserved0;           /* zero */
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
    uint64_t reserved[6];        /* zero: room for future fields */
} cybn_desc;

/* The layout is ABI: 128 bytes on every platform. */
#if defined(__cplusplus) && __cplusplus >= 201103L
static_assert(sizeof(cybn_desc) == 128, "cybn_desc must be 128 bytes");
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(cybn_desc) == 128, "cybn_desc must be 128 bytes");
#else
typedef char cybn_desc_is_128_bytes[sizeof(cybn_desc) == 128 ? 1 : -1];
#endif

/* The function table in the capsule. Pointers x, y, dy, dx: N * C * S elements of dtype, C order.
 * scale, bias, means, variances, invstds and gradients: float32, one per statistic. */
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
#endif /* CYBN_NO_IMPORT */

#endif /* CYBN_H */
