"""Opening HDF5 files for Module.save/load the way PuzzleLib does (h5py is an optional dependency).

A file argument may be a path, None (an in-memory file whose bytes save() returns), the bytes of such a file
(load), or an already open h5py File/Group (used as is; the caller closes it).
"""
import os
import tempfile


def require_h5py():
    try:
        import h5py
    except ImportError as e:
        from cybn.modules.module import ModuleError
        raise ModuleError("saving and loading modules needs h5py, which is not installed "
                          "(pip install h5py, or cybn's 'hdf5' extra)") from e
    return h5py


def open_hdf(file, mode):
    """Returns (hdf, owned): owned is True when this call opened the file and the caller must close it."""
    h5py = require_h5py()

    if file is None or isinstance(file, (str, os.PathLike)):
        kwargs = {}
        if file is None:
            # Never touches the disk: the core driver without a backing store keeps the file in memory.
            file = tempfile.mktemp(suffix=".hdf")
            kwargs = {"driver": "core", "backing_store": False}
        else:
            dirname = os.path.dirname(os.path.abspath(file))
            if mode != "r":
                os.makedirs(dirname, exist_ok=True)
        # libver="earliest" keeps the files readable by the old h5py/HDF5 versions PuzzleLib users run.
        return h5py.File(file, mode, libver="earliest", **kwargs), True

    if isinstance(file, (bytes, bytearray, memoryview)):
        from h5py import h5f, h5p
        fapl = h5p.create(h5p.FILE_ACCESS)
        fapl.set_fapl_core(backing_store=False)
        fapl.set_file_image(bytes(file))
        fid = h5f.open(tempfile.mktemp(suffix=".hdf").encode(), h5f.ACC_RDONLY, fapl=fapl)
        return h5py.File(fid), True

    if isinstance(file, (h5py.File, h5py.Group)):
        return file, False

    raise TypeError("expected a file path, None, the bytes of an HDF5 file or an open h5py File/Group, got %s"
                    % type(file).__name__)
