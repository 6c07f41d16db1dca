"""cybn's functional BatchNorm (forward_train, forward_infer, backward, backward_infer, plan, ...) over its
nogil core: the names of the extension cybn/batchnorm/batchnorm.pyx, as `cybn.batchnorm` always had them."""
from cybn.batchnorm import batchnorm as _core
from cybn.batchnorm.batchnorm import (  # noqa: F401
    MAX_WORKSPACES, Mode, backward, backward_infer, compile_options, forward_infer, forward_train,
    forward_train_partials, free_workspaces, kernel_expressions, plan, plan_override, prepare, workspace_count)


def __getattr__(name):
    # the core's other (private) names, as `cybn.batchnorm._KERNEL_NAMES` reached them before the package
    try:
        return getattr(_core, name)
    except AttributeError:
        raise AttributeError(f"module 'cybn.batchnorm' has no attribute {name!r}") from None
