// Corpus: integer instructions (mul.hi, div/rem with negatives, bfe/bfi/prmt/popc/clz/brev, shifts).
extern "C" __global__ void int_ops(const int* a, const int* b, long long* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int x = a[i], y = b[i];
    unsigned ux = (unsigned)x, uy = (unsigned)y;
    long long X = (long long)x * 77777, Y = (long long)y + (y >= 0 ? 1 : -1);
    long long* o = out + 24 * i;
    o[0] = __mulhi(x, y);
    o[1] = __umulhi(ux, uy);
    o[2] = x / (y == 0 ? 1 : y);
    o[3] = x % (y == 0 ? 1 : y);
    o[4] = ux / (uy == 0 ? 1u : uy);
    o[5] = X / Y;
    o[6] = X % Y;
    o[7] = __popc(ux);
    o[8] = __clz(x);
    o[9] = __brev(ux);
    o[10] = __byte_perm(ux, uy, 0x5140u);
    unsigned e;
    asm("bfe.u32 %0, %1, %2, %3;" : "=r"(e) : "r"(ux), "r"(uy & 31), "r"(7u));
    o[11] = e;
    int se;
    asm("bfe.s32 %0, %1, %2, %3;" : "=r"(se) : "r"(x), "r"(uy & 31), "r"(5u));
    o[12] = se;
    unsigned bi;
    asm("bfi.b32 %0, %1, %2, %3, %4;" : "=r"(bi) : "r"(ux), "r"(uy), "r"(ux & 31), "r"(6u));
    o[13] = bi;
    o[14] = x >> (uy & 31);
    o[15] = ux >> (uy & 31);
    o[16] = (long long)(ux << (uy & 31));
    o[17] = __ffs(x);
    o[18] = __popcll((unsigned long long)X);
    o[19] = __clzll(X);
    o[20] = (long long)__mul64hi(X, Y);
    o[21] = min(x, y) + 3 * max(ux, uy);
    o[22] = __sad(x, y, 5u);
    o[23] = (long long)__umul64hi((unsigned long long)X, (unsigned long long)Y);
}
