from cybn.modules.variable import Variable  # noqa: F401
