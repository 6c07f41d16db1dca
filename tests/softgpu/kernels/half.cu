// Corpus: cuda_fp16.h and cuda_bf16.h arithmetic, comparisons and conversions.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

extern "C" __global__ void half_ops(const __half* a, const __half* b, __half* o, float* f, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half x = a[i], y = b[i];
    __half* r = o + 12 * i;
    r[0] = __hadd(x, y);
    r[1] = __hsub(x, y);
    r[2] = __hmul(x, y);
    r[3] = __hfma(x, y, x);
    r[4] = __hneg(x);
    r[5] = __habs(x);
    r[6] = __hmax(x, y);
    r[7] = __hmin(x, y);
    r[8] = __float2half_rn(__half2float(x) * 3.0f);
    r[9] = __hdiv(x, y);
    __half2 p = __halves2half2(x, y), q = __halves2half2(y, x);
    __half2 s = __hfma2(p, q, p);
    r[10] = __low2half(s);
    r[11] = __high2half(s);
    float* g = f + 6 * i;
    g[0] = __half2float(x);
    g[1] = __hlt(x, y);
    g[2] = __hgeu(x, y);
    g[3] = __hisnan(x);
    g[4] = (float)__half2int_rz(x);
    g[5] = __heq(x, y);
}

extern "C" __global__ void bf16_ops(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* fin,
                                    __nv_bfloat16* o, float* f, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_bfloat16 x = a[i], y = b[i];
    __nv_bfloat16* r = o + 8 * i;
    r[0] = __hadd(x, y);
    r[1] = __hsub(x, y);
    r[2] = __hmul(x, y);
    r[3] = __hfma(x, y, x);
    r[4] = __float2bfloat16(fin[i]);
    r[5] = __float2bfloat16_rz(fin[i]);
    r[6] = __hmax(x, y);
    __nv_bfloat162 p = __halves2bfloat162(x, y);
    r[7] = __high2bfloat16(__hmul2(p, p));
    f[2 * i] = __bfloat162float(x);
    f[2 * i + 1] = __hlt(x, y);
}
