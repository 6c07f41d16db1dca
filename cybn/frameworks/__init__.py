"""Faces of other frameworks over cybn's functional BatchNorm (cybn.batchnorm): MXNet's BatchNorm operator
(cybn.frameworks.mxnet, also cybn.mxnet) and Paddle's BatchNorm layer (cybn.frameworks.paddle, also
cybn.paddle). Thin: no kernels or launches of their own; each semantic difference is a parameter of the
core or a composition of its calls. What the engine cannot do yet is refused (EngineFeatureMissing)."""
from cybn.frameworks.common import EngineFeatureMissing

__all__ = ["EngineFeatureMissing"]
