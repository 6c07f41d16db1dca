"""The two exception types every cybn layer raises (plain Python: importable without a driver)."""


class CudaError(RuntimeError):
    """A CUDA driver call returned something other than CUDA_SUCCESS.

    .code is the CUresult, .name its enum name, .description the driver's own string and .call the
    entry point that failed, so callers can branch on the code and users see all four at once.
    .detail (or None) is extra text after the first line: on the software GPU, its report of the
    failing launch or module load (which check fired, kernel, PTX line, thread, address)."""

    def __init__(self, code, name, description, call, detail=None):
        self.code = int(code)
        self.name = name
        self.description = description
        self.call = call
        self.detail = detail  # e.g. the software GPU's report of what a kernel did wrong
        msg = f"{call} failed: {name} ({description})"
        super().__init__(msg + "\n" + detail if detail else msg)

    def __reduce__(self):
        return (type(self), (self.code, self.name, self.description, self.call, self.detail))


class CompileError(RuntimeError):
    """NVRTC rejected a kernel source; .log is NVRTC's log (file and line), .name the source name."""

    def __init__(self, name, log, message=None):
        self.name = name
        self.log = log
        super().__init__(message or f"compiling {name} failed:\n{log}")

    def __reduce__(self):
        return (type(self), (self.name, self.log, self.args[0] if self.args else None))
