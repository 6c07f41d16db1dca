"""`import cybn.mxnet` / `from cybn.mxnet import ...`: the very module cybn.frameworks.mxnet (not a copy)."""
import sys

from cybn.frameworks import mxnet as _face

sys.modules[__name__] = _face
