"""Every float operation that produces a NaN returns NVIDIA's canonical NaN (f32 0x7fffffff,
f16/bf16 0x7fff), whatever the operands' payloads; min/max return the non-NaN operand (both NaN, or
.NaN: canonical NaN); a NaN never leaks the x86 pattern 0xffc00000."""
import numpy as np

from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, run

SOURCE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void nans(const float* v, const double* dv, const unsigned short* hv, unsigned* o, unsigned short* ho,
                                float* acc) {
    float inf = v[0], zero = v[1], one = v[2], neg = v[3], pnan = v[4], two = v[5];
    float r;
    o[0] = __float_as_uint(inf - inf);
    o[1] = __float_as_uint(inf + -inf);
    o[2] = __float_as_uint(zero * inf);
    o[3] = __float_as_uint(fmaf(zero, inf, one));
    o[4] = __float_as_uint(zero / zero);
    o[5] = __float_as_uint(sqrtf(neg));
    o[6] = __float_as_uint(rsqrtf(neg));
    o[7] = __float_as_uint(__log2f(neg));
    o[8] = __float_as_uint(__sinf(inf));
    o[9] = __float_as_uint(pnan + one);           // a NaN operand with a payload: canonical out
    o[10] = __float_as_uint(pnan * two);
    o[11] = __float_as_uint(fminf(pnan, two));    // min/max: the other operand
    o[12] = __float_as_uint(fmaxf(one, pnan));
    o[13] = __float_as_uint(fminf(pnan, inf - inf));  // both NaN: canonical
    asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(two), "f"(pnan)); o[14] = __float_as_uint(r);
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(pnan), "f"(two)); o[15] = __float_as_uint(r);
    o[16] = __float_as_uint((float)dv[0]);        // cvt.rn.f32.f64 of a NaN
    o[17] = __float_as_uint(__half2float(__ushort_as_half(hv[0])));  // cvt.f32.f16 of a NaN
    o[18] = __float_as_uint(rintf(pnan));         // cvt.rni.f32.f32
    o[19] = __float_as_uint(__fdividef(zero, zero));
    asm("add.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(inf), "f"(-inf)); o[20] = __float_as_uint(r);
    asm("mul.rz.f32 %0, %1, %2;" : "=f"(r) : "f"(zero), "f"(inf)); o[21] = __float_as_uint(r);
    o[22] = __float_as_uint(__frcp_rn(pnan));
    o[23] = __float_as_uint(exp2f(pnan));
    o[24] = __float_as_uint(fabsf(pnan));         // abs is a bit operation: the payload stays
    o[25] = __float_as_uint(-pnan);               // so is neg
    atomicAdd(acc, pnan);
    __half h = __ushort_as_half(hv[1]), hz = __ushort_as_half(hv[2]);   // +inf, 0
    ho[0] = __half_as_ushort(__hsub(h, h));
    ho[1] = __half_as_ushort(__hmul(hz, h));
    ho[2] = __half_as_ushort(__hmin(__ushort_as_half(hv[0]), __ushort_as_half(hv[0])));
    ho[3] = __half_as_ushort(__hadd(__ushort_as_half(hv[0]), hz));
    __nv_bfloat16 b = __ushort_as_bfloat16(hv[3]), bz = __ushort_as_bfloat16(hv[4]);  // +inf, 0
    ho[4] = __bfloat16_as_ushort(__hsub(b, b));
    ho[5] = __bfloat16_as_ushort(__hmul(bz, b));
    ho[6] = __half_as_ushort(__float2half(pnan));        // cvt.rn.f16.f32 of a NaN
    ho[7] = __bfloat16_as_ushort(__float2bfloat16(pnan));
}
"""

CANON = 0x7FFFFFFF
PAYLOAD = 0xFFA00001  # a negative quiet NaN with a payload


def test_every_nan_is_canonical(ctx):
    v = np.array([np.inf, 0, 1, -1, 0, 2], np.float32)
    v.view(np.uint32)[4] = PAYLOAD
    dv = np.array([np.nan], np.float64)
    dv.view(np.uint64)[0] = 0xFFF8000000000123
    hv = np.array([0xFE01, 0x7C00, 0, 0x7F80, 0], np.uint16)  # f16 NaN with payload, +inf, 0, bf16 +inf, 0
    with Module(compile_ptx(SOURCE)) as m, Device() as d:
        pv, pd, ph = d.put(v), d.put(dv), d.put(hv)
        po, pho, pacc = d.zeros(26, np.uint32), d.zeros(8, np.uint16), d.zeros(1, np.float32)
        run(m.fn("nans"), (1,), (1,), pv, pd, ph, po, pho, pacc)
        o, ho, acc = d.get(po, 26, np.uint32), d.get(pho, 8, np.uint16), d.get(pacc, 1, np.uint32)
    want = [CANON] * 26
    want[11] = np.float32(2).view(np.uint32)
    want[12] = np.float32(1).view(np.uint32)
    want[24] = PAYLOAD & 0x7FFFFFFF
    want[25] = PAYLOAD ^ 0x80000000
    assert [hex(x) for x in o] == [hex(x) for x in want]
    assert acc[0] == CANON
    assert [hex(x) for x in ho] == [hex(0x7FFF)] * 8
