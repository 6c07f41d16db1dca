from cybn.modules.batchnorm1d import BatchNorm1D  # noqa: F401
