"""A trainable tensor: device data, its gradient buffer and per-variable optimiser rates (PuzzleLib's Variable)."""
from cybn.modules import config as Config


class Variable:
    # Unnamed variables get consecutive numbers, as in PuzzleLib.
    index = 0

    def __init__(self, data, name=None, withgrad=True, grad=None, updater=None, postUpdater=None):
        if name is None:
            self.name = str(type(self).index)
            type(self).index += 1
        else:
            self.name = name

        self.data = data
        self.updater = updater
        self.postUpdater = postUpdater
        self.grad = None

        # A variable with its own updater computes no gradient of its own.
        if updater is None:
            if grad is not None:
                if tuple(grad.shape) != tuple(data.shape) or grad.dtype != data.dtype:
                    raise ValueError("Variable %s: grad has shape %s and dtype %s, data has shape %s and dtype %s"
                                     % (self.name, tuple(grad.shape), grad.dtype, tuple(data.shape), data.dtype))
                self.grad = grad
            elif withgrad and not Config.globalEvalMode:
                from cybn.array import gpuarray
                self.grad = gpuarray.zeros(tuple(data.shape), dtype=data.dtype)

        self.learnRate, self.momRate = 1.0, 1.0
        self.wc = 0.0

    @property
    def hasUpdater(self):
        return self.updater is not None

    @property
    def hasPostUpdater(self):
        return self.postUpdater is not None

    def update(self, learnRate):
        self.updater(self, learnRate)

    def postUpdate(self):
        self.postUpdater(self)

    def set(self, variable):
        """Copies another variable's data (and gradient, if this one has one) into this one's buffers."""
        self.data.set(variable.data)
        if self.grad is not None and variable.grad is not None:
            self.grad.set(variable.grad)

    def __repr__(self):
        return "Variable(name=%r, shape=%s, dtype=%s)" % (self.name, tuple(self.data.shape), self.data.dtype)
