"""Address-taken kernel parameters: a __grid_constant__ parameter's address (mov of the parameter
symbol, cvta.param) passed to a non-inlined function and read through a generic pointer;
__isGridConstant (isspacep.param) tells it from a global pointer."""
import numpy as np

from driverutil import ctx, primary  # noqa: F401
from ptxutil import Device, Module, compile_ptx, run

SOURCE = r"""
struct Table { int v[8]; double scale; };
__device__ __noinline__ int pick(const int* p, int i) { return p[i]; }
extern "C" __global__ void lookup(int* out, const __grid_constant__ Table t, const int* g) {
    int i = threadIdx.x;
    const Table* tp = &t;
    out[4 * i] = pick(t.v, i & 7) * (int)tp->scale;
    out[4 * i + 1] = __isGridConstant(&t) ? 1 : 0;
    out[4 * i + 2] = __isGridConstant(g) ? 1 : 0;
    out[4 * i + 3] = pick(g, i);
}
"""


def test_address_of_a_grid_constant_parameter(ctx):
    v = np.arange(8, dtype=np.int32) * 3 - 5
    table = np.zeros(1, dtype=[("v", np.int32, 8), ("scale", np.float64)])
    table["v"], table["scale"] = v, 2.0
    n = 32
    g = np.arange(n, dtype=np.int32) + 100
    with Module(compile_ptx(SOURCE)) as m, Device() as d:
        po, pg = d.zeros(4 * n, np.int32), d.put(g)
        run(m.fn("lookup"), (1,), (n,), po, table.view(np.uint8), pg)
        out = d.get(po, 4 * n, np.int32).reshape(n, 4)
    i = np.arange(n)
    np.testing.assert_array_equal(out[:, 0], v[i & 7] * 2)
    np.testing.assert_array_equal(out[:, 1], 1)
    np.testing.assert_array_equal(out[:, 2], 0)
    np.testing.assert_array_equal(out[:, 3], g)
