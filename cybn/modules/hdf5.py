"""Opening and reading HDF5 files for Module.save/load the way PuzzleLib does (h5py is an optional dependency),
treating every file as untrusted.

A file argument may be a path, None (an in-memory file whose bytes save() returns), the bytes of such a file
(load), or an already open h5py File/Group (used as is; the caller closes it).

Load reads nothing but the file itself: a path is opened read-only and non-blocking, must be a regular file, and
HDF5 reads it only through that descriptor; every object is reached through hard links only (soft and external
links are refused without being followed); a dataset with external raw storage or a virtual dataset is refused;
shape and dtype are checked from the metadata before any data is read. No global state is touched (no warnings
filters, no h5py settings), so loads in several threads are safe (h5py serialises its own calls).

Save to a path writes a temporary file beside the target and renames it over the target when complete, so a
failed save leaves the old file; a target that is a symbolic link or not a regular file is refused (save never
follows a link it did not create).
"""
import contextlib
import os
import stat
import tempfile

import numpy as np


def require_h5py():
    try:
        import h5py
    except ImportError as e:
        raise _error("saving and loading modules needs h5py, which is not installed "
                     "(pip install h5py, or cybn's 'hdf5' extra)") from e
    return h5py


def _error(msg):
    from cybn.modules.module import ModuleError
    return ModuleError(msg)


@contextlib.contextmanager
def opened(file, mode, name, what):
    """The open h5py File/Group for save ("w") or load ("r"); closes what it opened, and for a save to a path
    renames the finished temporary file over the target only when the block succeeded."""
    h5py = require_h5py()
    if isinstance(file, (h5py.File, h5py.Group)):
        yield file
        return
    if not (file is None or isinstance(file, (str, os.PathLike, bytes, bytearray, memoryview))):
        raise TypeError("expected a file path, None, the bytes of an HDF5 file or an open h5py File/Group, got %s"
                        % type(file).__name__)
    label = os.fspath(file) if isinstance(file, (str, os.PathLike)) else type(file).__name__
    stack = contextlib.ExitStack()
    with stack:
        try:
            hdf, commit = _open(h5py, file, mode, stack)
        except Exception as e:  # h5py's OSError for a missing or malformed file, ours for a refused one
            raise _error("Module %s %s error: cannot open %s: %s" % (name, what, label, e)) from e
        yield hdf
        hdf.close()
        if commit is not None:
            commit()


def _open(h5py, file, mode, stack):
    """(hdf, commit): commit (or None) makes a finished save visible; everything opened goes on `stack`."""
    if file is None:  # never touches the disk: the core driver without a backing store keeps it in memory
        hdf = h5py.File(tempfile.mktemp(suffix=".hdf"), mode, libver="earliest", driver="core", backing_store=False)
        return stack.enter_context(hdf), None

    if isinstance(file, (bytes, bytearray, memoryview)):
        from h5py import h5f, h5p
        fapl = h5p.create(h5p.FILE_ACCESS)
        fapl.set_fapl_core(backing_store=False)
        fapl.set_file_image(bytes(file))
        fid = h5f.open(tempfile.mktemp(suffix=".hdf").encode(), h5f.ACC_RDONLY, fapl=fapl)
        return stack.enter_context(h5py.File(fid)), None

    path = os.fspath(file)
    if mode == "r":
        # O_NONBLOCK: opening a FIFO or a device must not wait; fstat then refuses anything but a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        f = stack.enter_context(os.fdopen(fd, "rb"))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        return stack.enter_context(h5py.File(f, "r")), None

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise OSError("the target is a symbolic link; save does not follow links (pass the real path)")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OSError("the target exists and is not a regular file")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".part", dir=directory)
    stack.callback(_unlink_quietly, tmp)  # a no-op once the rename has happened
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, (st.st_mode & 0o777) if st is not None else 0o666 & ~umask)
    f = stack.enter_context(os.fdopen(fd, "w+b"))
    # libver="earliest" keeps the files readable by the old h5py/HDF5 versions PuzzleLib users run.
    hdf = stack.enter_context(h5py.File(f, mode, libver="earliest"))

    def commit():
        f.flush()
        os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a link planted meanwhile instead of writing through it
    return hdf, commit


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- reading untrusted files ------------------------------------------------------------------------------------

def child(group, path, kind, where):
    """The object at `path` under `group`, reached through hard links only; kind: "group" or "dataset".
    Returns None when it does not exist; raises ModuleError for a soft/external link or another object type."""
    import h5py
    obj = group
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        link = obj.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise _error("%s: '%s' is a %s; cybn loads only objects stored in the file itself (hard links)"
                         % (where, "/".join(parts[:i + 1]), type(link).__name__))
        obj = obj[part]
    want = h5py.Group if kind == "group" else h5py.Dataset
    if not isinstance(obj, want):
        raise _error("%s: '%s' is not a %s" % (where, path, kind))
    return obj


# deflate, shuffle, fletcher32, szip, nbit, scaleoffset: HDF5's own filters (H5Zpublic.h)
_BUILTIN_FILTERS = frozenset(range(1, 7))
MAX_CHUNK_BYTES = 1 << 20  # h5py's own chunk guesses stay under 1 MiB


def read_dataset(dset, where, what, size=None, dtype=None, scalar_int=False):
    """The dataset's values, after checking from its metadata alone that it holds its own raw data (no
    external storage, not virtual) and that its declared shape and dtype are what the caller expects
    (`size` elements convertible to `dtype` without loss; or one integer with scalar_int)."""
    plist = dset.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise _error("%s: dataset '%s' keeps its data in external files; cybn loads only files that contain "
                     "all their data" % (where, dset.name))
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _BUILTIN_FILTERS:  # HDF5 would search its plugin path and dlopen a library for it
            raise _error("%s: dataset '%s' declares filter %d, which is not built into HDF5 (a plugin); cybn "
                         "loads only files readable without loading code from outside them" % (where, dset.name, code))
    if dset.chunks is not None:  # a read decompresses whole chunks: their size must fit the data's
        chunk_bytes = int(np.prod(dset.chunks, dtype=np.uint64)) * dset.dtype.itemsize
        if chunk_bytes > max(int(np.prod(dset.shape, dtype=np.uint64)) * dset.dtype.itemsize, MAX_CHUNK_BYTES):
            raise _error("%s: dataset '%s' declares chunks of %d bytes for %s values; cybn loads chunks no larger "
                         "than the data (or %d bytes)" % (where, dset.name, chunk_bytes, dset.shape, MAX_CHUNK_BYTES))
    if dset.is_virtual:
        raise _error("%s: dataset '%s' is a virtual dataset (data mapped from other files); cybn loads only "
                     "files that contain all their data" % (where, dset.name))
    if dset.shape is None:
        raise _error("%s: dataset '%s' has no data (a null dataspace)" % (where, dset.name))
    declared, count = dset.dtype, int(np.prod(dset.shape, dtype=np.uint64))
    if declared.kind not in "biuf" or declared.fields is not None or declared.subdtype is not None:
        raise _error("%s: dataset '%s' has dtype %s; expected numbers" % (where, dset.name, declared))
    if scalar_int:
        if declared.kind not in "iu" or count != 1:
            raise _error("%s: link dataset '%s' must hold one integer, it declares %s of shape %s"
                         % (where, dset.name, declared, dset.shape))
    elif size is not None and count != size:
        raise _error("%s: %s has shape %s in the file (dataset '%s'), the module's has %d values"
                     % (where, what, dset.shape, dset.name, size))
    if dtype is not None and not np.can_cast(declared, dtype, "safe"):
        raise _error("%s: %s is %s in the file (dataset '%s'), cannot convert it to %s without loss"
                     % (where, what, declared, dset.name, np.dtype(dtype)))
    out = np.empty(dset.shape, dtype=declared.newbyteorder("="))
    if count:
        dset.read_direct(out)
    return out


def read_module_tensors(module, hdf, name, initvars):
    """({var name: array}, {attr name: array}) for `module` from a file in PuzzleLib's layout, each checked
    against module._loadTarget before it is read; nothing on the module changes here."""
    where = "Module %s load error" % name
    varValues, attrValues = {}, {}
    varNames = list(module.vars) + [n for n in module.declaredVars if n not in module.vars]
    attrNames = list(module.attrs) + [n for n in module.declaredAttrs if n not in module.attrs]

    if varNames:
        paramGrp, linkGrp = child(hdf, "params", "group", where), child(hdf, "links", "group", where)
        if paramGrp is None or linkGrp is None:
            raise _error("%s: the file has no 'params'/'links' groups" % where)
        for paramName in varNames:
            var = module.vars.get(paramName)
            if var is not None and var in initvars:
                continue
            key = "%s.%s" % (name, paramName)
            link = child(linkGrp, key, "dataset", where)
            if link is None:
                raise _error("%s: no link '%s' in the file" % (where, key))
            idx = str(int(read_dataset(link, where, "link '%s'" % key, scalar_int=True).ravel()[0]))
            dset = child(paramGrp, idx, "dataset", where)
            if dset is None:
                raise _error("%s: link '%s' names params/%s, which is not in the file" % (where, key, idx))
            target = module._loadTarget(paramName, None if var is None else var.data)
            varValues[paramName] = _read_as(dset, where, "'%s'" % paramName, target)

    if attrNames:
        attrGrp = child(hdf, "attrs", "group", where)
        if attrGrp is None:
            raise _error("%s: the file has no 'attrs' group" % where)
        for attrName in attrNames:
            key = "%s.%s" % (name, attrName)
            dset = child(attrGrp, key, "dataset", where)
            if dset is None:
                raise _error("%s: no attribute '%s' in the file" % (where, key))
            attrValues[attrName] = _read_as(dset, where, "'%s'" % attrName,
                                            module._loadTarget(attrName, module.attrs.get(attrName)))
    return varValues, attrValues


def _read_as(dset, where, what, target):
    """`dset` read once its metadata fits `target` ((shape, dtype) or None), contiguous in the target's dtype
    and shape (same element count, other shape: e.g. a (1, C, 1) tensor saved as (1, C, 1, 1))."""
    if target is None:
        return np.ascontiguousarray(read_dataset(dset, where, what))
    shape, dtype = target
    value = read_dataset(dset, where, what, int(np.prod(shape, dtype=np.uint64)), dtype)
    return np.ascontiguousarray(value.astype(dtype, copy=False).reshape(shape))


def check_values(name, varValues, attrValues, nonNegative=()):
    """Refuses values that make a module unusable: NaN/Inf anywhere, negatives in the `nonNegative` attributes."""
    for kind, values in (("parameter", varValues), ("attribute", attrValues)):
        for key, value in values.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise _error("Module %s load error: %s '%s' holds NaN or Inf values, which would make every "
                             "output NaN (pass checkValues=False to load it anyway)" % (name, kind, key))
            if kind == "attribute" and key in nonNegative and (value < 0).any():
                raise _error("Module %s load error: attribute '%s' holds negative values (a variance cannot be "
                             "negative; pass checkValues=False to load it anyway)" % (name, key))
