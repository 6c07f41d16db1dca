"""The SPAN walk (bn_span.cuh) lives in programs of its own, so the plain NCHW spatial kernels keep exactly the
registers of register_table.py: SPAN code compiled into the plain kernels had raised every one of them (sm_90 fused forward fp16 74 -> 93). The SPAN
kernels are listed by the report and compile without spills (the build check covers every architecture)."""
import pytest

from cybn import batchnorm
from cybn.testing import cubin_report

import register_table  # the plain kernels' registers (one table with the build check's ceilings)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_plain_spatial_kernels_keep_their_registers(arch):
    report, _ = cubin_report.kernel_report(arch)  # the plain program, as the engine loads it
    want = register_table.base_program(int(arch[3:]))
    assert len(want) == 8  # the four spatial kernels x float, __half
    got = {(k, t): report[(k, t, "spatial")]["registers"] for k, t in want}
    assert got == want


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_span_program_is_separate_and_spill_free(arch):
    report, _ = cubin_report.kernel_report(arch, ("span", 0))
    exprs = batchnorm.span_kernel_expressions(0)
    assert len(report) == len(exprs) == 16  # the four spatial kernels x four dtypes, nothing else
    assert not set(exprs) & set(batchnorm.kernel_expressions())  # none of them in the plain program
    for key, facts in report.items():
        assert key[0].endswith("_span") and key[2] == "spatial", key
        assert 0 < facts["registers"] <= 255 and facts["spill_stores"] == facts["spill_loads"] == 0, key
        assert facts["inflight"]["vec"] >= 16, key  # its walks load 16-byte units
    # The batched SPAN reductions (fwd_batch, span_bwd_batch: two units per array in flight per thread): the
    # forward in 16- and 32-bit types, the backward (x and dy) in float and bfloat16.
    for ctype in ("float", "__half", "__nv_bfloat16"):
        assert report[("bn_fwd_train_span", ctype, "spatial")]["inflight"]["vec"] >= 32, ctype
    for ctype in ("float", "__nv_bfloat16"):
        assert report[("bn_bwd_span", ctype, "spatial")]["inflight"]["vec"] >= 64, ctype


def test_only_span_shapes_load_the_span_programs():
    """Calls on shapes that cannot take SPAN (whole 16-byte rows, C * S not whole units) load the plain programs
    only; the first call on a SPAN shape loads its program's four kernels, once (prepare() decides by shape)."""
    from nvrtc_helpers import last_json, run_py
    result = last_json(run_py("""
        import json
        import numpy as np
        import cybn
        from cybn import batchnorm, gpuarray
        from cybn.jit import functions

        loaded = []
        real = functions.get_function
        def spy(source, name, signature, options=(), name_expressions=None, **kw):
            loaded.append(name)
            return real(source, name, signature, options=options, name_expressions=name_expressions, **kw)
        functions.get_function = spy

        def infer(shape, offset=0):
            n = int(np.prod(shape))
            x = gpuarray.to_gpu(np.ones(n + offset, np.float32))[offset:].reshape(shape)
            one = cybn.to_gpu(np.ones(shape[1], np.float32))
            batchnorm.forward_infer(x, one, one, one, one, 1e-5)
            return sum("true>" in name for name in loaded)

        counts = [infer((2, 8, 16)), infer((2, 3, 7)), infer((2, 8, 16, 16))]  # whole rows; C * S not whole units
        counts.append(infer((2, 8, 9)))    # SPAN: its four kernels
        counts.append(infer((4, 8, 7, 7)))  # loaded already
        print(json.dumps(counts))
    """))
    assert result == [0, 0, 0, 4, 4]
