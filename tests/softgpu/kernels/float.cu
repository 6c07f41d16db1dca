// Corpus: float arithmetic, special values, unordered comparisons, conversions. Compiled with and
// without --ftz=true to exercise both subnormal behaviours.
extern "C" __global__ void float_ops(const float* a, const float* b, float* f, int* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = a[i], y = b[i];
    float* o = f + 12 * i;
    int* k = c + 12 * i;
    o[0] = x + y;
    o[1] = x * y;
    o[2] = __fdiv_rn(x, y);
    o[3] = __fsqrt_rn(fabsf(x));
    o[4] = fmaf(x, y, 1.0f);
    o[5] = __frcp_rn(y);
    o[6] = fminf(x, y);
    o[7] = fmaxf(x, y);
    o[8] = copysignf(x, y);
    o[9] = x - y;
    o[10] = (float)((double)x * (double)y);
    o[11] = __int2float_rz(k[0] = __float2int_rn(x * 1000.0f));
    k[1] = x < y;
    k[2] = !(x >= y);  // unordered less-than
    k[3] = x == y;
    k[4] = x != y;     // unordered not-equal
    k[5] = isnan(x);
    k[6] = isinf(x);
    k[7] = __float2int_rz(x * 1000.0f);
    k[8] = __float2int_rd(x * 1000.0f);
    k[9] = __float2int_ru(x * 1000.0f);
    k[10] = (int)__float2uint_rn(x);
    k[11] = signbit(x) != 0;
}
