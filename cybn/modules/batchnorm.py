"""BatchNorm: per-activation batch normalisation of (N, size) data (e.g. after a fully connected layer)."""
from cybn.modules.batchnorm_nd import BatchNormND
from cybn.modules.dnn import BatchNormMode
from cybn.modules.module import ModuleError


class BatchNorm(BatchNormND):
    """One mean and variance per feature, over the batch axis; otherwise as BatchNormND (see there for the
    running-statistics update: the factor weights the new batch).

    Parameters and running statistics have shape (1, size, 1, 1), as PuzzleLib's (its documentation prints
    the running mean that way).
    """

    mode = BatchNormMode.perActivation

    def __init__(self, size, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True, name=None,
                 empty=False, inplace=False):
        super().__init__(0, size, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace)
        self.registerBlueprint(locals())
        self.size = size

    def paramShape(self):
        return (1, self.maps, 1, 1)

    def checkShape(self, shape, what):
        if len(shape) != 2:
            raise ModuleError("%s must be 2d matrix" % what)
        if shape[1] != self.maps:
            raise ModuleError("Expected %d %s dimensions, %d were given" % (self.maps, what.lower(), shape[1]))
