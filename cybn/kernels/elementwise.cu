// Elementwise kernels of GPUArray and the Modules: fill, cast between float16/bfloat16/float32/float64, axpby,
// arithmetic (+ - * / with arrays and scalars) and strided copies.
//
// No CUDA headers on purpose: NVRTC compiles this with no include path in a fraction of the time
// cuda_fp16.h would take. float16 values travel as their 16-bit patterns and convert with the same
// PTX cvt instructions cuda_fp16.h uses (round-to-nearest-even, as numpy's float16). bfloat16 values
// travel the same way and convert with integer operations (cvt to bf16 needs sm_80/sm_90; this runs on
// every architecture), rounding to nearest even as ml_dtypes does.
// Every loop is grid-stride with 64-bit indices, so any launch size covers any array length.

typedef unsigned long long u64;
struct h16 { unsigned short bits; };  // a float16 by its bit pattern; a struct so it overloads apart from ints
struct b16 { unsigned short bits; };  // a bfloat16 likewise

#define GRID_STRIDE(i, start, n)                                                                   \
    for (u64 i = (start) + (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                     \
         i += (u64)gridDim.x * blockDim.x)

__device__ __forceinline__ float to_f32(h16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits)); return f; }
__device__ __forceinline__ h16 f32_to_h(float f) { h16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f)); return h; }
__device__ __forceinline__ h16 f64_to_h(double d) { h16 h; asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h.bits) : "d"(d)); return h; }

// bfloat16 is the top half of a float32: widening is exact; narrowing rounds the low 16 bits to nearest
// even (overflow becomes inf by the carry), NaN stays a quiet NaN of the same sign.
__device__ __forceinline__ float to_f32(b16 b) { return __uint_as_float((unsigned int)b.bits << 16); }
__device__ __forceinline__ b16 f32_to_b(float f) {
    const unsigned int u = __float_as_uint(f);
    b16 b;
    b.bits = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x40u)
                                             : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}
// double -> bfloat16 with one rounding: truncate to float32 and make it "round to odd" (set the last bit
// when bits were dropped), which float32's 16 spare bits then round correctly (no double rounding).
__device__ __forceinline__ b16 f64_to_b(double d) {
    const float t = __double2float_rz(d);
    const unsigned int sticky = (double)t != d && t == t;  // NaN compares unequal: leave it alone
    return f32_to_b(__uint_as_float(__float_as_uint(t) | sticky));
}

__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15) == 0; }

// ------------------------------------------------------------------------------------------- fill
// By bit pattern (1, 2, 4 or 8 bytes), so every dtype is covered and the host does the dtype's own
// rounding of the value. Aligned arrays are written 16 bytes per store.
template <typename T>
__device__ void fill(T* y, T v, u64 n) {
    u64 done = 0;
    if (aligned16(y)) {
        constexpr int k = 16 / sizeof(T);
        union { T s[k]; uint4 v4; } pack;
        for (int j = 0; j < k; ++j) pack.s[j] = v;
        const u64 n4 = n / k;
        GRID_STRIDE(i, 0, n4) reinterpret_cast<uint4*>(y)[i] = pack.v4;
        done = n4 * k;
    }
    GRID_STRIDE(i, done, n) y[i] = v;
}

extern "C" __global__ void cybn_fill_b8(unsigned char* y, unsigned int v, u64 n) { fill<unsigned char>(y, (unsigned char)v, n); }
extern "C" __global__ void cybn_fill_b16(unsigned short* y, unsigned int v, u64 n) { fill<unsigned short>(y, (unsigned short)v, n); }
extern "C" __global__ void cybn_fill_b32(unsigned int* y, unsigned int v, u64 n) { fill<unsigned int>(y, v, n); }
extern "C" __global__ void cybn_fill_b64(u64* y, u64 v, u64 n) { fill<u64>(y, v, n); }

// ------------------------------------------------------------------------------------------- cast
__device__ __forceinline__ void convert(float x, h16& y) { y = f32_to_h(x); }
__device__ __forceinline__ void convert(double x, h16& y) { y = f64_to_h(x); }  // one rounding, as numpy
__device__ __forceinline__ void convert(h16 x, float& y) { y = to_f32(x); }
__device__ __forceinline__ void convert(h16 x, double& y) { y = (double)to_f32(x); }  // exact
__device__ __forceinline__ void convert(float x, double& y) { y = (double)x; }
__device__ __forceinline__ void convert(double x, float& y) { y = __double2float_rn(x); }
__device__ __forceinline__ void convert(float x, b16& y) { y = f32_to_b(x); }
__device__ __forceinline__ void convert(double x, b16& y) { y = f64_to_b(x); }
__device__ __forceinline__ void convert(h16 x, b16& y) { y = f32_to_b(to_f32(x)); }  // f16 -> f32 is exact
__device__ __forceinline__ void convert(b16 x, float& y) { y = to_f32(x); }
__device__ __forceinline__ void convert(b16 x, double& y) { y = (double)to_f32(x); }
__device__ __forceinline__ void convert(b16 x, h16& y) { y = f32_to_h(to_f32(x)); }  // one rounding

template <typename S, typename D>
__device__ void cast(const S* __restrict__ x, D* __restrict__ y, u64 n) {
    GRID_STRIDE(i, 0, n) convert(x[i], y[i]);
}

#define CAST(NAME, S, D) \
    extern "C" __global__ void NAME(const S* __restrict__ x, D* __restrict__ y, u64 n) { cast<S, D>(x, y, n); }
CAST(cybn_cast_f32_f16, float, h16)
CAST(cybn_cast_f64_f16, double, h16)
CAST(cybn_cast_f16_f32, h16, float)
CAST(cybn_cast_f16_f64, h16, double)
CAST(cybn_cast_f32_f64, float, double)
CAST(cybn_cast_f64_f32, double, float)
CAST(cybn_cast_f16_bf16, h16, b16)
CAST(cybn_cast_f32_bf16, float, b16)
CAST(cybn_cast_f64_bf16, double, b16)
CAST(cybn_cast_bf16_f16, b16, h16)
CAST(cybn_cast_bf16_f32, b16, float)
CAST(cybn_cast_bf16_f64, b16, double)

// ------------------------------------------------------------------------------------------- axpby
// out = alpha * x + beta * y (out may be y). The _rn intrinsics keep the compiler from fusing into an
// FMA, so results are the plain rounded products and sum a numpy reference computes.
__device__ __forceinline__ float axpby1(float a, float x, float b, float y) { return __fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y)); }
__device__ __forceinline__ double axpby1(double a, double x, double b, double y) { return __dadd_rn(__dmul_rn(a, x), __dmul_rn(b, y)); }

extern "C" __global__ void cybn_axpby_f32(const float* x, const float* y, float* out, float alpha, float beta, u64 n) {
    u64 done = 0;
    if (aligned16(x) && aligned16(y) && aligned16(out)) {
        const u64 n4 = n / 4;
        GRID_STRIDE(i, 0, n4) {
            const float4 a = reinterpret_cast<const float4*>(x)[i], b = reinterpret_cast<const float4*>(y)[i];
            reinterpret_cast<float4*>(out)[i] = make_float4(axpby1(alpha, a.x, beta, b.x), axpby1(alpha, a.y, beta, b.y),
                                                            axpby1(alpha, a.z, beta, b.z), axpby1(alpha, a.w, beta, b.w));
        }
        done = n4 * 4;
    }
    GRID_STRIDE(i, done, n) out[i] = axpby1(alpha, x[i], beta, y[i]);
}

extern "C" __global__ void cybn_axpby_f64(const double* x, const double* y, double* out, double alpha, double beta, u64 n) {
    GRID_STRIDE(i, 0, n) out[i] = axpby1(alpha, x[i], beta, y[i]);
}

// float16 and bfloat16 in and out, float32 arithmetic (one rounding at the end).
template <typename T>
__device__ void axpby_f32_math(const T* x, const T* y, T* out, float alpha, float beta, u64 n) {
    GRID_STRIDE(i, 0, n) convert(axpby1(alpha, to_f32(x[i]), beta, to_f32(y[i])), out[i]);
}
#define AXPBY_NARROW(NAME, T) \
    extern "C" __global__ void NAME(const T* x, const T* y, T* out, float alpha, float beta, u64 n) { axpby_f32_math<T>(x, y, out, alpha, beta, n); }
AXPBY_NARROW(cybn_axpby_f16, h16)
AXPBY_NARROW(cybn_axpby_bf16, b16)

// ------------------------------------------------------------------------------------------- arithmetic
// out = a OP b (two arrays of n elements) or a OP s / s OP a (a scalar s); out may be a or b (in place:
// each element is read before it is written, by the same thread). float16 is computed in float32 and
// rounded once: for + - * / that is the correctly rounded float16 result (float32 carries more than
// 2 * 11 + 2 significand bits), which is what numpy computes; bfloat16 likewise (2 * 8 + 2 bits), as
// ml_dtypes computes. The _rn intrinsics forbid contraction.
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_RSUB, OP_RDIV };

template <int OP> __device__ __forceinline__ float op1(float a, float b) {
    return OP == OP_ADD ? __fadd_rn(a, b) : OP == OP_SUB ? __fsub_rn(a, b) : OP == OP_MUL ? __fmul_rn(a, b)
         : OP == OP_DIV ? __fdiv_rn(a, b) : OP == OP_RSUB ? __fsub_rn(b, a) : __fdiv_rn(b, a);
}
template <int OP> __device__ __forceinline__ double op1(double a, double b) {
    return OP == OP_ADD ? __dadd_rn(a, b) : OP == OP_SUB ? __dsub_rn(a, b) : OP == OP_MUL ? __dmul_rn(a, b)
         : OP == OP_DIV ? __ddiv_rn(a, b) : OP == OP_RSUB ? __dsub_rn(b, a) : __ddiv_rn(b, a);
}

__device__ __forceinline__ float load(h16 v) { return to_f32(v); }
__device__ __forceinline__ float load(b16 v) { return to_f32(v); }
__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ double load(double v) { return v; }
__device__ __forceinline__ void store(h16& d, float v) { d = f32_to_h(v); }
__device__ __forceinline__ void store(b16& d, float v) { d = f32_to_b(v); }
__device__ __forceinline__ void store(float& d, float v) { d = v; }
__device__ __forceinline__ void store(double& d, double v) { d = v; }

template <int OP, typename T>
__device__ void binary(const T* a, const T* b, T* out, u64 n) {
    GRID_STRIDE(i, 0, n) store(out[i], op1<OP>(load(a[i]), load(b[i])));
}

template <int OP, typename T, typename C>
__device__ void with_scalar(const T* a, C s, T* out, u64 n) {
    GRID_STRIDE(i, 0, n) store(out[i], op1<OP>(load(a[i]), s));
}

#define BINARY(NAME, OP, T) \
    extern "C" __global__ void NAME(const T* a, const T* b, T* out, u64 n) { binary<OP, T>(a, b, out, n); }
#define SCALAR(NAME, OP, T, C) \
    extern "C" __global__ void NAME(const T* a, C s, T* out, u64 n) { with_scalar<OP, T, C>(a, s, out, n); }
#define ARITHMETIC(SUFFIX, T, C)                                                                   \
    BINARY(cybn_add_##SUFFIX, OP_ADD, T) BINARY(cybn_sub_##SUFFIX, OP_SUB, T)                       \
    BINARY(cybn_mul_##SUFFIX, OP_MUL, T) BINARY(cybn_div_##SUFFIX, OP_DIV, T)                       \
    SCALAR(cybn_adds_##SUFFIX, OP_ADD, T, C) SCALAR(cybn_subs_##SUFFIX, OP_SUB, T, C)               \
    SCALAR(cybn_muls_##SUFFIX, OP_MUL, T, C) SCALAR(cybn_divs_##SUFFIX, OP_DIV, T, C)               \
    SCALAR(cybn_rsubs_##SUFFIX, OP_RSUB, T, C) SCALAR(cybn_rdivs_##SUFFIX, OP_RDIV, T, C)
ARITHMETIC(f16, h16, float)
ARITHMETIC(bf16, b16, float)
ARITHMETIC(f32, float, float)
ARITHMETIC(f64, double, double)

// ------------------------------------------------------------------------------------------- strided copy
// dst[j] = src[j] for the n elements of an ndim-dimensional index space, each side with its own strides:
// meta = shape[ndim], src strides[ndim], dst strides[ndim], in elements (signed: negative steps work).
// Used for the copies a GPUArray cannot express as a view (non-contiguous slices, transposes).
template <typename T>
__device__ void strided_copy(const T* src, T* dst, const long long* __restrict__ meta, int ndim, u64 n) {
    GRID_STRIDE(i, 0, n) {
        u64 rest = i;
        long long so = 0, d = 0;
        for (int k = ndim - 1; k >= 0; --k) {
            const u64 extent = (u64)meta[k];
            const long long idx = (long long)(rest % extent);
            rest /= extent;
            so += idx * meta[ndim + k];
            d += idx * meta[2 * ndim + k];
        }
        dst[d] = src[so];
    }
}

#define STRIDED(NAME, T) \
    extern "C" __global__ void NAME(const T* src, T* dst, const long long* meta, int ndim, u64 n) { strided_copy<T>(src, dst, meta, ndim, n); }
STRIDED(cybn_strided_b8, unsigned char)
STRIDED(cybn_strided_b16, unsigned short)
STRIDED(cybn_strided_b32, unsigned int)
STRIDED(cybn_strided_b64, u64)
