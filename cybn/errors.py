"""The two exception types every cybn layer raises (plain Python: importable without a driver)."""


class CudaError(RuntimeError):
    """A CUDA driver call returned something other than CUDA_SUCCESS.

    .code is the CUresult, .name its enum name, .description the driver's own string and .call the
    entry point that failed, so callers can branch on the code and users see all four at once."""

    def __init__(self, code, name, description, call):
        self.code = int(code)
        self.name = name
        self.description = description
        self.call = call
        super().__init__(f"{call} failed: {name} ({description})")

    def __reduce__(self):
        return (type(self), (self.code, self.name, self.description, self.call))


class CompileError(RuntimeError):
    """NVRTC rejected a kernel source; .log is NVRTC's log (file and line), .name the source name."""

    def __init__(self, name, log, message=None):
        self.name = name
        self.log = log
        super().__init__(message or f"compiling {name} failed:\n{log}")

    def __reduce__(self):
        return (type(self), (self.name, self.log, self.args[0] if self.args else None))
