"""Module loading and typed launches: signature packing, validation before launch, dims, cooperative
launches, attributes, name expressions, the kernel registry's memoisation."""
import numpy as np
import pytest

import cybn
from cybn import CompileError, CudaError, get_function, kernels
from cybn.module import Module
from engine_helpers import launches

SRC = r'''
extern "C" __global__ void sig_all(unsigned long long* out, int i, unsigned int u, long long q,
                                   unsigned long long Q, float f, double d, double* outd) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        out[0] = (unsigned long long)(long long)i; out[1] = u; out[2] = (unsigned long long)q; out[3] = Q;
        outd[0] = f; outd[1] = d;
    }
}
// Every thread of a 3-D grid of 3-D blocks writes its own global linear id, plus the dynamic shared size.
extern "C" __global__ void coords(unsigned int* out) {
    extern __shared__ unsigned char dyn[];
    unsigned int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned int nt = blockDim.x * blockDim.y * blockDim.z;
    unsigned int smem; asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem));
    if (tx == 0) dyn[0] = 1;
    out[2 * (bx * nt + tx)] = bx * nt + tx;
    out[2 * (bx * nt + tx) + 1] = smem;
}
template <typename T, int N>
__global__ void scale(T* x, T a, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * a + (T)N;
}
'''
SIG_ALL = "PiIqQfdP"


def test_every_signature_type_reaches_the_kernel():
    out, outd = cybn.zeros(4, np.uint64), cybn.zeros(2, np.float64)
    f = get_function(SRC, "sig_all", SIG_ALL)
    f(1, 1, (out, -7, 4000000000, -(2**40) - 3, 2**63 + 5, 1.5, -2.0**-30, outd))
    got = out.get()
    assert got[0] == np.uint64(2**64 - 7)  # int32 -7 sign-extended by the kernel
    assert got[1] == 4000000000 and got[2] == np.uint64(2**64 - 2**40 - 3) and got[3] == 2**63 + 5
    np.testing.assert_array_equal(outd.get(), [1.5, -2.0**-30])


def test_pointer_arguments_accept_buffers_arrays_ints_and_none():
    outd = cybn.zeros(2, np.float64)
    buf = cybn.DeviceBuffer(32)
    f = get_function(SRC, "sig_all", SIG_ALL)

    class HasPtr:
        ptr = outd.ptr

    f(1, 1, (buf, 1, 2, 3, 4, 0.25, 0.5, HasPtr()))
    f(1, 1, [buf.ptr, 1, 2, 3, 4, 0.25, 0.75, outd])  # a list of args is fine too
    np.testing.assert_array_equal(outd.get(), [0.25, 0.75])
    f(1, 1, (np.uint64(buf.ptr), np.int32(1), 2, np.int64(3), 4, np.float32(0.5), np.float64(1.0), outd))
    np.testing.assert_array_equal(outd.get(), [0.5, 1.0])


@pytest.mark.parametrize("args, exc, match", [
    ((1, 2), TypeError, "takes 8 arguments"),
    (("x", 1, 2, 3, 4, 1.0, 1.0, 0), TypeError, r"argument 0 \(pointer 'P'\)"),
    ((0, 1.5, 2, 3, 4, 1.0, 1.0, 0), TypeError, r"argument 1 \(int32 'i'\)"),
    ((0, 2**31, 2, 3, 4, 1.0, 1.0, 0), OverflowError, r"argument 1 \(int32 'i'\)"),
    ((0, 1, -1, 3, 4, 1.0, 1.0, 0), OverflowError, r"argument 2 \(uint32 'I'\)"),
    ((0, 1, 2, 2**63, 4, 1.0, 1.0, 0), OverflowError, r"argument 3 \(int64 'q'\)"),
    ((0, 1, 2, 3, -4, 1.0, 1.0, 0), OverflowError, r"argument 4 \(uint64 'Q'\)"),
    ((0, 1, 2, 3, 4, "1.0", 1.0, 0), TypeError, r"argument 5 \(float32 'f'\)"),
    ((0, 1, 2, 3, 4, 1e39, 1.0, 0), OverflowError, r"argument 5 \(float32 'f'\)"),
    ((0, 1, 2, 3, 4, 1.0, None, 0), TypeError, r"argument 6 \(float64 'd'\)"),
    ((0, 1, 2, 3, 4, 1.0, 1.0, object()), TypeError, r"argument 7 \(pointer 'P'\)"),
])
def test_bad_arguments_are_refused_before_launch(args, exc, match):
    f = get_function(SRC, "sig_all", SIG_ALL)
    before = launches()
    with pytest.raises(exc, match=match):
        f(1, 1, args)
    assert launches() == before


@pytest.mark.parametrize("grid, block, exc", [
    (0, 1, ValueError), ((1, 2, 3, 4), 1, TypeError), (1.0, 1, TypeError), (1, (1, "a"), TypeError),
    (1, -1, ValueError), ((), 1, TypeError)])
def test_bad_dimensions_are_refused_before_launch(grid, block, exc):
    f = get_function(SRC, "coords", "P")
    before = launches()
    with pytest.raises(exc):
        f(grid, block, (0,))
    assert launches() == before


def test_args_must_be_a_sequence():
    with pytest.raises(TypeError, match="args must be a tuple"):
        get_function(SRC, "coords", "P")(1, 1, 5)


def test_launch_limits_are_refused_before_the_driver():
    # Every GPU's dimension limits are checked by cybn, naming the dimension (test_review_core has more);
    # per-kernel limits, e.g. dynamic shared memory, still come back as CudaErrors from the driver.
    f = get_function(SRC, "coords", "P")
    out = cybn.zeros(2 * 2048, np.uint32)
    with pytest.raises(ValueError, match="block .* exceeds"):
        f(1, 2048, (out,))  # more than 1024 threads per block
    with pytest.raises(ValueError, match="grid .* exceeds"):
        f((1, 70000), 1, (out,))  # gridDim.y > 65535


@pytest.mark.parametrize("cooperative", [False, True])
def test_3d_grid_and_block_and_dynamic_shared_memory(cooperative):
    grid, block = (2, 3, 2), (4, 2, 3)
    total = 12 * 24
    out = cybn.zeros(2 * total, np.uint32)
    get_function(SRC, "coords", "P")(grid, block, (out,), shared_mem=100, cooperative=cooperative)
    got = out.get().reshape(total, 2)
    np.testing.assert_array_equal(got[:, 0], np.arange(total))
    assert (got[:, 1] == 100).all()


def test_template_name_expressions_are_lowered():
    x = cybn.to_gpu(np.arange(10, dtype=np.float32))
    f = get_function(SRC, "scale<float, 3>", "PfQ")
    assert f.name == "scale<float, 3>"
    f(1, 32, (x, 2.0, 10))
    np.testing.assert_array_equal(x.get(), np.arange(10) * 2.0 + 3)
    xd = cybn.to_gpu(np.arange(5, dtype=np.float64))
    get_function(SRC, "scale<double, 1>", "PdQ")(1, 32, (xd, -1.0, 5))
    np.testing.assert_array_equal(xd.get(), -np.arange(5.0) + 1)


def test_get_function_is_memoised_and_loads_each_image_once():
    f1 = get_function(SRC, "coords", "P")
    n = kernels.loaded_modules()
    f2 = get_function(SRC, "coords", "P")
    assert f1 is f2 and kernels.loaded_modules() == n
    g = get_function(SRC, "sig_all", SIG_ALL)
    assert g.module is f1.module and kernels.loaded_modules() == n


def test_function_attributes_and_dynamic_shared_opt_in():
    f = get_function(SRC, "coords", "P")
    attrs = f.attributes
    assert set(attrs) == {"max_threads_per_block", "num_regs", "shared_size_bytes", "local_size_bytes",
                          "const_size_bytes"}
    assert attrs["max_threads_per_block"] == 1024 and attrs["num_regs"] > 0
    assert isinstance(f.handle, int) and f.handle
    out = cybn.zeros(2 * 32, np.uint32)
    with pytest.raises(CudaError):
        f(1, 32, (out,), shared_mem=64 * 1024)  # above 48 KiB without opt-in
    f.set_max_dynamic_shared(64 * 1024)
    f(1, 32, (out,), shared_mem=64 * 1024)
    assert (out.get().reshape(32, 2)[:, 1] == 64 * 1024).all()
    with pytest.raises(ValueError):
        f.set_max_dynamic_shared(-1)


def test_bad_signatures_are_refused():
    with pytest.raises(ValueError, match="bad signature"):
        get_function(SRC, "coords", "X")
    with pytest.raises(TypeError):
        get_function(SRC, "coords", 5)


def test_unknown_kernel_name_is_a_cuda_error():
    with pytest.raises(CudaError) as info:
        get_function(SRC, "no_such_kernel", "P")
    assert info.value.call == "cuModuleGetFunction" and info.value.name == "CUDA_ERROR_NOT_FOUND"


def test_compile_errors_carry_the_log():
    with pytest.raises(CompileError) as info:
        get_function('extern "C" __global__ void k() {\n  undeclared_thing = 1;\n}\n', "k", "")
    assert "undeclared_thing" in info.value.log and "(2)" in info.value.log


def test_module_from_image_refuses_garbage():
    with pytest.raises(CudaError) as info:
        Module.from_image(b"this is not PTX")
    assert info.value.call == "cuModuleLoadData"
    assert info.value.detail and info.value.detail in str(info.value)  # the software GPU's explanation
    with pytest.raises(ValueError):
        Module.from_image(b"")
    with pytest.raises(TypeError):
        Module.from_image(12)
    with pytest.raises(TypeError):
        Module()


def test_module_function_and_global_lookup():
    src = '__device__ int counter = 41;\nextern "C" __global__ void bump() { counter += 1; }\n'
    f = get_function(src, "bump", "")
    f(1, 1, ())
    ptr, size = f.module.get_global("counter")
    assert size == 4
    host = np.zeros(1, np.int32)
    cybn.GPUArray.from_pointer(ptr, 1, np.int32, owner=f.module).get(host)
    assert host[0] == 42
    assert f.module.function("bump", "") is f


def test_concurrent_launches_from_threads_pack_independently():
    import threading
    src = r'''extern "C" __global__ void put(int* out, int v, unsigned long long n) {
        unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
        if (i < n) out[i] = v; }'''
    f = get_function(src, "put", "PiQ")
    outs = [cybn.zeros(64, np.int32) for _ in range(4)]
    errors = []

    def work(k):
        try:
            for rep in range(10):
                f(1, 64, (outs[k], 100 * k + rep, 64))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, o in enumerate(outs):
        np.testing.assert_array_equal(o.get(), np.full(64, 100 * k + 9))


def test_call_argument_parsing_both_call_paths():
    s = cybn.Stream()
    out = cybn.zeros(2 * 8, np.uint32, stream=s)  # on s: the kernels below write it there (streamcheck)
    f = get_function(SRC, "coords", "P")
    # every argument by keyword, in any order; f(...) takes the vectorcall path, f.__call__ the tp_call one
    for call in (f, f.__call__):
        out.fill(0, stream=s)
        call(stream=s, args=(out,), block=8, grid=1, shared_mem=12, cooperative=False)
        s.synchronize()
        np.testing.assert_array_equal(out.get().reshape(8, 2), np.c_[np.arange(8), np.full(8, 12)])
        call(1, 8, (out,), 4, s, True)
        s.synchronize()
        assert (out.get().reshape(8, 2)[:, 1] == 4).all()
    before = launches()
    with pytest.raises(TypeError, match="unexpected keyword argument 'streams'"):
        f(1, 8, (out,), streams=s)
    with pytest.raises(TypeError, match="multiple values for argument 'grid'"):
        f(1, 8, (out,), grid=2)
    with pytest.raises(TypeError, match="needs grid, block and args"):
        f(1, 8)
    with pytest.raises(TypeError, match="at most 6 arguments"):
        f(1, 8, (out,), 0, None, False, 7)
    with pytest.raises(OverflowError):
        f(1, 8, (out,), shared_mem=-1)
    assert launches() == before
