// bn_epilogue.cuh: the fused BatchNorm epilogue y = act(bn(x) [+ z]) and its derivative, in P = float
// (float32, float16, bfloat16 data) or P = double (float64 data).
//
// Kernel ABI (every layout's kernels follow it; the NCHW and per-activation kernels of batchnorm.cu
// and the channels-last kernels of batchnorm_nhwc.cu). Each kernel is `template <typename T, int EPI>`:
// EPI 0 = plain (no epilogue code, the appended arguments are ignored and may be 0), EPI 1 = fused.
// Every kernel takes the appended arguments whatever EPI is (one signature per kernel name), after
// today's arguments, in this order (P = io<T>::P):
//   forward train, normalize (inference and the split training's second launch):
//       ..., const T* z, int act, P alpha
//     z: the residual (x's shape, layout and dtype; 0: none): y = act(bn(x) + z).
//   backward (the reduction; also the eval-mode backward), backward dx (the split's second launch):
//       ..., const P* bias, const T* y, const T* z, T* dz, int act, P alpha
//     bias: 0 when not affine (then 0); y: the forward's output (0: not kept); z: the forward's residual,
//     read only where v is recomputed (see below; 0: the forward had none); dz: where dz = dy * act'(v)
//     is written (0: not written; only the reduction kernel writes it, backward dx ignores it);
//     dx, dscale and dbias are then the BatchNorm gradients of dz.
//   act: a BN_ACT_* id below; alpha: its parameter (clipped relu's ceiling, leaky relu's slope, elu's
//   alpha; ignored by the others).
// The derivative comes from y (act_grad_y) for every act but swish; swish, or any act when y == 0,
// recomputes v = (x - mean) * scale * invstd + bias (+ z) from x (act_grad_v). Kinks as torch:
// relu'(0) = 0, clipped relu' = 1 only for 0 < v < alpha, leaky'(0) = alpha, elu'(0) = alpha.
// From y these hold for alpha >= 0 (leaky relu, elu) and alpha > 0 (clipped relu): the host checks.
#pragma once
#include "welford.cuh"  // add_rn, sub_rn, fma_

#include "bn_abi.h"  // BN_ACT_* ids

__device__ __forceinline__ float ep_exp(float v) { return expf(v); }
__device__ __forceinline__ double ep_exp(double v) { return exp(v); }
__device__ __forceinline__ float ep_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double ep_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float ep_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double ep_tanh(double v) { return tanh(v); }

// 1 / (1 + e^-v): exp(-v) overflows to inf for very negative v, giving 0 (never NaN).
template <typename P>
__device__ __forceinline__ P ep_sigmoid(P v) { return P(1) / (P(1) + ep_exp(-v)); }

// Whether the backward needs the pre-activation v (recomputed from x) rather than the output y.
__device__ __forceinline__ bool act_needs_v(int act, bool have_y) { return act == BN_ACT_SWISH || !have_y; }

template <typename P>
__device__ __forceinline__ P act_forward(int act, P v, P alpha) {
    switch (act) {
        case BN_ACT_RELU: return v > P(0) ? v : P(0);
        case BN_ACT_CLIPPED_RELU: return v > P(0) ? (v < alpha ? v : alpha) : P(0);
        case BN_ACT_LEAKY_RELU: return v > P(0) ? v : alpha * v;
        case BN_ACT_ELU: return v > P(0) ? v : alpha * ep_expm1(v);
        case BN_ACT_SIGMOID: return ep_sigmoid(v);
        case BN_ACT_TANH: return ep_tanh(v);
        case BN_ACT_SWISH: return v * ep_sigmoid(v);
        default: return v;
    }
}

// act'(v) from the pre-activation.
template <typename P>
__device__ __forceinline__ P act_grad_v(int act, P v, P alpha) {
    switch (act) {
        case BN_ACT_RELU: return v > P(0) ? P(1) : P(0);
        case BN_ACT_CLIPPED_RELU: return v > P(0) && v < alpha ? P(1) : P(0);
        case BN_ACT_LEAKY_RELU: return v > P(0) ? P(1) : alpha;
        case BN_ACT_ELU: return v > P(0) ? P(1) : alpha * ep_exp(v);
        case BN_ACT_SIGMOID: { const P s = ep_sigmoid(v); return s * (P(1) - s); }
        case BN_ACT_TANH: { const P t = ep_tanh(v); return P(1) - t * t; }
        case BN_ACT_SWISH: { const P s = ep_sigmoid(v); return s * (P(1) + v * (P(1) - s)); }
        default: return P(1);
    }
}

// act'(v) from the output y = act(v) (not for swish: act_needs_v).
template <typename P>
__device__ __forceinline__ P act_grad_y(int act, P y, P alpha) {
    switch (act) {
        case BN_ACT_RELU: return y > P(0) ? P(1) : P(0);
        case BN_ACT_CLIPPED_RELU: return y > P(0) && y < alpha ? P(1) : P(0);
        case BN_ACT_LEAKY_RELU: return y > P(0) ? P(1) : alpha;
        case BN_ACT_ELU: return y > P(0) ? P(1) : y + alpha;  // alpha e^v = alpha (e^v - 1) + alpha
        case BN_ACT_SIGMOID: return y * (P(1) - y);
        case BN_ACT_TANH: return P(1) - y * y;
        default: return P(1);
    }
}

// ---------------------------------------------------------------- the epilogue in the kernels
// Forward: the output from the normalised value v and the residual's value zv (0 without one).
template <int EPI, typename P>
__device__ __forceinline__ P epi_out(P v, P zv, int act, P alpha) {
    if constexpr (EPI) return act_forward(act, v + zv, alpha);
    else return v;
}

// Backward: the gradient of the pre-activation, g = dy * act'(v), from dy (vd) and the second stream's
// value ev: y's where use_y (act_grad_y), else z's (0 without a residual), with v recomputed from x
// as ((x - hi) * a + b) + ev, a = scale * invstd, b = bias.
template <int EPI, typename P>
__device__ __forceinline__ P epi_grad(P vd, P vx, P ev, bool use_y, P hi, P a, P b, int act, P alpha) {
    if constexpr (EPI) {
        const P d = use_y ? act_grad_y(act, ev, alpha) : act_grad_v(act, fma_(sub_rn(vx, hi), a, b) + ev, alpha);
        return vd * d;
    } else {
        return vd;
    }
}
