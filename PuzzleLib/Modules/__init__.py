"""PuzzleLib.Modules: the batch-normalisation layers (each name is the cybn.modules class)."""
from PuzzleLib.Modules.Module import Module, ModuleError  # noqa: F401
from PuzzleLib.Modules.BatchNormND import BatchNormND  # noqa: F401
from PuzzleLib.Modules.BatchNorm import BatchNorm  # noqa: F401
from PuzzleLib.Modules.BatchNorm1D import BatchNorm1D  # noqa: F401
from PuzzleLib.Modules.BatchNorm2D import BatchNorm2D  # noqa: F401
from PuzzleLib.Modules.BatchNorm3D import BatchNorm3D  # noqa: F401
