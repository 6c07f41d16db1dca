from cybn.modules.dnn import BatchNormMode, batchNormNd, batchNormNdBackward  # noqa: F401
