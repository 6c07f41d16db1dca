"""cybn.errors, cybn.backend (driver selection) and the lazy package import."""
import os
import pickle
import subprocess
import sys

import pytest

import cybn
from cybn import CompileError, CudaError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=120)


def test_cuda_error_fields_and_message():
    e = CudaError(2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory", "cuMemAlloc")
    assert isinstance(e, RuntimeError)
    assert (e.code, e.name, e.description, e.call) == (2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory", "cuMemAlloc")
    assert str(e) == "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.code, e2.name, e2.call, str(e2)) == (e.code, e.name, e.call, str(e))


def test_status_asks_the_driver_for_name_and_description():
    from cybn.status import check_status, make_error
    e = make_error(2, "cuMemAlloc")
    assert e.name == "CUDA_ERROR_OUT_OF_MEMORY" and e.description and e.call == "cuMemAlloc"
    with pytest.raises(CudaError) as info:
        check_status(1, "cuSomething")
    assert info.value.name == "CUDA_ERROR_INVALID_VALUE" and info.value.code == 1
    check_status(0, "cuFine")  # success raises nothing


def test_compile_error_fields():
    e = CompileError("k.cu", "k.cu(3): error: oops")
    assert e.name == "k.cu" and "oops" in e.log and "k.cu" in str(e)


def test_top_level_reexports():
    assert cybn.CudaError is CudaError and cybn.CompileError is CompileError
    assert cybn.GPUArray is cybn.gpuarray.GPUArray
    assert callable(cybn.stream) and cybn.stream.Stream is cybn.Stream
    assert cybn.__version__
    assert cybn.get_include().endswith(os.path.join("cybn", "include"))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cybn.nonexistent


def test_import_is_lazy():
    # Importing cybn and cybn.softgpu must not build or load anything driver-related.
    r = run_python("import sys, cybn, cybn.softgpu; "
                   "bad = [m for m in ('cybn.driver.device', 'cybn.array.gpuarray', 'cuda.bindings.driver', 'cuda.bindings.cydriver') "
                   "if m in sys.modules]; print(bad)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_bad_cybn_device_value_is_refused():
    r = run_python("import cybn.backend as b; b.init()", CYBN_DEVICE="tpu")
    assert r.returncode != 0
    assert "CYBN_DEVICE='tpu'" in r.stderr and "auto, cuda, softgpu" in r.stderr


def test_cybn_device_cuda_without_a_driver_fails_clearly():
    r = run_python("import cybn.backend as b; b.init()", CYBN_DEVICE="cuda")
    assert r.returncode != 0
    assert "CYBN_DEVICE=cuda" in r.stderr and "no usable CUDA driver" in r.stderr


def test_auto_falls_back_to_the_software_gpu_and_says_so():
    r = run_python("import cybn; print(cybn.backend.init(), cybn.Device().name)", CYBN_DEVICE="auto")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "softgpu"
    assert r.stderr.count("using the software GPU") == 1


def test_backend_name_here():
    assert cybn.backend.name() == "softgpu"
