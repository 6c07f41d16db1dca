// bn_io.cuh: the element types of the BatchNorm kernels. io<T> for data T in {float, __half,
// __nv_bfloat16, double}: P, the accumulator / statistics / parameter type (float for the first three,
// double for double), vec, the elements of one 16-byte unit, and scalar load/store and 16-byte
// unpack/pack between T and P. Half-precision data is widened to float on load and rounded once
// (to nearest even) on store.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename T> struct io;

// Vectors of the parameter type P: pv<P>::v2 / v4 (float2 / float4, double2 / dbl4), trio<P>, made by
// mk2 / mk4 / mk3 (CUDA 13 deprecates double4: dbl4 is 16-byte aligned, two 16-byte accesses).
struct __align__(16) dbl4 { double x, y, z, w; };
template <typename P> struct trio { P x, y, z; };
template <typename P> struct pv;
template <> struct pv<float> { using v2 = float2; using v4 = float4; };
template <> struct pv<double> { using v2 = double2; using v4 = dbl4; };
__device__ __forceinline__ float2 mk2(float a, float b) { return make_float2(a, b); }
__device__ __forceinline__ double2 mk2(double a, double b) { return make_double2(a, b); }
__device__ __forceinline__ float4 mk4(float a, float b, float c, float d) { return make_float4(a, b, c, d); }
__device__ __forceinline__ dbl4 mk4(double a, double b, double c, double d) { return dbl4{a, b, c, d}; }
template <typename P>
__device__ __forceinline__ trio<P> mk3(P a, P b, P c) { return trio<P>{a, b, c}; }

template <> struct io<float> {
    using P = float;
    static constexpr int vec = 4;
    static __device__ __forceinline__ float load(const float* p) { return *p; }
    static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
    static __device__ __forceinline__ void unpack(uint4 u, float* v) {
        v[0] = __uint_as_float(u.x); v[1] = __uint_as_float(u.y);
        v[2] = __uint_as_float(u.z); v[3] = __uint_as_float(u.w);
    }
    static __device__ __forceinline__ uint4 pack(const float* v) {
        return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
    }
};

template <> struct io<__half> {
    using P = float;
    static constexpr int vec = 8;
    static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
    static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
    static __device__ __forceinline__ float2 half2_bits(unsigned b) {
        __half2 h = *reinterpret_cast<__half2*>(&b);
        return __half22float2(h);
    }
    static __device__ __forceinline__ unsigned bits_half2(float a, float b) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<unsigned*>(&h);
    }
    static __device__ __forceinline__ void unpack(uint4 u, float* v) {
        float2 a = half2_bits(u.x), b = half2_bits(u.y), c = half2_bits(u.z), d = half2_bits(u.w);
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y; v[4] = c.x; v[5] = c.y; v[6] = d.x; v[7] = d.y;
    }
    static __device__ __forceinline__ uint4 pack(const float* v) {
        return make_uint4(bits_half2(v[0], v[1]), bits_half2(v[2], v[3]), bits_half2(v[4], v[5]), bits_half2(v[6], v[7]));
    }
};

template <> struct io<__nv_bfloat16> {
    using P = float;
    static constexpr int vec = 8;
    static __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
    static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
    // bf16 is the top half of a float32: widening is a shift, exact.
    static __device__ __forceinline__ float2 bf2_bits(unsigned b) {
        return make_float2(__uint_as_float(b << 16), __uint_as_float(b & 0xffff0000u));
    }
    static __device__ __forceinline__ unsigned bits_bf2(float a, float b) {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        return *reinterpret_cast<unsigned*>(&h);
    }
    static __device__ __forceinline__ void unpack(uint4 u, float* v) {
        float2 a = bf2_bits(u.x), b = bf2_bits(u.y), c = bf2_bits(u.z), d = bf2_bits(u.w);
        v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y; v[4] = c.x; v[5] = c.y; v[6] = d.x; v[7] = d.y;
    }
    static __device__ __forceinline__ uint4 pack(const float* v) {
        return make_uint4(bits_bf2(v[0], v[1]), bits_bf2(v[2], v[3]), bits_bf2(v[4], v[5]), bits_bf2(v[6], v[7]));
    }
};

template <> struct io<double> {
    using P = double;
    static constexpr int vec = 2;
    static __device__ __forceinline__ double load(const double* p) { return *p; }
    static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
    static __device__ __forceinline__ void unpack(uint4 u, double* v) {
        v[0] = __hiloint2double((int)u.y, (int)u.x);
        v[1] = __hiloint2double((int)u.w, (int)u.z);
    }
    static __device__ __forceinline__ uint4 pack(const double* v) {
        return make_uint4((unsigned)__double2loint(v[0]), (unsigned)__double2hiint(v[0]),
                          (unsigned)__double2loint(v[1]), (unsigned)__double2hiint(v[1]));
    }
};
