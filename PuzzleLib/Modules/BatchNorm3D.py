from cybn.modules.batchnorm3d import BatchNorm3D  # noqa: F401
