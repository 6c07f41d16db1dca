from cybn.modules.module import Module, ModuleError  # noqa: F401
