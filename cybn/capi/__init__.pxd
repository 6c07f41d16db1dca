# `from cybn.capi cimport ...` (the path the README documents) keeps working: the declarations live in
# cybn/capi/capi.pxd, beside the extension that implements them.
from cybn.capi.capi cimport *
