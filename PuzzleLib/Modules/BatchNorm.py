from cybn.modules.batchnorm import BatchNorm  # noqa: F401
