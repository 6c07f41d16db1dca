# distutils: language = c++
"""CUresult -> cybn.CudaError (with the driver's name and description of the code and the failing call)."""
from cuda.bindings cimport cydriver

import sys

from cybn.errors import CudaError


cdef int raise_error(cydriver.CUresult status, const char* call) except -1:
    raise make_error(<int>status, call.decode())


def make_error(int code, str call):
    """The CudaError for `code` returned by `call`; asks the driver for the name and description."""
    cdef const char* name = NULL
    cdef const char* desc = NULL
    cdef cydriver.CUresult c = <cydriver.CUresult>code
    try:
        if cydriver.cuGetErrorName(c, &name) != cydriver.CUDA_SUCCESS:
            name = NULL
        if cydriver.cuGetErrorString(c, &desc) != cydriver.CUDA_SUCCESS:
            desc = NULL
    except Exception:  # no driver loaded at all: still report the number
        name = desc = NULL
    return CudaError(code,
                     name.decode() if name != NULL else f"CUDA_ERROR_{code}",
                     desc.decode() if desc != NULL else "unrecognized error code",
                     call, _softgpu_report(code, call))


# Failures the software GPU explains in last_report(): bad images and failed launches.
_REPORTED = {cydriver.CUDA_ERROR_INVALID_IMAGE, cydriver.CUDA_ERROR_INVALID_PTX, cydriver.CUDA_ERROR_NO_BINARY_FOR_GPU,
             cydriver.CUDA_ERROR_ILLEGAL_ADDRESS, cydriver.CUDA_ERROR_LAUNCH_FAILED,
             cydriver.CUDA_ERROR_ILLEGAL_INSTRUCTION, cydriver.CUDA_ERROR_MISALIGNED_ADDRESS,
             cydriver.CUDA_ERROR_LAUNCH_TIMEOUT, cydriver.CUDA_ERROR_NOT_SUPPORTED,
             cydriver.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, cydriver.CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE}


def _softgpu_report(int code, str call=""):
    softgpu = sys.modules.get("cybn.softgpu")
    # cuInit's INVALID_VALUE on the software GPU is a bad CYBN_SOFTGPU_* variable, named in the report.
    reported = code in _REPORTED or (call == "cuInit" and code == cydriver.CUDA_ERROR_INVALID_VALUE)
    if not reported or softgpu is None or not softgpu.active():
        return None
    try:
        return softgpu.last_report() or None
    except Exception:
        return None


def check_status(code, call):
    """Python-level check for results of cuda.bindings.driver calls (a CUresult or an int)."""
    code = int(code)
    if code != 0:
        raise make_error(code, call)
