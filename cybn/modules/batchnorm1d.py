"""BatchNorm1D: spatial batch normalisation of (N, C, L) data."""
from cybn.modules.batchnorm_nd import BatchNormND


class BatchNorm1D(BatchNormND):
    """BatchNormND with nd=1 (one statistic per channel over N and L).

    Parameters and running statistics have shape (1, maps, 1, 1), not (1, maps, 1): PuzzleLib's BatchNorm1D is
    a 2-d batch norm over (N, C, 1, L), and keeping its shapes keeps files and printed tensors interchangeable.
    """

    def __init__(self, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True, name=None,
                 empty=False, inplace=False):
        super().__init__(1, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace)
        self.registerBlueprint(locals())

    def paramShape(self):
        return (1, self.maps, 1, 1)
