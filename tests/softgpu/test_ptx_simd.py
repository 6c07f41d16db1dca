"""Integer SIMD ("video") instructions, dp4a/dp2a and bmsk, from NVRTC's own intrinsics (__dp4a,
__dp2a_lo/hi, __vabsdiff*, __vsad*, __vabs*) and inline PTX for the forms the intrinsics do not
reach (other vop2/vop4 operations, .sat, .add, vset), compared with a plain-Python reference of
the PTX ISA's definitions."""
import numpy as np
import pytest

from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, run

ASM = {  # name -> (PTX instruction, lanes, op, d/a/b signed, sat, add)
    "vadd4_sat_s": ("vadd4.s32.s32.s32.sat", 4, "add", (1, 1, 1), True, False),
    "vsub4_u": ("vsub4.u32.u32.u32", 4, "sub", (0, 0, 0), False, False),
    "vavrg4_s": ("vavrg4.s32.s32.s32", 4, "avrg", (1, 1, 1), False, False),
    "vmin4_u": ("vmin4.u32.u32.u32", 4, "min", (0, 0, 0), False, False),
    "vmax4_s_add": ("vmax4.s32.s32.s32.add", 4, "max", (1, 1, 1), False, True),
    "vadd2_sat_u": ("vadd2.u32.u32.u32.sat", 2, "add", (0, 0, 0), True, False),
    "vsub2_s_add": ("vsub2.s32.s32.s32.add", 2, "sub", (1, 1, 1), False, True),
    "vabsdiff2_s": ("vabsdiff2.s32.s32.s32", 2, "absdiff", (1, 1, 1), False, False),
    "vmax2_u": ("vmax2.u32.u32.u32", 2, "max", (0, 0, 0), False, False),
    "vset4_lt_s": ("vset4.s32.s32.lt", 4, "lt", (0, 1, 1), False, False),
    "vset2_ge_u_add": ("vset2.u32.u32.ge.add", 2, "ge", (0, 0, 0), False, True),
    "bmsk_clamp": ("bmsk.clamp.b32", 0, "bmsk_clamp", None, False, False),
    "bmsk_wrap": ("bmsk.wrap.b32", 0, "bmsk_wrap", None, False, False),
}
INTRINSICS = ["__dp4a(a, b, c)", "__dp4a((int)a, (int)b, (int)c)", "__dp2a_lo(a, b, c)", "__dp2a_hi((int)a, (int)b, (int)c)",
              "__vabsdiffu4(a, b)", "__vabsdiffs4(a, b)", "__vabs4(a)", "__vabsss4(a)", "__vsads4(a, b)", "__vsadu4(a, b)",
              "__vsadu2(a, b)", "__vabsdiffu2(a, b)"]


def source():
    lines = []
    for k, (ins, *_rest) in enumerate(ASM.values()):
        if ins.startswith("bmsk"):
            lines.append('asm("%s %%0, %%1, %%2;" : "=r"(r) : "r"(a & 63), "r"(b & 63)); o[%d] = r;' % (ins, k))
        else:
            lines.append('asm("%s %%0, %%1, %%2, %%3;" : "=r"(r) : "r"(a), "r"(b), "r"(c)); o[%d] = r;' % (ins, k))
    for k, expr in enumerate(INTRINSICS):
        lines.append("o[%d] = (unsigned)(%s);" % (len(ASM) + k, expr))
    return ('extern "C" __global__ void simd(const unsigned* x, unsigned* out, int n) {\n'
            "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i >= n) return;\n"
            "    unsigned a = x[3 * i], b = x[3 * i + 1], c = x[3 * i + 2], r;\n"
            "    unsigned* o = out + i * %d;\n    " % (len(ASM) + len(INTRINSICS)) + "\n    ".join(lines) + "\n}\n")


def lanes(v, bits, signed):
    out = []
    for i in range(32 // bits):
        x = (v >> (i * bits)) & ((1 << bits) - 1)
        out.append(x - (1 << bits) if signed and x >> (bits - 1) else x)
    return out


def vop(a, b, c, n, op, signs, sat, add):
    bits = 32 // n
    sd, sa, sb = signs
    r = []
    for x, y in zip(lanes(a, bits, sa), lanes(b, bits, sb)):
        r.append({"add": x + y, "sub": x - y, "avrg": (x + y + 1) >> 1, "absdiff": abs(x - y), "min": min(x, y),
                  "max": max(x, y), "lt": int(x < y), "ge": int(x >= y)}[op])
    if add:
        return (sum(r) + c) & 0xffffffff
    if sat:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if sd else (0, (1 << bits) - 1)
        r = [min(max(v, lo), hi) for v in r]
    return sum((v & ((1 << bits) - 1)) << (i * bits) for i, v in enumerate(r))


def bmsk(pos, width, wrap):
    pos, width = (pos & 31, width & 31) if wrap else (min(pos, 32), min(width, 32))
    return 0 if pos >= 32 else (((1 << width) - 1) << pos) & 0xffffffff


def intrinsic(k, a, b, c):
    s8 = lambda v: lanes(v, 8, True)  # noqa: E731
    u8 = lambda v: lanes(v, 8, False)  # noqa: E731
    sc = c - (1 << 32) if c >> 31 else c
    vals = [
        c + sum(x * y for x, y in zip(u8(a), u8(b))),
        sc + sum(x * y for x, y in zip(s8(a), s8(b))),
        c + sum(x * y for x, y in zip(lanes(a, 16, False), u8(b)[:2])),
        sc + sum(x * y for x, y in zip(lanes(a, 16, True), s8(b)[2:])),
        vop(a, b, 0, 4, "absdiff", (0, 0, 0), False, False),
        vop(a, b, 0, 4, "absdiff", (0, 1, 1), False, False),
        sum((abs(x) & 0xff) << (8 * i) for i, x in enumerate(s8(a))),
        sum((min(abs(x), 127) & 0xff) << (8 * i) for i, x in enumerate(s8(a))),
        sum(abs(x - y) for x, y in zip(s8(a), s8(b))),
        sum(abs(x - y) for x, y in zip(u8(a), u8(b))),
        sum(abs(x - y) for x, y in zip(lanes(a, 16, False), lanes(b, 16, False))),
        vop(a, b, 0, 2, "absdiff", (0, 0, 0), False, False),
    ]
    return vals[k] & 0xffffffff


def test_simd_video_dp4a_dp2a_bmsk(ctx):
    n = 256
    rng = np.random.default_rng(42)
    x = rng.integers(0, 1 << 32, 3 * n, dtype=np.uint64).astype(np.uint32)
    x[:12] = [0x7f7f7f7f, 0x80808080, 5, 0xffffffff, 0x01010101, 0xfffffff0, 0, 0, 0x7fffffff, 0x80008000, 0x7fff7fff, 1]
    width = len(ASM) + len(INTRINSICS)
    with Module(compile_ptx(source())) as m, Device() as d:
        px, po = d.put(x), d.zeros(n * width, np.uint32)
        run(m.fn("simd"), (2,), (128,), px, po, np.int32(n))
        got = d.get(po, n * width, np.uint32).reshape(n, width)
    for i in range(n):
        a, b, c = (int(v) for v in x[3 * i:3 * i + 3])
        for k, (name, (_ins, nl, op, signs, sat, add)) in enumerate(ASM.items()):
            want = bmsk(a & 63, b & 63, op == "bmsk_wrap") if nl == 0 else vop(a, b, c, nl, op, signs, sat, add)
            assert int(got[i, k]) == want, (name, hex(a), hex(b), hex(c), hex(int(got[i, k])), hex(want))
        for k, expr in enumerate(INTRINSICS):
            want = intrinsic(k, a, b, c)
            assert int(got[i, len(ASM) + k]) == want, (expr, hex(a), hex(b), hex(c), hex(int(got[i, len(ASM) + k])), hex(want))


@pytest.mark.parametrize("ins", ["vadd4.u32.u32.u32.sat.add", "vshl4.u32.u32.u32", "bmsk.b32"])
def test_unsupported_simd_forms_fail_the_load_with_name_and_line(ctx, ins):
    from cuda.bindings import driver as cu
    from cybn import softgpu
    ops = "%r1, %r2, %r3" if ins.startswith("bmsk") else "%r1, %r2, %r3, %r4"
    ptx = (".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n.reg .b32 %r<5>;\n"
           + ins + " " + ops + ";\nret;\n}\n").encode() + b"\0"
    r = cu.cuModuleLoadData(ptx)
    assert r[0] == cu.CUresult.CUDA_ERROR_INVALID_PTX
    assert "line 7" in softgpu.last_report() and ins.split(".")[0] in softgpu.last_report()
