# `from cybn.batchnorm cimport ...` (the nogil core's old cimport path) keeps working.
from cybn.batchnorm.batchnorm cimport *
