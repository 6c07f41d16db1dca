"""BatchNorm3D: spatial batch normalisation of (N, C, D, H, W) data."""
from cybn.modules.batchnorm_nd import BatchNormND


class BatchNorm3D(BatchNormND):
    """BatchNormND with nd=3; parameters and running statistics of shape (1, maps, 1, 1, 1)."""

    def __init__(self, maps, epsilon=1e-5, initFactor=1.0, minFactor=0.1, sscale=0.01, affine=True, name=None,
                 empty=False, inplace=False):
        super().__init__(3, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace)
        self.registerBlueprint(locals())
