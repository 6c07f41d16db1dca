# The C API's SyncBatchNorm split (version 4): an embedding pipeline does its own communication between the
# halves. forward_train_partials / backward_sums write this process's per-statistic partials or sums on the
# device (the BN_PARTIALS / BN_SUMS launches of cybn.batchnorm's comm= path); the caller combines them over its
# processes (any transport, in float64: Chan's formula for the partials, plain sums for the sums) and hands the
# combined values in, on the host, to forward_train_combined / backward_combined, which write the saved and
# running statistics or the parameter gradients and launch the normalisation or dx pass (sync.pxi's kernels).
# Included by capi.pyx.
#
# The combined entries read the few per-statistic device values they need (scale, the running statistics,
# save_invstd, the gradients they accumulate into) after the stream's earlier work, and return once their
# uploads are done (the stream is synchronised): the combination already made the caller wait for the partials.
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.math cimport sqrt

from cybn.batchnorm.batchnorm cimport (bn_normalize_given_ex, bn_backward_dx_given_ex, bn_sync_forward_overlap,
                                       bn_sync_backward_overlap, BN_DESC_PARTIALS,
                                       BN_DESC_SUMS, BN_FLOAT64, BN_ACT_NONE, BN_ACT_SWISH,
                                       BN_ACT_CLIPPED_RELU)


cdef inline long long _nstat(const bn_desc* d) noexcept nogil:
    return d.C if d.mode == BN_SPATIAL else d.C * d.S


cdef int _split_resolve(const cybn_desc* c, bn_desc* d, const char* op) noexcept nogil:
    """_resolve for the split entries, which also take d->N == 0 (a process with no samples: no launch)."""
    cdef cybn_desc one
    if c == NULL:
        return _fail(CYBN_EINVAL, op, "descriptor pointer is NULL")
    if c.N != 0:
        return _resolve(c, d, op)
    one = c[0]
    one.N = 1
    cdef int st = _resolve(&one, d, op)
    d.N = 0
    return st


cdef int _driver(cydriver.CUresult r, const char* op, const char* call) noexcept nogil:
    cdef const char* name = NULL
    if r == cydriver.CUDA_SUCCESS:
        return CYBN_OK
    if cydriver.cuGetErrorName(r, &name) != cydriver.CUDA_SUCCESS or name == NULL:
        name = "unknown CUresult"
    snprintf(cybn_capi_error, sizeof(cybn_capi_error), "%s: %s failed: %s (%d)", op, call, name, <int>r)
    return <int>r


cdef int _get(double* out, cydriver.CUdeviceptr src, long long n, bint f64, float* tmp, cydriver.CUstream s,
              const char* op) noexcept nogil:
    """n parameter values at src (after the stream's earlier work) into out as float64; tmp: n floats."""
    cdef long long i
    cdef int st
    if f64:
        st = _driver(cydriver.cuMemcpyDtoHAsync(<void*>out, src, n * 8, s), op, "cuMemcpyDtoHAsync")
    else:
        st = _driver(cydriver.cuMemcpyDtoHAsync(<void*>tmp, src, n * 4, s), op, "cuMemcpyDtoHAsync")
    if st == CYBN_OK:
        st = _driver(cydriver.cuStreamSynchronize(s), op, "cuStreamSynchronize")
    if st == CYBN_OK and not f64:
        for i in range(n):
            out[i] = tmp[i]
    return st


cdef int _put(cydriver.CUdeviceptr dst, const double* src, long long n, bint f64, void* stage,
              cydriver.CUstream s, const char* op) noexcept nogil:
    """n float64 values as parameter values at dst, queued on the stream from `stage` (kept until it syncs)."""
    cdef long long i
    cdef float* f = <float*>stage
    if f64:
        memcpy(stage, src, n * 8)
        return _driver(cydriver.cuMemcpyHtoDAsync(dst, stage, n * 8, s), op, "cuMemcpyHtoDAsync")
    for i in range(n):
        f[i] = <float>src[i]
    return _driver(cydriver.cuMemcpyHtoDAsync(dst, stage, n * 4, s), op, "cuMemcpyHtoDAsync")


cdef int _host_values(const double* a, long long n, bint positive, const char* op, const char* what) noexcept nogil:
    cdef long long i
    if a == NULL:
        return _fail(CYBN_EINVAL, op, what)
    for i in range(n):
        if not isfinite(a[i]) or (positive and a[i] < 0):
            return _fail(CYBN_EINVAL, op, what)
    return CYBN_OK


cdef int forward_train_partials(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr partials,
                                cydriver.CUstream stream) noexcept nogil:
    cdef const char* op = "forward_train_partials"
    cdef bn_desc d
    cdef int st = _split_resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    if d.N == 0:
        return CYBN_OK  # count 0: nothing to reduce (the combination ignores this process's values)
    if partials == 0:
        return _fail(CYBN_EINVAL, op, "null partials pointer")
    cdef cydriver.CUdeviceptr data[1]
    cdef cydriver.CUdeviceptr stats[1]
    data[0] = x; stats[0] = partials
    st = _aligned(c, op, data, 1, stats, 1)
    if st != CYBN_OK:
        return st
    cdef size_t row = _nstat(&d) * (8 if d.dtype == BN_FLOAT64 else 4)
    # partials only (the forward's other arguments unused): hi -> save_mean, lo -> save_invstd, variance ->
    # running_mean; running_var (the fourth row) and y (x, in place) are never written.
    d.flags = BN_DESC_PARTIALS
    d.act = 0
    d.residual = 0
    return _core_status(bn_forward_train_ex(&d, x, x, 0, 0, partials + 2 * row, partials + 3 * row, partials,
                                            partials + row, 0, stream), op, c)


cdef int forward_train_combined(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                                cydriver.CUdeviceptr y, cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias,
                                cydriver.CUdeviceptr running_mean, cydriver.CUdeviceptr running_var,
                                cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                                const double* mean, const double* var, int64_t count,
                                cydriver.CUdeviceptr scratch, cydriver.CUstream stream) noexcept nogil:
    cdef const char* op = "forward_train_combined"
    cdef bn_desc d
    cdef int st = _split_resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    cdef long long K = _nstat(&d), i
    cdef bint f64 = d.dtype == BN_FLOAT64, affine = d.flags & BN_DESC_AFFINE
    if count < 2:
        return _fail(CYBN_EINVAL, op, "count (values per statistic over every process) must be at least 2: the "
                     "batch variance of fewer is undefined")
    if running_mean == 0 or running_var == 0 or save_mean == 0 or save_invstd == 0 or scratch == 0:
        return _fail(CYBN_EINVAL, op, "null running statistics, saved statistics or scratch pointer")
    if affine and (scale == 0 or bias == 0):
        return _fail(CYBN_EINVAL, op, "affine descriptor with a null scale or bias")
    st = _host_values(mean, K, 0, op, "mean must be a host array of K finite values (K = C, or C * S per-activation)")
    if st == CYBN_OK:
        st = _host_values(var, K, 1, op, "var must be a host array of K finite values >= 0 (the biased variance)")
    if st != CYBN_OK:
        return st
    cdef cydriver.CUdeviceptr data[3]
    cdef cydriver.CUdeviceptr stats[7]
    data[0] = x; data[1] = y; data[2] = z if d.residual else 0
    stats[0] = scale; stats[1] = bias; stats[2] = running_mean; stats[3] = running_var; stats[4] = save_mean
    stats[5] = save_invstd; stats[6] = scratch
    st = _aligned(c, op, data, 3 if d.N else 0, stats, 7)
    if st != CYBN_OK:
        return st
    if d.N and (x == 0 or y == 0):
        return _fail(CYBN_EINVAL, op, "null x or y pointer")
    if d.residual and d.N and z == 0:
        return _fail(CYBN_EINVAL, op, "the descriptor has CYBN_RESIDUAL but z is null")
    st = _core_status(bn_sync_forward_overlap(&d, x, y, z if d.residual else 0, scale, bias, running_mean,
                                              running_var, save_mean, save_invstd, scratch), op, c)
    if st != CYBN_OK:
        return st
    # host: scale, rm, rv, then the outputs (tail 4K, save_mean, save_invstd, rm, rv) and a float32 stage (4K)
    cdef double* h = <double*>malloc(<size_t>K * 16 * sizeof(double))
    if h == NULL:
        return _fail(CYBN_EINVAL, op, "out of host memory for the statistics")
    cdef double* sc = h
    cdef double* rm = h + K
    cdef double* rv = h + 2 * K
    cdef double* tail = h + 3 * K
    cdef double* inv = h + 7 * K
    cdef double* hi = h + 8 * K
    cdef void* stage = <void*>(h + 9 * K)   # 7K doubles: the largest upload (4K values) and _get's floats
    cdef double eps = d.epsilon, f = d.factor, lo, run_var
    st = CYBN_OK
    if affine:
        st = _get(sc, scale, K, f64, <float*>stage, stream, op)
    if st == CYBN_OK:
        st = _get(rm, running_mean, K, f64, <float*>stage, stream, op)
    if st == CYBN_OK:
        st = _get(rv, running_var, K, f64, <float*>stage, stream, op)
    if st == CYBN_OK:
        for i in range(K):
            inv[i] = 1.0 / sqrt(var[i] + eps)
            hi[i] = mean[i] if f64 else <double><float>mean[i]
            lo = mean[i] - hi[i]
            tail[4 * i] = hi[i]; tail[4 * i + 1] = lo
            tail[4 * i + 2] = (sc[i] if affine else 1.0) * inv[i]; tail[4 * i + 3] = 0
            run_var = var[i] if d.flags & BN_DESC_BIASED_RUNNING_VAR else var[i] * (<double>count / (count - 1.0))
            rm[i] = (1.0 - f) * rm[i] + f * mean[i]
            rv[i] = (1.0 - f) * rv[i] + f * run_var
        if d.N:  # normalise first: a refused launch leaves the statistics untouched (only scratch written)
            st = _put(scratch, tail, 4 * K, f64, stage, stream, op)
            if st == CYBN_OK:
                st = _core_status(bn_normalize_given_ex(&d, x, y, scale, bias, scratch, z if d.residual else 0,
                                                        stream), op, c)
            if st == CYBN_OK:
                st = _driver(cydriver.cuStreamSynchronize(stream), op, "cuStreamSynchronize")  # stage reused
    cdef double* outs[4]
    cdef cydriver.CUdeviceptr dsts[4]
    outs[0] = hi; outs[1] = inv; outs[2] = rm; outs[3] = rv
    dsts[0] = save_mean; dsts[1] = save_invstd; dsts[2] = running_mean; dsts[3] = running_var
    for i in range(4):
        if st == CYBN_OK:
            st = _put(dsts[i], outs[i], K, f64, <void*>(<char*>stage + i * K * 8), stream, op)
    if st == CYBN_OK:
        st = _driver(cydriver.cuStreamSynchronize(stream), op, "cuStreamSynchronize")
    else:
        cydriver.cuStreamSynchronize(stream)  # the stage may still be read by a queued copy
    free(h)
    return st


cdef int backward_sums(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z, cydriver.CUdeviceptr y,
                       cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dz, cydriver.CUdeviceptr scale,
                       cydriver.CUdeviceptr bias, cydriver.CUdeviceptr save_mean, cydriver.CUdeviceptr save_invstd,
                       cydriver.CUdeviceptr sums, cydriver.CUstream stream) noexcept nogil:
    cdef const char* op = "backward_sums"
    cdef bn_desc d
    cdef int st = _split_resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    if d.N == 0:
        return CYBN_OK
    if sums == 0:
        return _fail(CYBN_EINVAL, op, "null sums pointer")
    if not d.residual:
        z = dz = 0
    if d.act == BN_ACT_NONE:
        y = 0
    cdef cydriver.CUdeviceptr data[5]
    cdef cydriver.CUdeviceptr stats[5]
    data[0] = x; data[1] = dy; data[2] = z; data[3] = y; data[4] = dz
    stats[0] = scale; stats[1] = bias; stats[2] = save_mean; stats[3] = save_invstd; stats[4] = sums
    st = _aligned(c, op, data, 5, stats, 5)
    if st != CYBN_OK:
        return st
    cdef size_t row = _nstat(&d) * (8 if d.dtype == BN_FLOAT64 else 4)
    d.flags = (d.flags & BN_DESC_AFFINE) | BN_DESC_SUMS  # no dx (dy stands in as the unwritten in-place dx)
    return _core_status(bn_backward_ex(&d, x, dy, dy, scale, save_mean, save_invstd, sums + row, sums,
                                       sums + 2 * row, 0, 0, bias, y, z, dz, stream), op, c)


cdef int backward_combined(const cybn_desc* c, cydriver.CUdeviceptr x, cydriver.CUdeviceptr z,
                           cydriver.CUdeviceptr y, cydriver.CUdeviceptr dy, cydriver.CUdeviceptr dx,
                           cydriver.CUdeviceptr scale, cydriver.CUdeviceptr bias, cydriver.CUdeviceptr save_mean,
                           cydriver.CUdeviceptr save_invstd, const double* sums, int64_t count,
                           cydriver.CUdeviceptr scale_grad, cydriver.CUdeviceptr bias_grad,
                           cydriver.CUdeviceptr scratch, cydriver.CUstream stream) noexcept nogil:
    cdef const char* op = "backward_combined"
    cdef bn_desc d
    cdef int st = _split_resolve(c, &d, op)
    if st != CYBN_OK:
        return st
    cdef long long K = _nstat(&d), i
    cdef bint f64 = d.dtype == BN_FLOAT64, affine = d.flags & BN_DESC_AFFINE
    cdef bint acc = d.flags & BN_DESC_ACCUMULATE
    if count < 2:
        return _fail(CYBN_EINVAL, op, "count (values per statistic over every process) must be at least 2")
    if save_mean == 0 or save_invstd == 0 or scale_grad == 0 or bias_grad == 0 or scratch == 0:
        return _fail(CYBN_EINVAL, op, "null saved statistics, gradient or scratch pointer")
    if affine and scale == 0:
        return _fail(CYBN_EINVAL, op, "affine descriptor with a null scale")
    st = _host_values(sums, 3 * K, 0, op, "sums must be a host array of 3 * K finite values (the summed rows of "
                      "backward_sums)")
    if st != CYBN_OK:
        return st
    if not d.residual:
        z = 0
    if d.act == BN_ACT_NONE:
        y = 0
    cdef bint recompute = d.act != BN_ACT_NONE and (y == 0 or d.act == BN_ACT_SWISH or d.act == BN_ACT_CLIPPED_RELU)
    if recompute and affine and bias == 0:
        return _fail(CYBN_EINVAL, op, "the pre-activation is recomputed (no y; swish and clipped relu always): "
                     "pass bias (the forward's)")
    if recompute and d.residual and z == 0:
        return _fail(CYBN_EINVAL, op, "the pre-activation is recomputed (no y; swish and clipped relu always): "
                     "pass z (the forward's residual)")
    if not recompute:
        z = 0
    cdef cydriver.CUdeviceptr data[5]
    cdef cydriver.CUdeviceptr stats[7]
    data[0] = x; data[1] = dy; data[2] = dx; data[3] = z; data[4] = y
    stats[0] = scale; stats[1] = bias; stats[2] = save_mean; stats[3] = save_invstd; stats[4] = scale_grad
    stats[5] = bias_grad; stats[6] = scratch
    st = _aligned(c, op, data, 5 if d.N else 0, stats, 7)
    if st != CYBN_OK:
        return st
    if d.N and (x == 0 or dy == 0 or dx == 0):
        return _fail(CYBN_EINVAL, op, "null x, dy or dx pointer")
    st = _core_status(bn_sync_backward_overlap(&d, x, dy, dx, y, z, scale, bias, save_mean, save_invstd, scale_grad,
                                               bias_grad, scratch), op, c)
    if st != CYBN_OK:
        return st
    cdef double* h = <double*>malloc(<size_t>K * 16 * sizeof(double))
    if h == NULL:
        return _fail(CYBN_EINVAL, op, "out of host memory for the sums")
    cdef double* sc = h
    cdef double* inv = h + K
    cdef double* gs = h + 2 * K
    cdef double* gb = h + 3 * K
    cdef double* tail = h + 4 * K
    cdef double* old = h + 8 * K
    cdef void* stage = <void*>(h + 9 * K)
    cdef double M = <double>count, lo, ds
    st = CYBN_OK
    if affine:
        st = _get(sc, scale, K, f64, <float*>stage, stream, op)
    if st == CYBN_OK:
        st = _get(inv, save_invstd, K, f64, <float*>stage, stream, op)
    if st == CYBN_OK:
        for i in range(K):
            lo = sums[2 * K + i] / M
            ds = (sums[K + i] - lo * sums[i]) * inv[i]
            gs[i] = (d.scale_grad_alpha if acc else 1.0) * ds
            gb[i] = (d.bias_grad_alpha if acc else 1.0) * sums[i]
            tail[4 * i] = (sc[i] if affine else 1.0) * inv[i]; tail[4 * i + 1] = sums[i] / M
            tail[4 * i + 2] = inv[i] * (ds / M); tail[4 * i + 3] = lo
    if st == CYBN_OK and acc and d.scale_grad_beta != 0:
        st = _get(old, scale_grad, K, f64, <float*>stage, stream, op)
        for i in range(K):
            gs[i] += d.scale_grad_beta * old[i]
    if st == CYBN_OK and acc and d.bias_grad_beta != 0:
        st = _get(old, bias_grad, K, f64, <float*>stage, stream, op)
        for i in range(K):
            gb[i] += d.bias_grad_beta * old[i]
    if st == CYBN_OK and d.N:  # dx first: a refused launch leaves the gradients untouched (only scratch written)
        st = _put(scratch, tail, 4 * K, f64, stage, stream, op)
        if bias == 0 or not affine:  # the dx kernel reads bias only to recompute the pre-activation
            d.flags &= ~BN_DESC_AFFINE
            bias = 0
        if st == CYBN_OK:
            st = _core_status(bn_backward_dx_given_ex(&d, x, dy, dx, save_mean, scratch, bias, y, z, stream), op, c)
        if st == CYBN_OK:
            st = _driver(cydriver.cuStreamSynchronize(stream), op, "cuStreamSynchronize")
    if st == CYBN_OK:
        st = _put(scale_grad, gs, K, f64, stage, stream, op)
    if st == CYBN_OK:
        st = _put(bias_grad, gb, K, f64, <void*>(<char*>stage + K * 8), stream, op)
    if st == CYBN_OK:
        st = _driver(cydriver.cuStreamSynchronize(stream), op, "cuStreamSynchronize")
    else:
        cydriver.cuStreamSynchronize(stream)
    free(h)
    return st


# cybn.h's signatures (void* streams) for the table.
cdef int _c_forward_train_partials(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr partials,
                                   void* stream) noexcept nogil:
    return forward_train_partials(d, x, partials, <cydriver.CUstream>stream)


cdef int _c_forward_train_combined(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                                   cybn_deviceptr scale, cybn_deviceptr bias, cybn_deviceptr running_mean,
                                   cybn_deviceptr running_var, cybn_deviceptr save_mean, cybn_deviceptr save_invstd,
                                   const double* mean, const double* var, int64_t count, cybn_deviceptr scratch,
                                   void* stream) noexcept nogil:
    return forward_train_combined(d, x, z, y, scale, bias, running_mean, running_var, save_mean, save_invstd, mean,
                                  var, count, scratch, <cydriver.CUstream>stream)


cdef int _c_backward_sums(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                          cybn_deviceptr dy, cybn_deviceptr dz, cybn_deviceptr scale, cybn_deviceptr bias,
                          cybn_deviceptr save_mean, cybn_deviceptr save_invstd, cybn_deviceptr sums,
                          void* stream) noexcept nogil:
    return backward_sums(d, x, z, y, dy, dz, scale, bias, save_mean, save_invstd, sums, <cydriver.CUstream>stream)


cdef int _c_backward_combined(const cybn_desc* d, cybn_deviceptr x, cybn_deviceptr z, cybn_deviceptr y,
                              cybn_deviceptr dy, cybn_deviceptr dx, cybn_deviceptr scale, cybn_deviceptr bias,
                              cybn_deviceptr save_mean, cybn_deviceptr save_invstd, const double* sums,
                              int64_t count, cybn_deviceptr scale_grad, cybn_deviceptr bias_grad,
                              cybn_deviceptr scratch, void* stream) noexcept nogil:
    return backward_combined(d, x, z, y, dy, dx, scale, bias, save_mean, save_invstd, sums, count, scale_grad,
                             bias_grad, scratch, <cydriver.CUstream>stream)
