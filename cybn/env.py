"""The CYBN_* environment variables cybn's Python layers read, validated: a bad value raises ValueError naming
the variable and the values it accepts. (The software GPU validates its own CYBN_SOFTGPU_* variables when cuInit
runs; its CudaError's detail names the variable.)"""
import os

TRUE = ("1", "on", "true", "yes")
FALSE = ("0", "off", "false", "no")


def flag(name, default):
    """True/False from 1/on/true/yes or 0/off/false/no (any case); unset or empty: `default`."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not valid (accepted: {', '.join(TRUE + FALSE)})")


def choice(name, choices, default):
    """One of `choices` (any case); unset or empty: `default`."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={raw!r} is not valid (accepted: {', '.join(choices)})")
    return value
