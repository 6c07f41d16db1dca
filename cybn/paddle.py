"""`import cybn.paddle` / `from cybn.paddle import ...`: the very module cybn.frameworks.paddle (not a copy)."""
import sys

from cybn.frameworks import paddle as _face

sys.modules[__name__] = _face
