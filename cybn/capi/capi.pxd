# cybn's BatchNorm for Cython extensions: `from cybn.capi cimport ...` (build with include_dirs
# [cybn.get_include(), the nvidia-cuda-runtime wheel's include dir (for cuda.bindings' cydriver)]).
#
# prepare() holds the GIL and compiles/loads the kernels once; everything else is nogil, touches no
# Python object, takes raw CUdeviceptrs and a CUstream, and returns CYBN_OK, a negative CYBN_E*
# (nothing launched; the reason in last_error()) or a positive CUresult from the launch. The calling
# thread's current context must be the device's primary context (prepare() makes it current on its
# thread). The descriptor is cybn.h's plain-C struct, shared with the C API (capsule cybn._C_API).
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from cuda.bindings cimport cydriver

cdef extern from "cybn.h":
    enum: CYBN_C_API_VERSION
    enum:
        CYBN_SPATIAL
        CYBN_PER_ACTIVATION
        CYBN_FLOAT32
        CYBN_FLOAT16
        CYBN_BFLOAT16
        CYBN_FLOAT64
        CYBN_LAYOUT_NCHW
        CYBN_LAYOUT_NHWC
        CYBN_ACT_NONE
        CYBN_ACT_RELU
        CYBN_ACT_CLIPPED_RELU
        CYBN_ACT_LEAKY_RELU
        CYBN_ACT_ELU
        CYBN_ACT_SIGMOID
        CYBN_ACT_TANH
        CYBN_ACT_SWISH
        CYBN_AFFINE
        CYBN_ACCUMULATE_GRADS
        CYBN_BIASED_RUNNING_VAR
        CYBN_FIX_GAMMA
        CYBN_RESIDUAL
        CYBN_OK
        CYBN_EINVAL
        CYBN_ENOTPREPARED
        CYBN_EWORKSPACE
        CYBN_EPYTHON

    ctypedef unsigned long long cybn_deviceptr

    ctypedef struct cybn_desc:
        int32_t mode
        int32_t dtype
        int32_t flags
        int32_t layout
        int64_t N
        int64_t C
        int64_t S
        float epsilon
        float factor
        cybn_deviceptr workspace
        uint64_t workspace_bytes
        float scale_grad_alpha
        float scale_grad_beta
        float bias_grad_alpha
        float bias_grad_beta
        int32_t activation
        float activation_alpha
        uint64_t reserved[5]

    ctypedef struct cybn_api:
        uint32_t version
        uint32_t size
        int (*prepare)(int32_t dtype, int32_t mode) except -4
        int (*desc_init)(cybn_desc* d, int32_t mode, int32_t dtype, int64_t N, int64_t C, int64_t S,
                         float epsilon, float factor, int32_t flags) noexcept nogil
        int (*workspace_size)(const cybn_desc* d, uint64_t* nbytes) noexcept nogil
        int (*forward_train)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr y, cybn_deviceptr scale,
                             cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                             cybn_deviceptr save_mean, cybn_deviceptr save_invstd, void* stream) noexcept nogil
        int (*forward_infer)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr y, cybn_deviceptr scale,
                             cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                             void* stream) noexcept nogil
        int (*backward)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr dy, cybn_deviceptr dx,
                        cybn_deviceptr scale, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                        cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil
        int (*backward_infer)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr dy, cybn_deviceptr dx,
                              cybn_deviceptr scale, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                              cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil
        const char* (*last_error)() noexcept nogil
        int (*prepare_desc)(const cybn_desc* d) except -4
        int (*forward_train_ex)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                                cybn_deviceptr running_var, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                                void* stream) noexcept nogil
        int (*forward_infer_ex)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                                cybn_deviceptr running_var, void* stream) noexcept nogil
        int (*backward_ex)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                           cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr dz, cybn_deviceptr scale,
                           cybn_deviceptr bias, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                           cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil
        int (*backward_infer_ex)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                 cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr dz, cybn_deviceptr scale,
                                 cybn_deviceptr bias, cybn_deviceptr running_mean, cybn_deviceptr running_var,
                                 cybn_deviceptr scale_grad, cybn_deviceptr bias_grad, void* stream) noexcept nogil
        int (*forward_train_partials)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr partials,
                                      void* stream) noexcept nogil
        int (*forward_train_combined)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                      cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                                      cybn_deviceptr running_var, cybn_deviceptr save_mean,
                                      cybn_deviceptr save_invstd, const double* mean, const double* var,
                                      int64_t count, cybn_deviceptr scratch, void* stream) noexcept nogil
        int (*backward_sums)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                             cybn_deviceptr dy, cybn_deviceptr dz, cybn_deviceptr scale, cybn_deviceptr bias,
                             cybn_deviceptr save_mean, cybn_deviceptr save_invstd, cybn_deviceptr sums,
                             void* stream) noexcept nogil
        int (*backward_combined)(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                 cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr scale, cybn_deviceptr bias,
                                 cybn_deviceptr save_mean, cybn_deviceptr save_invstd, const double* sums,
                                 int64_t count, cybn_deviceptr scale_grad, cybn_deviceptr bias_grad,
                                 cybn_deviceptr scratch, void* stream) noexcept nogil


# With the GIL: compile (once per process) and load (once per context) the kernels of
# (dtype, mode) = (CYBN_FLOAT32/CYBN_FLOAT16, CYBN_SPATIAL/CYBN_PER_ACTIVATION); raises on failure.
cdef int prepare(int dtype, int mode) except -1
# Validate and fill *d (workspace 0, reserved zero); *d is unchanged on error.
cdef int desc_init(cybn_desc* d, int mode, int dtype, int64_t N, int64_t C, int64_t S, float epsilon,
                   float factor, int flags) noexcept nogil
# Workspace bytes d needs (0: none); needs prepare() in the current context.
cdef int workspace_size(const cybn_desc* d, uint64_t* nbytes) noexcept nogil
cdef int forward_train(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                       cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                       cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                       cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                       cydriver.CUstream stream) noexcept nogil
cdef int forward_infer(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr y,
                       cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                       cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                       cydriver.CUstream stream) noexcept nogil
cdef int backward(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx,
                  cydriver.CUdeviceptr scale, cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                  cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                  cydriver.CUstream stream) noexcept nogil
cdef int backward_infer(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr dy,
                        cydriver.CUdeviceptr dx, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr running_mean,
                        cydriver.CUdeviceptr running_var, cydriver.CUdeviceptr scale_grad,
                        cydriver.CUdeviceptr bias_grad, cydriver.CUstream stream) noexcept nogil
# This thread's last error message ("" if none).
cdef const char* last_error() noexcept nogil

# Version 3: every kernel a descriptor needs (dtype, mode, layout, epilogue), with the GIL; raises on failure.
cdef int prepare_desc(const cybn_desc* d) except -1
# The fused epilogue's arrays: z (residual, read with CYBN_RESIDUAL), y (backward: the forward's output, 0 to
# recompute act' from x), dz (backward: z's gradient, written with CYBN_RESIDUAL); bias for the recompute.
cdef int forward_train_ex(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                          cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                          cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                          cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                          cydriver.CUstream stream) noexcept nogil
cdef int forward_infer_ex(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                          cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                          cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                          cydriver.CUstream stream) noexcept nogil
cdef int backward_ex(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z, cydriver.CUdeviceptr y,
                     cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx, cydriver.CUdeviceptr dz,
                     cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr save_mean,
                     cydriver.CUdeviceptr save_invstd, cydriver.CUdeviceptr scale_grad,
                     cydriver.CUdeviceptr bias_grad, cydriver.CUstream stream) noexcept nogil
cdef int backward_infer_ex(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                           cydriver.CUdeviceptr y, cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx,
                           cydriver.CUdeviceptr dz, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                           cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                           cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                           cydriver.CUstream stream) noexcept nogil

# Version 4, SyncBatchNorm's split (cybn.h): this process's partials / sums out, the combined values in (host
# float64, combined by the caller over its own transport).
cdef int forward_train_partials(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr partials,
                                cydriver.CUstream stream) noexcept nogil
cdef int forward_train_combined(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                                cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                                cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                                cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                                const double* mean, const double* var, int64_t count,
                                cydriver.CUdeviceptr scratch, cydriver.CUstream stream) noexcept nogil
cdef int backward_sums(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z, cydriver.CUdeviceptr y,
                       cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dz, cydriver.CUdeviceptr scale,
                       cydriver.CUdeviceptr bias, cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                       cydriver.CUdeviceptr sums, cydriver.CUstream stream) noexcept nogil
cdef int backward_combined(const cybn_desc* d, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                           cydriver.CUdeviceptr y, cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx,
                           cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr save_mean,
                           cydriver.CUdeviceptr save_invstd, const double* sums, int64_t count,
                           cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                           cydriver.CUdeviceptr scratch, cydriver.CUstream stream) noexcept nogil
