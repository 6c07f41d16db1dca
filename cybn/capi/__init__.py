"""The C and Cython faces of cybn's BatchNorm (cybn/capi/capi.pyx): the capsule cybn._C_API behind
cybn/include/cybn.h, and the nogil functions Cython extensions cimport (`from cybn.capi cimport ...`)."""
from cybn.capi.capi import C_API_VERSION, _C_API  # noqa: F401
