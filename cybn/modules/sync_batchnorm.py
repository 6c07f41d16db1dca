"""SyncBatchNorm1D/2D/3D: PuzzleLib-style BatchNorm layers whose training statistics span every process of a
cybn.distributed communicator (SyncBatchNorm).

Separate classes rather than a ``comm=`` argument on BatchNorm1D/2D/3D: PuzzleLib code builds and rebuilds
those from their blueprints (constructor arguments, saved with the model) and must run unchanged, while a
communicator is a live process resource that belongs to no saved model. Here ``comm`` is excluded from the
blueprint; everything else (parameters, running statistics, eval mode, load/save) is BatchNormND's."""
from cybn.modules.batchnorm_nd import BatchNormND
from cybn.modules.module import ModuleError


class SyncBatchNormND(BatchNormND):
    """BatchNormND whose training forward and backward combine the statistics and the gradient sums of every
    rank of ``comm`` (a cybn.distributed Communicator: MPICommunicator, TorchCommunicator, NCCLCommunicator).
    Every rank must run the same sequence of train-mode forwards and backwards. A rank's batch may have 1 or
    0 samples (it still joins the collectives); the running statistics use the global count. Eval mode is
    BatchNormND's (local: the running statistics are the same on every rank)."""

    def __init__(self, nd, maps, comm, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False):
        from cybn.distributed.communicator import Communicator
        if not isinstance(comm, Communicator):
            raise ModuleError("comm must be a cybn.distributed communicator (e.g. MPICommunicator()), got %s"
                              % type(comm).__name__)
        super().__init__(nd, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, False)
        self.registerBlueprint(locals(), exclude=("comm",))
        self.comm = comm

    def updateData(self, data):
        if not self.train:
            return super().updateData(data)
        self.checkInitialised()
        from cybn import batchnorm
        factor = max(self.initFactor / (self.numOfProps + 1), self.minFactor)
        shape = self.paramShape()
        result, savemean, saveinvvar = batchnorm.forward_train(
            data, self.scale.ravel(), self.bias.ravel(), self.mean.ravel(), self.var.ravel(), self.epsilon, factor,
            mode=self.mode.value, comm=self.comm)
        self.numOfProps += 1
        self.data, self.savemean, self.saveinvvar = result, savemean.reshape(*shape), saveinvvar.reshape(*shape)
        self.evalForward = False

    def updateGrad(self, grad):
        if self.evalForward or self.inData is None:
            return super().updateGrad(grad)
        self.checkInitialised()
        from cybn import batchnorm
        acc = self.pendingAcc
        shape = self.paramShape()
        kw = {}
        if acc is not None:
            scale, momentum = acc
            kw = dict(scale_grad=self.vars["scale"].grad.ravel(), bias_grad=self.vars["bias"].grad.ravel(),
                      scale_grad_alpha=scale, scale_grad_beta=momentum, bias_grad_alpha=scale,
                      bias_grad_beta=momentum)
        ingrad, scalegrad, biasgrad = batchnorm.backward(
            self.inData, grad, self.scale.ravel(), self.savemean.ravel(), self.saveinvvar.ravel(),
            mode=self.mode.value, comm=self.comm, **kw)
        self.accumulatedInKernel = acc is not None
        self.grad = ingrad
        if self.affine:  # as BatchNormND: with the fused accumulation these are the accumulated gradients
            self.scalegrad, self.biasgrad = scalegrad.reshape(*shape), biasgrad.reshape(*shape)

    def checkDataShape(self, shape):
        self.checkShape(shape, "Data")
        if 0 in tuple(shape)[1:]:
            raise ModuleError("Data has shape %s: only the batch axis may be empty" % (tuple(shape),))

    def checkGradShape(self, shape):
        self.checkShape(shape, "Grad")
        if self.inData is not None and tuple(shape) != tuple(self.inData.shape):
            raise ModuleError("Grad has shape %s, the forward's data had shape %s"
                              % (tuple(shape), tuple(self.inData.shape)))


class SyncBatchNorm1D(SyncBatchNormND):
    """(N, maps, L) data; parameters of shape (1, maps, 1)."""

    def __init__(self, maps, comm, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False):
        super().__init__(1, maps, comm, epsilon, initFactor, minFactor, sscale, affine, name, empty)
        self.registerBlueprint(locals(), exclude=("comm",))


class SyncBatchNorm2D(SyncBatchNormND):
    """(N, maps, H, W) data; parameters of shape (1, maps, 1, 1)."""

    def __init__(self, maps, comm, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False):
        super().__init__(2, maps, comm, epsilon, initFactor, minFactor, sscale, affine, name, empty)
        self.registerBlueprint(locals(), exclude=("comm",))


class SyncBatchNorm3D(SyncBatchNormND):
    """(N, maps, D, H, W) data; parameters of shape (1, maps, 1, 1, 1)."""

    def __init__(self, maps, comm, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True,
                 name=None, empty=False):
        super().__init__(3, maps, comm, epsilon, initFactor, minFactor, sscale, affine, name, empty)
        self.registerBlueprint(locals(), exclude=("comm",))

