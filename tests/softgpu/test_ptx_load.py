"""Loading PTX: every cuda_fp16/cuda_bf16 inline-asm form loads and runs; unsupported instructions,
modifiers and directives are refused at load time with a report naming them and their line; failures
only visible at run time (trap, deadlock) fail the launch with a report."""
import numpy as np
import pytest
from cuda.bindings import driver as cu

from cybn import softgpu
from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, launch, ok, run
from test_ptx_numeric import bf16_bits

R = cu.CUresult


def test_every_fp16_and_bf16_header_function_loads_and_runs(ctx):
    rng = np.random.default_rng(0)
    fin = (rng.standard_normal(32) * 50).astype(np.float32)
    a16 = (rng.standard_normal(96) * 4).astype(np.float16)
    with Module(cu_file="fp16_all.cu") as m, Device() as d:
        pa, po, pf, pin = d.put(a16), d.alloc(2 * 32 * 200), d.alloc(4 * 32), d.put(fin)
        pc = d.alloc(8 * 24 * 32)
        run(m.fn("all_half"), (1,), (32,), pa, po, pf, pin, pc)
        o = d.get(po, 32 * 2, np.float16).reshape(2, 32)
        c = d.get(pc, 24 * 32, np.int64).reshape(32, 24)
        x, y = a16[:32].astype(np.float64), a16[32:64].astype(np.float64)
        np.testing.assert_array_equal(o[0], (x + y).astype(np.float16))
        np.testing.assert_array_equal(o[1], (x - y).astype(np.float16))
        np.testing.assert_array_equal(c[:, 0], fin.astype(np.float16).view(np.uint16))
        np.testing.assert_array_equal(c[:, 20], fin.astype(np.float16).view(np.uint16))
        h = fin.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(c[:, 18].astype(np.int32).view(np.float32), h)
        np.testing.assert_array_equal(c[:, 19].astype(np.int32).view(np.float32), -h)
        for k, fn in zip((4, 5, 6, 7), (np.rint, np.trunc, np.floor, np.ceil)):
            np.testing.assert_array_equal(c[:, k], fn(x))
        # Directed roundings bracket the value: rd <= v <= ru, rz toward zero, one ulp apart at most.
        rz, rd, ru = (c[:, k].astype(np.uint16).view(np.float16).astype(np.float64) for k in (1, 2, 3))
        assert (rd <= fin).all() and (ru >= fin).all() and (np.abs(rz) <= np.abs(fin)).all()

        b16 = np.array([bf16_bits(v) for v in rng.standard_normal(96) * 4], np.uint16)
        pb, pc2 = d.put(b16), d.alloc(8 * 12 * 32)
        run(m.fn("all_bf16"), (1,), (32,), pb, po, pf, pin, pc2)
        c2 = d.get(pc2, 12 * 32, np.int64).reshape(32, 12)
        np.testing.assert_array_equal(c2[:, 0], [bf16_bits(v) for v in fin])
        np.testing.assert_array_equal(c2[:, 1], fin.view(np.uint32) >> 16)
        np.testing.assert_array_equal(c2[:, 11].astype(np.int32).view(np.uint32), b16[:32].astype(np.uint32) << 16)


PTX_HEADER = """.version 9.0
.target sm_80
.address_size 64

.visible .entry k(.param .u64 p)
{
\t.reg .b32 %r<4>;
\t.reg .b64 %rd<2>;
\tld.param.u64 %rd1, [p];
"""


@pytest.mark.parametrize("line, name", [
    ("\tfrobnicate.u32 %r1, %r2;", "frobnicate.u32"),
    ("\tadd.cc.u32 %r1, %r2, %r3;", "add.cc.u32"),
    ("\tmul.wide.bogus.u32 %rd1, %r2, %r3;", "mul.wide.bogus.u32"),
    ("\tcp.async.ca.shared.global [%rd1], [%rd1], 4;", "cp.async.ca.shared.global"),
])
def test_unsupported_instruction_refused_at_load(ctx, line, name):
    text = PTX_HEADER + line + "\n\tret;\n}\n"
    err, _ = cu.cuModuleLoadData(text.encode() + b"\0")
    assert err == R.CUDA_ERROR_INVALID_PTX
    report = softgpu.last_report()
    assert name in report and "line 10" in report and "kernel k" in report, report


def test_unknown_directive_refused_at_load(ctx):
    text = PTX_HEADER.replace(".address_size 64", ".address_size 64\n.frob 3") + "\tret;\n}\n"
    err, _ = cu.cuModuleLoadData(text.encode() + b"\0")
    assert err == R.CUDA_ERROR_INVALID_PTX
    assert ".frob" in softgpu.last_report() and "line 4" in softgpu.last_report()


def test_unknown_register_and_label_refused(ctx):
    for body, what in (("\tmov.u32 %r1, %q1;", "%q1"), ("\tbra $L_nowhere;", "$L_nowhere")):
        err, _ = cu.cuModuleLoadData((PTX_HEADER + body + "\n\tret;\n}\n").encode() + b"\0")
        assert err == R.CUDA_ERROR_INVALID_PTX and what in softgpu.last_report()


RUNTIME = r"""
extern "C" __global__ void trapper(int* out) { if (threadIdx.x == 3) __trap(); out[threadIdx.x] = 1; }
extern "C" __global__ void lonely_shuffle(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
extern "C" __global__ void barrier_vs_syncwarp(int* out) {
    if (threadIdx.x < 16) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 1;
}
"""


@pytest.fixture
def runtime(ctx):
    from ptxutil import compile_ptx
    m = Module(compile_ptx(RUNTIME))
    yield m
    m.close()
    cu.cuCtxSynchronize()  # clear the failed launch's pending error


@pytest.mark.parametrize("kernel, words", [
    ("trapper", ["trap", "thread (3,0,0)"]),
    ("lonely_shuffle", ["exited", "thread (0,0,0)"]),
    ("barrier_vs_syncwarp", ["deadlock"]),
])
def test_runtime_failures_fail_the_launch_with_a_report(runtime, kernel, words):
    with Device() as d:
        p = d.alloc(4 * 32)
        r = launch(runtime.fn(kernel), (1,), (32,), p)
        assert r == R.CUDA_ERROR_LAUNCH_FAILED
        report = softgpu.last_report()
        assert all(w in report for w in words) and kernel in report, report
        assert cu.cuCtxSynchronize()[0] == R.CUDA_ERROR_LAUNCH_FAILED
