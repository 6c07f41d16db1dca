"""BatchNormND: spatial batch normalisation of (N, C, *spatial) data, PuzzleLib's layer over cybn.batchnorm."""
import math
import numbers

import numpy as np

from cybn.modules import config as Config
from cybn.modules.dnn import BatchNormMode, batchNormNd, batchNormNdBackward, batchNormNdBackwardFrozen
from cybn.modules.module import Module, ModuleError
from cybn.modules.variable import Variable


class BatchNormND(Module):
    """Batch normalisation over every axis but the channel axis (1) of (N, maps, *spatial) data, nd spatial axes.

    Training forward (PuzzleLib's behaviour): ``numOfProps += 1``,
    ``factor = max(initFactor / numOfProps, minFactor)``, ``y = scale * (x - mu) * invstd + bias`` with the batch
    mean ``mu`` and ``invstd = 1 / sqrt(biased batch variance + epsilon)``; the running statistics move as
    ``mean = (1 - factor) * mean + factor * mu`` and ``var = (1 - factor) * var + factor * M / (M - 1) * batch
    variance`` (M elements per channel; cuDNN's convention). The factor weights the NEW batch: PuzzleLib's
    documentation writes it on the old value, but its code and its own example behave as here.

    Eval forward normalises with the running statistics; ``inplace=True`` writes the result into the input's
    memory (eval mode only: in train mode it raises ModuleError, as in PuzzleLib).

    Backward after a training forward uses the saved batch statistics. Backward after an eval forward returns
    the gradient of the eval-mode function (frozen running statistics); PuzzleLib instead recomputes batch
    statistics there. After an in-place eval forward the input is gone, so backward gives the input gradient
    only (scalegrad/biasgrad None).

    Parameters ``scale`` (drawn from Normal(1, sscale); exactly 1 when affine=False) and ``bias`` (zeros) are
    Variables; running ``mean`` (zeros) and ``var`` (ones) are attributes; all float32 of shape
    ``paramShape()`` = (1, maps, 1, ..., 1). ``calcMode(np.float16)`` runs half-precision data with float32
    statistics and parameters.
    """

    declaredVars = ("scale", "bias")
    declaredAttrs = ("mean", "var")
    calcTypes = (np.float32, np.float16)
    mode = BatchNormMode.spatial

    def __init__(self, nd, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True, name=None,
                 empty=False, inplace=False):
        super().__init__(name)
        self.registerBlueprint(locals())

        _require_int("nd", nd, 0 if self.mode == BatchNormMode.perActivation else 1)
        _require_int("maps", maps, 1)
        _require_real("epsilon", epsilon, positive=True)
        if not epsilon <= float(np.finfo(np.float32).max) or np.float32(epsilon) == 0:  # the engine's float32: not 0 or inf
            raise ModuleError("epsilon must be a positive number representable as float32, got %r" % (epsilon,))
        # The engine takes moving-average factors in [0, 1]; refuse others here rather than at the first step.
        _require_real("initFactor", initFactor, unit=True)
        _require_real("minFactor", minFactor, unit=True)
        _require_real("sscale", sscale)

        self.nd = nd
        self.maps = maps
        self.epsilon = float(epsilon)
        self.initFactor = float(initFactor)
        self.minFactor = float(minFactor)
        self.numOfProps = 0
        self.affine = bool(affine)

        self.inplace = bool(inplace)
        if self.inplace and Config.showWarnings:
            print("[%s] Warning: %s is using inplace flag" % (Config.libname, self))

        self.scale, self.bias, self.mean, self.var = None, None, None, None
        self.savemean, self.saveinvvar, self.scalegrad, self.biasgrad = None, None, None, None
        # backward(): the (scale, momentum) accGradParams will apply, so updateGrad fuses the accumulation
        # into its launch; True once it did (accGradParams then has nothing left to do).
        self.pendingAcc, self.accumulatedInKernel = None, False
        # True when the last forward ran in eval mode (backward then differentiates the eval-mode function).
        self.evalForward = False

        if empty:
            return

        from cybn.array import gpuarray
        shape = self.paramShape()
        scale = np.random.normal(1.0, sscale if self.affine else 0.0, shape).astype(np.float32)

        self.setVar("scale", Variable(gpuarray.to_gpu(scale)))
        self.setVar("bias", Variable(gpuarray.zeros(shape, dtype=np.float32)))
        self.setAttr("mean", gpuarray.zeros(shape, dtype=np.float32))
        self.setAttr("var", gpuarray.to_gpu(np.ones(shape, dtype=np.float32)))

    def paramShape(self):
        return (1, self.maps) + (1,) * self.nd

    # --- forward / backward --------------------------------------------------------------------------------

    def updateData(self, data):
        self.checkInitialised()

        if self.train:
            if self.inplace:
                raise ModuleError("%s: using inplace flag in train mode is prohibited" % self)
            perStatistic = data.shape[0] * (1 if self.mode == BatchNormMode.perActivation
                                            else int(np.prod(data.shape[2:])))
            if perStatistic == 1:
                raise ModuleError("%s: training needs more than one value per statistic, but data of shape %s has "
                                  "one (the batch variance is undefined; PuzzleLib/cuDNN refuse it too): use a "
                                  "larger batch, or evalMode() to normalise with the running statistics"
                                  % (self, tuple(data.shape)))
            # numOfProps counts only forwards that ran: it is incremented after the call succeeds.
            factor = max(self.initFactor / (self.numOfProps + 1), self.minFactor)
            result, savemean, saveinvvar = batchNormNd(
                data, self.scale, self.bias, self.mean, self.var, self.epsilon, factor, False, mode=self.mode)
            self.numOfProps += 1
            self.data, self.savemean, self.saveinvvar = result, savemean, saveinvvar
            self.evalForward = False
        else:
            self.data = batchNormNd(data, self.scale, self.bias, self.mean, self.var, self.epsilon, 0.0, True,
                                    mode=self.mode, out=data if self.inplace else None)
            self.evalForward = True

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        """PuzzleLib's backward. When it both computes the gradients and accumulates the parameter gradients
        (a train-mode module with gradient buffers), the accumulation ``grad = scale * batch + momentum * grad``
        runs inside the backward kernel: one launch when a channel fits one CTA, two when split, never an
        extra launch for the accumulation."""
        fuse = updGrad and updParamGrads and self.train and self.affine and \
            all(self.vars[n].grad is not None for n in ("scale", "bias"))
        self.pendingAcc, self.accumulatedInKernel = ((scale, momentum) if fuse else None), False
        try:
            return super().backward(grad, updParamGrads, updGrad, scale, momentum)
        finally:
            self.pendingAcc, self.accumulatedInKernel = None, False

    def updateGrad(self, grad):
        if self.inData is None:
            raise ModuleError("%s: backward called before a forward" % self)
        self.checkInitialised()

        # An in-place eval forward overwrote its input, so the parameter gradients (which need x) are
        # unavailable; the input gradient does not depend on x there.
        lost = self.evalForward and self.inplace
        acc = None
        if self.pendingAcc is not None and not lost:
            acc = (self.vars["scale"].grad, self.vars["bias"].grad) + tuple(self.pendingAcc)
        if self.evalForward:
            ingrad, scalegrad, biasgrad = batchNormNdBackwardFrozen(
                self.inData, grad, self.scale, self.mean, self.var, self.epsilon, mode=self.mode, accumulate=acc)
        else:
            if self.savemean is None:
                raise ModuleError("%s: backward needs the statistics of a training forward" % self)
            ingrad, scalegrad, biasgrad = batchNormNdBackward(
                self.inData, grad, self.scale, self.savemean, self.saveinvvar, self.epsilon, mode=self.mode,
                accumulate=acc)
        self.accumulatedInKernel = acc is not None

        self.grad = ingrad
        if self.affine:
            self.scalegrad, self.biasgrad = (None, None) if lost else (scalegrad, biasgrad)

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        """Each parameter's grad becomes ``scale * (this batch's gradient) + momentum * grad``. Inside
        backward() the backward kernel already did it (see backward); called on its own it is one axpby
        per parameter."""
        if self.accumulatedInKernel:
            self.accumulatedInKernel = False
            return
        if not self.affine or self.scalegrad is None:
            return
        from cybn.array import elementwise
        for var, batchGrad in ((self.vars["scale"], self.scalegrad), (self.vars["bias"], self.biasgrad)):
            if var.grad is not None:
                elementwise.axpby(batchGrad.ravel(), var.grad.ravel(), scale, momentum, out=var.grad.ravel())

    def checkInitialised(self):
        missing = [n for n in ("scale", "bias", "mean", "var") if getattr(self, n) is None]
        if missing:
            raise ModuleError("%s: %s not initialised (the module was created with empty=True; set them with "
                              "setVar/setAttr or load them)" % (self, ", ".join(missing)))

    # --- shapes and types ----------------------------------------------------------------------------------

    def checkDataShape(self, shape):
        self.checkShape(shape, "Data")
        _require_nonempty(shape, "Data")

    def checkGradShape(self, shape):
        self.checkShape(shape, "Grad")
        _require_nonempty(shape, "Grad")
        if self.inData is not None and tuple(shape) != tuple(self.inData.shape):
            raise ModuleError("Grad has shape %s, the forward's data had shape %s"
                              % (tuple(shape), tuple(self.inData.shape)))

    def checkShape(self, shape, what):
        if len(shape) != self.nd + 2:
            raise ModuleError("%s must be %dd tensor" % (what, self.nd + 2))
        if shape[1] != self.maps:
            raise ModuleError("%s has %d maps (expected: %d)" % (what, shape[1], self.maps))

    def dataShapeFrom(self, shape):
        return shape

    def gradShapeFrom(self, shape):
        return shape

    def reset(self):
        super().reset()
        self.savemean, self.saveinvvar = None, None
        self.evalForward = False
        if self.affine:
            self.scalegrad, self.biasgrad = None, None

    nonNegativeAttrs = ("var",)

    def _loadTarget(self, what, current):
        # An empty module has no tensors to compare the file's with: check them against paramShape (a file for
        # another number of maps, or float64 data, is refused here instead of leaving a module whose forward fails).
        return (self.paramShape(), np.dtype(np.float32))

    def calcMode(self, T):
        """float32 or float16 data (statistics and parameters stay float32); anything else is refused."""
        try:
            dtype = np.dtype(T)
        except TypeError:
            raise ModuleError("Unsupported dtype %s" % (T,)) from None
        if dtype.type not in self.calcTypes:
            raise ModuleError("Unsupported dtype %s" % (T,))
        self.calctype = dtype.type


def _require_nonempty(shape, what):
    if 0 in tuple(shape):
        raise ModuleError("%s has shape %s: batch normalisation needs at least one value per statistic "
                          "(no dimension may be 0)" % (what, tuple(shape)))


def _require_int(what, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ModuleError("%s must be an integer >= %d, got %r" % (what, minimum, value))


def _require_real(what, value, positive=False, unit=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ModuleError("%s must be a finite%s number, got %r" % (what, " positive" if positive else "", value))
    if unit and not 0.0 <= value <= 1.0:
        raise ModuleError("%s must be in [0, 1], got %r" % (what, value))
