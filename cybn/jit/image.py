"""CompiledImage: what NVRTC produced for one program (plain Python, so the disk cache can hand one back
without loading NVRTC)."""


class CompiledImage:
    """.image (bytes: PTX text with a trailing NUL, or a CUBIN ELF), .kind ("ptx" or "cubin"), .arch
    ("compute_80", "sm_86", ...), .lowered ({name expression: mangled name}), .log (NVRTC's log; for
    CUBIN with -Xptxas -v it holds ptxas' register/spill report), .name (the source name)."""

    __slots__ = ("image", "kind", "arch", "lowered", "log", "name")

    def __init__(self, image, kind, arch, lowered=None, log="", name=""):
        self.image = bytes(image)
        self.kind = kind
        self.arch = arch
        self.lowered = dict(lowered or {})
        self.log = log
        self.name = name

    def symbol(self, name):
        """The symbol to look up in the loaded module: the lowered name of a name expression, else `name`
        itself (an extern "C" kernel)."""
        return self.lowered.get(name, name)

    def __eq__(self, other):
        if not isinstance(other, CompiledImage):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self):
        return (f"CompiledImage({self.name!r}, kind={self.kind!r}, arch={self.arch!r}, "
                f"{len(self.image)} bytes, {len(self.lowered)} lowered names)")
