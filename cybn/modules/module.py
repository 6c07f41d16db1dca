"""The Module base class: PuzzleLib's layer protocol (forward/backward, variables, attributes, HDF5 files)."""
import json
from enum import Enum

import numpy as np

from cybn.modules import config as Config


class ModuleError(Exception):
    pass


class MemoryUnit(str, Enum):
    mb = "mb"
    kb = "kb"


class Module:
    """Base of every layer. Subclasses implement updateData/updateGrad (and accGradParams when they train
    parameters) plus the shape checks; __call__ and backward do the common checks around them.

    Variables (trainable, with .grad) live in ``vars``, other saved tensors (running statistics) in
    ``attrs``; both are also plain attributes of the module (``self.scale``, ``self.mean``).
    """

    # Names of the variables/attributes a module declares even while they are still unset (empty=True),
    # so load() can create them from a file.
    declaredVars = ()
    declaredAttrs = ()
    # Modules taking several inputs (a list of arrays) set this.
    acceptsLists = False
    # The dtypes calcMode accepts (messages suggest calcMode for these).
    calcTypes = (np.float32,)

    def __init__(self, name=None):
        self.name = name

        self.blueprint = None
        self.registerBlueprint(locals())

        self.vars = {}
        self.attrs = {}

        self.gradUsesOutData = False
        self.movesData = False
        self.movesGrad = False

        self.grad = None
        self.inData = None
        self.data = None

        self.train = not Config.globalEvalMode
        self.calctype = np.float32

        self.varLoader = None
        self.attrLoader = None

    # --- construction blueprints ---------------------------------------------------------------------------

    def registerBlueprint(self, args, exclude=None):
        """Records the constructor arguments (pass locals() from __init__) so the module can be rebuilt."""
        exclude = set() if exclude is None else set(exclude)
        ignore = {"self", "__class__"}
        self.blueprint = {key: None if key in exclude else arg for key, arg in args.items() if key not in ignore}

    def getBlueprint(self):
        return {"classname": self.__class__.__name__, "scheme": self.blueprint}

    # --- variables and attributes --------------------------------------------------------------------------

    def setVar(self, name, var):
        setattr(self, name, var.data)
        self.vars[name] = var

    def getVar(self, name):
        return self.vars[name]

    def getVarTable(self, vartable=None, name=None, root=True):
        if root and name is None:
            name = self.name if self.name is not None else ""
        vartable = {} if vartable is None else vartable
        for paramName, var in self.vars.items():
            vartable.setdefault(var, []).append("%s%s" % (name, paramName))
        return vartable

    def setAttr(self, name, attr):
        setattr(self, name, attr)
        self.attrs[name] = attr

    def getAttr(self, name):
        return self.attrs[name]

    def hasAttr(self, name):
        return name in self.attrs

    # --- forward / backward --------------------------------------------------------------------------------

    def __call__(self, data):
        data = self.checkDeviceArrays(data, "data")
        if not Config.disableDtypeShapeChecks:
            self.checkDataShape(self.acquireShapesFrom(data))
            self.checkDataType(self.acquireDtypesFrom(data))

        # A rejected call leaves the previous result in place.
        old = self.inData, self.data
        self.inData, self.data = data, None
        try:
            self.updateData(data)
        except BaseException:
            self.inData, self.data = old
            raise
        return self.data

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        grad = self.checkDeviceArrays(grad, "grad")
        if not Config.disableDtypeShapeChecks:
            self.checkGradShape(self.acquireShapesFrom(grad))
            self.checkGradType(self.acquireDtypesFrom(grad))

        old = self.grad
        self.grad = None
        try:
            if updGrad:
                self.updateGrad(grad)
            if updParamGrads and self.train:
                self.accGradParams(grad, scale=scale, momentum=momentum)
        except BaseException:
            self.grad = old
            raise
        return self.grad

    def updateData(self, data):
        raise NotImplementedError()

    def updateGrad(self, grad):
        raise NotImplementedError()

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        pass

    # --- parameters ----------------------------------------------------------------------------------------

    def zeroGradParams(self):
        for var in self.vars.values():
            if var.hasUpdater or var.grad is None:
                continue
            var.grad.fill(0)

    def updateParams(self, learnRate):
        """data += learnRate * grad for every variable (PuzzleLib's plain SGD step; pass a negative rate to descend)."""
        from cybn.array import elementwise
        for var in self.vars.values():
            if var.hasUpdater:
                var.update(learnRate)
            elif var.grad is not None:
                elementwise.axpby(var.grad, var.data, learnRate, 1.0, out=var.data)

    def optimizeForShape(self, shape, memlimit=None):
        pass

    def numOfParams(self):
        return sum(var.data.size for var in self.vars.values())

    def paramSize(self, unit=None):
        size = sum(var.data.nbytes for var in self.vars.values())
        return self.convertUnit(size, unit=unit) if unit is not None else size

    @staticmethod
    def convertUnit(val, unit):
        return val / {MemoryUnit.kb: 1024, MemoryUnit.mb: 1024 ** 2}[MemoryUnit(unit)]

    # --- modes ---------------------------------------------------------------------------------------------

    def trainMode(self):
        self.train = True
        self.reset()

    def evalMode(self):
        self.train = False
        self.reset()

    def calcMode(self, T):
        if T != np.float32:
            raise ModuleError("Unsupported dtype %s" % T)
        self.calctype = T

    def reset(self):
        self.inData, self.data, self.grad = None, None, None

    # --- checks --------------------------------------------------------------------------------------------

    def checkDataShape(self, shape):
        pass

    def checkGradShape(self, shape):
        pass

    def dataShapeFrom(self, shape):
        raise NotImplementedError()

    def gradShapeFrom(self, shape):
        raise NotImplementedError()

    def checkDataType(self, dtype):
        self.genericCheckDataType(dtype)

    def checkGradType(self, dtype):
        self.genericCheckDataType(dtype)

    def genericCheckDataType(self, dtype):
        if isinstance(dtype, (tuple, list)):
            for d in dtype:
                self.genericCheckDataType(d)
        elif dtype != self.calctype:
            want, got = np.dtype(self.calctype), np.dtype(dtype)
            fix = "convert the data with .astype(np.%s)" % want.name
            if got.type in self.calcTypes:
                fix = "call calcMode(np.%s) on the module to compute in %s, or %s" % (got.name, got.name, fix)
            raise ModuleError("Expected dtype %s, got %s: %s" % (want, got, fix))

    def checkDeviceArrays(self, data, what):
        """The data as cybn GPUArrays: a GPUArray as is; any other device array with __cuda_array_interface__
        or __dlpack__ wrapped without a copy (cybn.from_cuda_array_interface / cybn.from_dlpack, as the
        functional API does); anything else refused by name, with the fix."""
        if isinstance(data, (tuple, list)) and self.acceptsLists:
            return type(data)(self.checkDeviceArrays(d, what) for d in data)

        from cybn.array import gpuarray
        if isinstance(data, gpuarray.GPUArray):
            return data
        if isinstance(data, np.ndarray):
            raise ModuleError("%s must be a cybn GPUArray, got a host numpy.ndarray (copy it with gpuarray.to_gpu)"
                              % what)
        cai = getattr(data, "__cuda_array_interface__", None)
        if isinstance(cai, dict):
            strides = cai.get("strides")
            if strides is not None and tuple(strides) != _cstrides(cai["shape"], np.dtype(cai["typestr"]).itemsize):
                raise ModuleError("%s is a non-contiguous device array (strides %s); modules need contiguous "
                                  "memory: pass a contiguous copy (made in its own library), or cybn.to_gpu(%s) "
                                  "for a cybn copy" % (what, tuple(strides), what))
            wrap, how = gpuarray.from_cuda_array_interface, "cybn.from_cuda_array_interface"
        elif hasattr(data, "__dlpack__"):
            wrap, how = gpuarray.from_dlpack, "cybn.from_dlpack"
        else:
            raise ModuleError("%s must be a cybn GPUArray or a device array with __cuda_array_interface__ or "
                              "__dlpack__ (taken without a copy, as cybn.from_cuda_array_interface / cybn.from_dlpack "
                              "wrap them; host data: copy it with gpuarray.to_gpu), got %s"
                              % (what, type(data).__name__))
        try:
            return wrap(data)
        except (TypeError, ValueError, BufferError) as e:
            raise ModuleError("%s: %s cannot wrap this %s: %s" % (what, how, type(data).__name__, e)) from None

    @classmethod
    def acquireShapesFrom(cls, data):
        return [cls.acquireShapesFrom(d) for d in data] if isinstance(data, (tuple, list)) else tuple(data.shape)

    @classmethod
    def acquireDtypesFrom(cls, data):
        return [cls.acquireDtypesFrom(d) for d in data] if isinstance(data, (tuple, list)) else data.dtype

    @staticmethod
    def repeat(val, ntimes):
        return (val,) * ntimes if isinstance(val, int) else tuple(val)

    def __str__(self):
        return "Module %s (name: %s)" % (self.__class__.__name__, self.name)

    # --- HDF5 files (PuzzleLib's layout) -------------------------------------------------------------------

    def save(self, hdf=None, varlinks=None, name=None, compress="gzip", assumeUniqueNames=False,
             withBlueprint=False, isRoot=True):
        """Writes the module in PuzzleLib's layout: params/<index> (one dataset per Variable, shared variables
        stored once), links/<module name>.<var name> -> index, attrs/<module name>.<attr name>.
        With hdf=None the file is built in memory and its bytes are returned. A path is written to a temporary
        file renamed over it when complete (a failed save leaves the old file); a symbolic link or a
        non-regular file at the path is refused, never followed (cybn.modules.hdf5)."""
        from cybn.modules import hdf5
        from cybn.array.gpuarray import GPUArray

        serialize = hdf is None
        name = self._fileName(name, assumeUniqueNames)
        varlinks = {} if varlinks is None else varlinks

        buffer = None
        with hdf5.opened(hdf, "w", name, "save") as hdf:
            try:
                paramGrp, linkGrp = hdf.require_group("params"), hdf.require_group("links")
                for paramName, var in self.vars.items():
                    if var in varlinks:
                        idx = varlinks[var]
                    else:
                        idx = len(varlinks)
                        paramGrp.create_dataset(str(idx), data=var.data.get(), compression=compress)
                        varlinks[var] = idx
                    linkGrp["%s.%s" % (name, paramName)] = idx

                if self.attrs:
                    attrGrp = hdf.require_group("attrs")
                    for attrName, attr in self.attrs.items():
                        value = attr.get() if isinstance(attr, GPUArray) else attr
                        attrGrp.create_dataset("%s.%s" % (name, attrName), data=value, compression=compress)

                if withBlueprint:
                    h5py = hdf5.require_h5py()
                    hdf.create_dataset("blueprint", (), dtype=h5py.string_dtype(),
                                       data=json.dumps(self.getBlueprint(), indent=4, sort_keys=True))

                if isRoot and serialize:
                    hdf.flush()
                    buffer = hdf.id.get_file_image()
            except ModuleError:
                raise
            except Exception as e:
                raise ModuleError("Module %s save error: %s" % (name, e)) from e
        return buffer

    def load(self, hdf, initvars=None, name=None, assumeUniqueNames=False, isRoot=True, checkValues=True):
        """Reads a file in PuzzleLib's layout (written by PuzzleLib or by save()). Everything is read and
        checked first, then copied to the device: a failing load changes nothing. Variables and attributes
        the module declares but has not allocated (empty=True) are created from the file.

        The file is untrusted (cybn.modules.hdf5): links other than hard links, external or virtual storage,
        and datasets whose declared shape or dtype does not fit are refused before any data is read. Values
        that make the module unusable (NaN/Inf anywhere, a negative running variance) are refused unless
        checkValues=False."""
        from cybn.modules import hdf5
        from cybn.array.gpuarray import GPUArray

        name = self._fileName(name, assumeUniqueNames)
        initvars = {} if initvars is None else initvars

        with hdf5.opened(hdf, "r", name, "load") as hdf:
            try:
                varValues, attrValues = self._readFile(hdf, name, initvars)
            except ModuleError:
                raise
            except Exception as e:
                raise ModuleError("Module %s load error: %s" % (name, e)) from e
        if checkValues:
            self._checkValues(name, varValues, attrValues)

        for paramName, value in varValues.items():
            var = self.vars.get(paramName)
            if self.varLoader is not None:
                self.varLoader(paramName, value)
            elif var is None:
                from cybn.array import gpuarray
                from cybn.modules.variable import Variable
                var = Variable(gpuarray.to_gpu(value))
                self.setVar(paramName, var)
            else:
                var.data.set(value)
            initvars[self.vars.get(paramName, paramName)] = True

        for attrName, value in attrValues.items():
            attr = self.attrs.get(attrName)
            if self.attrLoader is not None:
                self.attrLoader(attrName, value)
            elif attr is None:
                from cybn.array import gpuarray
                self.setAttr(attrName, gpuarray.to_gpu(value))
            elif isinstance(attr, GPUArray):
                attr.set(value)
            else:
                np.copyto(attr, value)

    def _fileName(self, name, assumeUniqueNames):
        if name is None:
            name = self.name if self.name is not None else ""
        if assumeUniqueNames and name:
            tokens = name.split(sep=".")
            name = "%s.%s" % (tokens[0], tokens[-1])
        return name

    # Attributes whose loaded values must not be negative (a running variance).
    nonNegativeAttrs = ()

    def _loadTarget(self, what, current):
        """(shape, dtype) a loaded tensor must fit: the module's own tensor, else None (anything numeric).
        Modules that know their shapes before allocating (empty=True) override it."""
        return None if current is None else (tuple(current.shape), np.dtype(current.dtype))

    def _readFile(self, hdf, name, initvars):
        """Host copies of every variable/attribute this module takes from the file, checked against the
        module's own tensors (_loadTarget) from the file's metadata before anything is read."""
        from cybn.modules.hdf5 import read_module_tensors
        return read_module_tensors(self, hdf, name, initvars)

    def _checkValues(self, name, varValues, attrValues):
        from cybn.modules.hdf5 import check_values
        check_values(name, varValues, attrValues, self.nonNegativeAttrs)


def _cstrides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))
