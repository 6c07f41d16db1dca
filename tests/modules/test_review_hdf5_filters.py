"""Review (rev2): a dataset whose filter pipeline names a filter HDF5 does not build in (a plugin id) makes
HDF5 search its plugin directories and dlopen shared libraries from outside the file when the data is read;
load() must refuse it from the metadata, naming the filter, and change nothing."""
import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from test_hdf5_hostile import C, refused, write_model  # noqa: E402


def test_plugin_filter_is_refused_from_metadata(tmp_path):
    def plugin_filtered(group, name):
        group.create_dataset(name, data=np.full((1, C, 1, 1), 5, np.float32), chunks=(1, C, 1, 1),
                             compression=32123, allow_unknown_filter=True)
    path = write_model(str(tmp_path / "m.hdf"), {"var": plugin_filtered})
    with h5py.File(path, "r") as f:  # the file really declares the plugin filter
        assert f["attrs/bn.var"].id.get_create_plist().get_filter(0)[0] == 32123
    refused(path, r"bn.var' .*filter 32123")


def test_builtin_filters_still_load(tmp_path):
    from cybn.modules import BatchNorm2D

    def filtered(group, name):
        group.create_dataset(name, data=np.full((1, C, 1, 1), 5, np.float32), chunks=(1, C, 1, 1),
                             compression="gzip", shuffle=True, fletcher32=True, scaleoffset=None)
    path = write_model(str(tmp_path / "m.hdf"), {"var": filtered})
    bn = BatchNorm2D(C, name="bn")
    bn.load(path)
    np.testing.assert_array_equal(bn.var.get().ravel(), np.full(C, 5, np.float32))


def test_chunk_bomb_is_refused_from_metadata(tmp_path):
    # 4 floats in a 256 MiB gzip chunk: a ~270 KB file whose read decompresses (allocates) the whole chunk
    def bomb(group, name):
        d = group.create_dataset(name, (1, C, 1, 1), np.float32, maxshape=(1, None, 1, 1),
                                 chunks=(1, 1 << 26, 1, 1), compression="gzip")
        d[...] = 5
    path = write_model(str(tmp_path / "m.hdf"), {"var": bomb})
    refused(path, r"bn.var' .*chunks of 268435456 bytes")
