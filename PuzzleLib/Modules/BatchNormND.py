from cybn.modules.batchnorm_nd import BatchNormND  # noqa: F401
