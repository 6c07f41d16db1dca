"""PuzzleLib-compatible layers over cybn.batchnorm (camelCase names, as PuzzleLib users write them).

Imported lazily (PEP 562) so ``cybn.modules.config`` works without the compiled engine or a driver.
"""
import importlib

_WHERE = {
    "Module": "module", "ModuleError": "module", "Variable": "variable",
    "BatchNormND": "batchnorm_nd", "BatchNorm": "batchnorm", "BatchNorm1D": "batchnorm1d",
    "BatchNorm2D": "batchnorm2d", "BatchNorm3D": "batchnorm3d",
    "SyncBatchNormND": "sync_batchnorm", "SyncBatchNorm1D": "sync_batchnorm", "SyncBatchNorm2D": "sync_batchnorm",
    "SyncBatchNorm3D": "sync_batchnorm",
    "BatchNormMode": "dnn", "batchNormNd": "dnn", "batchNormNdBackward": "dnn",
}

__all__ = ["Config", *_WHERE]


def __getattr__(name):
    if name == "Config":
        return importlib.import_module("cybn.modules.config")
    if name in _WHERE:
        value = getattr(importlib.import_module("cybn.modules." + _WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError("module 'cybn.modules' has no attribute %r" % name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
