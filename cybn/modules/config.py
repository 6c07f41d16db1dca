"""Process-wide settings of the Module layer, named as PuzzleLib's ``Config`` module names them.

``PuzzleLib.Config`` is this very module object, so ``Config.globalEvalMode = True`` set through either
name is seen by every Module.
"""
import logging
import sys
from enum import Enum


class ConfigError(Exception):
    pass


class Backend(Enum):
    # cybn drives the CUDA driver API (a real GPU or the software GPU); PuzzleLib's other backends are
    # listed only so code comparing against them keeps working.
    cuda = 0
    hip = 1
    cpu = 2
    intel = 3


backend = Backend.cuda
deviceIdx = 0

allowMultiContext = False
systemLog = False
logger = None

libname = "PuzzleLib"

globalEvalMode = False
disableDtypeShapeChecks = False
disableModuleCompatChecks = False
verifyData = False
showWarnings = True


def isCPUBased(bnd):
    return bnd in {Backend.cpu, Backend.intel}


def shouldInit():
    import multiprocessing
    return multiprocessing.current_process().name == "MainProcess" or allowMultiContext


def getLogger():
    """The library logger (created once; prints "[PuzzleLib] message" on stdout like PuzzleLib)."""
    global logger
    if logger is not None:
        return logger

    logger = logging.getLogger(libname)
    logger.setLevel(logging.DEBUG if systemLog else logging.INFO)
    handler = logging.StreamHandler(stream=sys.stdout)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    logger.addHandler(handler)
    return logger
