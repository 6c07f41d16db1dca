from cybn.modules.batchnorm2d import BatchNorm2D  # noqa: F401
