// Corpus: (nearly) every cuda_fp16.h / cuda_bf16.h arithmetic, comparison and conversion function,
// so that every inline-asm form those headers expand to is loaded and executed.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename H, typename H2>
__device__ void exercise(const H* a, H* o, float* f, int i) {
    H x = a[i], y = a[i + 32], z = a[i + 64];
    H2 p = H2(x, y), q = H2(y, z);
    H r[] = {__hadd(x, y), __hsub(x, y), __hmul(x, y), __hdiv(x, y), __hfma(x, y, z), __hneg(x), __habs(x),
             __hmax(x, y), __hmin(x, y), __hmax_nan(x, y), __hmin_nan(x, y), __hadd_sat(x, y), __hsub_sat(x, y),
             __hmul_sat(x, y), __hfma_sat(x, y, z), __hfma_relu(x, y, z), __hadd_rn(x, y), __hsub_rn(x, y),
             __hmul_rn(x, y), hsqrt(x), hrsqrt(x), hrcp(x), hexp(x), hexp2(x), hexp10(x), hlog(x), hlog2(x),
             hlog10(x), hsin(x), hcos(x), hceil(x), hfloor(x), htrunc(x), hrint(x)};
    H2 r2[] = {__hadd2(p, q), __hsub2(p, q), __hmul2(p, q), __h2div(p, q), __hfma2(p, q, p), __hneg2(p), __habs2(p),
               __hmax2(p, q), __hmin2(p, q), __hadd2_sat(p, q), __hfma2_relu(p, q, p), h2sqrt(p), h2rsqrt(p),
               h2rcp(p), h2exp(p), h2exp2(p), h2log(p), h2log2(p), h2sin(p), h2cos(p), h2ceil(p), h2floor(p),
               h2trunc(p), h2rint(p), __heq2(p, q), __hne2(p, q), __hlt2(p, q), __hle2(p, q), __hgt2(p, q),
               __hge2(p, q), __hequ2(p, q), __hneu2(p, q), __hltu2(p, q), __hgeu2(p, q), __hisnan2(p),
               __lowhigh2highlow(p), __shfl_xor_sync(~0u, p, 1), __shfl_down_sync(~0u, p, 1)};
    int c = __heq(x, y) + 2 * __hne(x, y) + 4 * __hlt(x, y) + 8 * __hle(x, y) + 16 * __hgt(x, y) + 32 * __hge(x, y) +
            64 * __hequ(x, y) + 128 * __hneu(x, y) + 256 * __hltu(x, y) + 512 * __hleu(x, y) + 1024 * __hgtu(x, y) +
            2048 * __hgeu(x, y) + 4096 * __hisnan(x) + 8192 * __hisinf(x) + 16384 * __hbeq2(p, q) +
            32768 * __hblt2(p, q) + 65536 * __hbgtu2(p, q);
    const int nr = sizeof(r) / sizeof(r[0]), nr2 = sizeof(r2) / sizeof(r2[0]);
    for (int k = 0; k < nr; ++k) o[k * 32 + i] = r[k];
    for (int k = 0; k < nr2; ++k) {
        o[(nr + 2 * k) * 32 + i] = r2[k].x;
        o[(nr + 2 * k + 1) * 32 + i] = r2[k].y;
    }
    f[i] = c;
}

extern "C" __global__ void all_half(const __half* a, __half* o, float* f, const float* fin, long long* conv) {
    int i = threadIdx.x;
    exercise<__half, __half2>(a, o, f, i);
    float v = fin[i];
    __half x = a[i];
    long long* c = conv + 24 * i;
    c[0] = __half_as_ushort(__float2half_rn(v)); c[1] = __half_as_ushort(__float2half_rz(v));
    c[2] = __half_as_ushort(__float2half_rd(v)); c[3] = __half_as_ushort(__float2half_ru(v));
    c[4] = __half2int_rn(x); c[5] = __half2int_rz(x); c[6] = __half2int_rd(x); c[7] = __half2int_ru(x);
    c[8] = __half2uint_rn(x); c[9] = __half2ll_rn(x); c[10] = __half2ull_rz(x); c[11] = __half2short_rn(x);
    c[12] = __half_as_ushort(__int2half_rn(i * 1001 - 7000)); c[13] = __half_as_ushort(__uint2half_rd(i * 3001u));
    c[14] = __half_as_ushort(__ll2half_ru(i * 123457ll)); c[15] = __half_as_ushort(__short2half_rz((short)(i * 999)));
    c[16] = __half_as_ushort(__double2half((double)v * 1.0000001));
    c[17] = __half_as_ushort(__ushort2half_rn((unsigned short)(i * 2047)));
    float2 two = __half22float2(__floats2half2_rn(v, -v));
    c[18] = __float_as_int(two.x); c[19] = __float_as_int(two.y);
    c[20] = __half_as_ushort(__float2half(v)); c[21] = __half2ushort_rz(x);
    c[22] = __half_as_short(x); c[23] = __half2uint_ru(x);
}

extern "C" __global__ void all_bf16(const __nv_bfloat16* a, __nv_bfloat16* o, float* f, const float* fin, long long* conv) {
    int i = threadIdx.x;
    exercise<__nv_bfloat16, __nv_bfloat162>(a, o, f, i);
    float v = fin[i];
    __nv_bfloat16 x = a[i];
    long long* c = conv + 12 * i;
    c[0] = __bfloat16_as_ushort(__float2bfloat16_rn(v)); c[1] = __bfloat16_as_ushort(__float2bfloat16_rz(v));
    c[2] = __bfloat16_as_ushort(__float2bfloat16_rd(v)); c[3] = __bfloat16_as_ushort(__float2bfloat16_ru(v));
    c[4] = __bfloat162int_rn(x); c[5] = __bfloat162int_rz(x); c[6] = __bfloat162ll_rd(x); c[7] = __bfloat162uint_ru(x);
    c[8] = __bfloat16_as_ushort(__int2bfloat16_rn(i * 1001 - 7000));
    c[9] = __bfloat16_as_ushort(__double2bfloat16((double)v));
    c[10] = __bfloat16_as_ushort(__ushort2bfloat16_rn((unsigned short)(i * 2047)));
    c[11] = __float_as_int(__bfloat162float(x));
}
