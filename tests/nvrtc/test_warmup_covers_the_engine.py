"""`python -m cybn warmup` compiles every kernel program the BatchNorm engine can load: each (layout, dtype,
mode, epilogue) the core accepts, run once in a fresh process, loads only programs that are registered
(same file, options and name expressions, so warmup's cache entry is the one the launch finds), and every
NCHW (dtype, EPI), the SPAN programs (a spatial size that is not whole 16-byte units, S = 9) and the NHWC
programs are among them. Combinations the core refuses (channels-last
dtypes or epilogues it lacks) are skipped by what it raises, so new NHWC variants are covered once added."""
from nvrtc_helpers import last_json, run_py


def test_every_program_the_engine_loads_is_registered_for_warmup():
    result = last_json(run_py("""
        import json
        import ml_dtypes
        import numpy as np
        import cybn
        from cybn import batchnorm
        from cybn.jit import functions, variants

        loaded = set()
        real = functions.get_function
        def spy(source, name, signature, options=(), name_expressions=None, **kw):
            loaded.add((source, tuple(options), tuple(name_expressions or (name,)), name))
            return real(source, name, signature, options=options, name_expressions=name_expressions, **kw)
        functions.get_function = spy

        ran, refused = [], []
        for layout in ("NCHW", "NHWC"):
            for dt in (np.float32, np.float16, ml_dtypes.bfloat16, np.float64):
                p = np.float64 if dt is np.float64 else np.float32
                for mode in ("spatial", "per_activation"):
                    for act in (None, "relu"):
                        x = cybn.to_gpu(np.ones((2, 3, 4), dt))
                        K = (4 if layout == "NHWC" else 3) if mode == "spatial" else 12  # statistics
                        one = cybn.to_gpu(np.ones(K, p))
                        try:
                            batchnorm.forward_infer(x, one, one, one, one, 1e-5, mode=mode, layout=layout,
                                                    activation=act)
                            ran.append([layout, str(np.dtype(dt)), mode, act])
                        except NotImplementedError:
                            refused.append([layout, str(np.dtype(dt)), mode, act])
                        if layout == "NCHW" and mode == "spatial":  # S = 9: the SPAN programs (bn_span.cuh)
                            x9, one8 = cybn.to_gpu(np.ones((2, 8, 9), dt)), cybn.to_gpu(np.ones(8, p))
                            assert batchnorm.plan((2, 8, 9), dt, epilogue=act is not None)["vec"] == 3
                            batchnorm.forward_infer(x9, one8, one8, one8, one8, 1e-5, activation=act)
        assert not variants.load_all()
        registered = {(s, tuple(o)): set(n) for s, o, n in variants.programs()}
        exprs = {(s, tuple(o)): sorted(n) for s, o, n in variants.programs()}
        problems = [[s, list(o), n] for s, o, names, n in loaded
                    if (s, o) not in registered or n not in registered[(s, o)]
                    or sorted(names) != exprs[(s, o)]]
        programs = sorted({(s, o) for s, o, _, _ in loaded})
        print(json.dumps(dict(ran=ran, refused=refused, problems=problems,
                              programs=[[s, list(o)] for s, o in programs])))
    """))  # the session's kernel cache (tests/conftest.py): what other tests compiled is reused
    assert result["problems"] == []
    nchw = [p for p in result["programs"] if p[0] == "batchnorm.cu"]
    # float32 + float16 plain in one program, then 2 more plain and 4 fused (dtype, EPI), and 2 SPAN (EPI 0, 1)
    assert len(nchw) == 9
    assert sum("span" in " ".join(p[1]) for p in nchw) == 2
    assert any(p[0] == "batchnorm_nhwc.cu" for p in result["programs"])
    # every NCHW combination ran; NHWC ran at least float32 and float16 without an epilogue
    assert all(r[0] == "NHWC" for r in result["refused"])
    assert len([r for r in result["ran"] if r[0] == "NCHW"]) == 16
    assert {("float32", None), ("float16", None)} <= {(r[1], r[3]) for r in result["ran"] if r[0] == "NHWC"}
