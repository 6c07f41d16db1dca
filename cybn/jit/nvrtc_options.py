"""The exact NVRTC command line cybn uses, and validation of a compile request.

Kept apart from cybn.jit.nvrtc (which loads NVRTC, ~100 ms) because the disk cache hashes this command line
to find an entry without loading NVRTC at all."""
import re

from .. import paths

TARGETS = ("ptx", "cubin")
_ARCH = re.compile(r"^(compute|sm)_(\d{2,3})([af]?)$")
# The architecture is a parameter of its own (it is part of the cache key and decides PTX vs CUBIN), so
# it may not hide in the free-form options.
_ARCH_FLAGS = ("-arch", "--gpu-architecture")


def arch_number(arch):
    """"sm_86" -> 86, "compute_90a" -> 90."""
    return int(_ARCH.match(arch).group(2))


def check_request(options, name_expressions, target, arch, headers=None):
    """Validate the arguments of a compile; returns (options, name_expressions) as tuples of str.
    Raises TypeError/ValueError naming the bad argument."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not isinstance(arch, str) or not _ARCH.match(arch):
        raise ValueError(f"arch must look like 'compute_80' or 'sm_86', got {arch!r}")
    if target == "cubin" and not arch.startswith("sm_"):
        raise ValueError(f"target='cubin' needs a real architecture (sm_XY), got arch={arch!r}")
    options = _str_tuple(options, "options")
    for opt in options:
        if opt.split("=")[0] in _ARCH_FLAGS:
            raise ValueError(f"options may not set the architecture ({opt!r}): pass arch= instead")
    name_expressions = _str_tuple(name_expressions, "name_expressions")
    if headers is not None:
        if not isinstance(headers, dict):
            raise TypeError(f"headers must be a dict {{include name: source text}}, got {type(headers).__name__}")
        for k, v in headers.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"headers must map str to str, got {k!r}: {type(v).__name__}")
    return options, name_expressions


def _str_tuple(values, what):
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of str, not a single {type(values).__name__}")
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of str, got {type(values).__name__}") from None
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{what} must contain only str, got {v!r}")
    return values


def effective_options(options, arch):
    """The full option list handed to NVRTC: architecture, C++17 (unless the caller chose a -std), the
    caller's options, then the kernel directory (so kernels can #include "common.cuh") and the wheel's
    CUDA include directory (cuda_fp16.h, cuda_bf16.h)."""
    out = [f"--gpu-architecture={arch}"]
    if not any(o.startswith(("-std", "--std")) for o in options):
        out.append("-std=c++17")
    out.extend(options)
    out.append(f"-I{paths.kernel_dir()}")
    out.extend(f"-I{d}" for d in paths.cuda_include_dirs())
    return out


def include_dirs_of(options):
    """The -I directories of an option list, in search order (forms: -Idir, -I dir, --include-path=dir)."""
    dirs, it = [], iter(options)
    for opt in it:
        if opt in ("-I", "--include-path"):
            dirs.append(next(it, ""))
        elif opt.startswith("--include-path="):
            dirs.append(opt.split("=", 1)[1])
        elif opt.startswith("-I"):
            dirs.append(opt[2:])
    return [d for d in dirs if d]


def pre_includes_of(options):
    """Headers force-included by -include / --pre-include."""
    out, it = [], iter(options)
    for opt in it:
        if opt in ("-include", "--pre-include"):
            out.append(next(it, ""))
        elif opt.startswith("--pre-include="):
            out.append(opt.split("=", 1)[1])
    return [h for h in out if h]


SOFTGPU_TARGET = ("ptx", "compute_80")


def target_for(compute_capability, software=False):
    """(target, arch) to build for a device: the software GPU takes PTX for compute_80; a real device gets
    CUBIN for its own sm_XY when NVRTC supports it, else PTX for the newest supported architecture not
    above it (the driver JITs that). Only a real device makes this load NVRTC."""
    if software:
        return SOFTGPU_TARGET
    major, minor = compute_capability
    sm = int(major) * 10 + int(minor)
    from . import nvrtc
    supported = nvrtc.supported_archs()
    if sm in supported:
        return "cubin", f"sm_{sm}"
    older = [a for a in supported if a <= sm]
    if not older:
        raise ValueError(f"compute capability {major}.{minor} is older than anything NVRTC {nvrtc.version()} "
                         f"supports ({supported})")
    return "ptx", f"compute_{max(older)}"
