"""Every CYBN_* environment variable is validated: a bad value raises a Python exception naming the variable and
the values it accepts; the spellings of on/off are accepted. The software GPU's variables are read once per
process (in cuInit), so those cases run in fresh interpreters."""
import os
import subprocess
import sys
import textwrap

import pytest

from cybn import backend, cache, env

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints the checks in force after a device allocation (which needs cuInit), or the exception's text.
PROBE = textwrap.dedent("""
    import json, cybn
    from cybn import softgpu
    softgpu.load()
    try:
        cybn.zeros(4).get()
    except Exception as e:
        print(json.dumps(dict(error=type(e).__name__, text=str(e))))
    else:
        print(json.dumps(dict(checks=softgpu.checks(), seed=softgpu.get_seed())))
""")


def probe(**variables):
    import json
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYBN_SOFTGPU_")}
    environ.update(variables, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# streamcheck is off unless CYBN_SOFTGPU_ASYNC=1 turns it on (or the list names it).
OFF = dict(memcheck=False, racecheck=False, initcheck=False, streamcheck=False)
ON = dict(memcheck=True, racecheck=True, initcheck=True, streamcheck=False)


@pytest.mark.parametrize("value,checks", [
    ("0", OFF), ("off", OFF), ("false", OFF), ("none", OFF), ("1", ON), ("True", ON), ("all", ON),
    ("memcheck, initcheck", dict(memcheck=True, racecheck=False, initcheck=True, streamcheck=False)),
    ("initcheck,streamcheck", dict(memcheck=False, racecheck=False, initcheck=True, streamcheck=True)),
])
def test_softgpu_checks_spellings(value, checks):
    assert probe(CYBN_SOFTGPU_CHECKS=value)["checks"] == checks


@pytest.mark.parametrize("name,value,accepted", [
    ("CYBN_SOFTGPU_CHECKS", "memcheck,bogus", "accepted: all, none, 1, 0, on, off, true, false"),
    ("CYBN_SOFTGPU_MEMORY", "-1", "accepted: a positive size"),
    ("CYBN_SOFTGPU_MEMORY", "99999999999T", "accepted: a positive size"),
    ("CYBN_SOFTGPU_WATCHDOG", "-5", "accepted: a positive integer"),
    ("CYBN_SOFTGPU_SEED", " 7", "accepted: a non-negative integer"),
    ("CYBN_SOFTGPU_TRACE", "yes please", "accepted: 0 or 1"),
])
def test_bad_softgpu_variables_reach_python_named(name, value, accepted):
    out = probe(**{name: value})
    assert out.get("error") == "CudaError", out
    assert "cuInit failed" in out["text"] and f"{name}='{value}' is not valid" in out["text"], out["text"]
    assert accepted in out["text"]


def test_cybn_cache_spellings(monkeypatch):
    for value, on in (("0", False), ("off", False), ("FALSE", False), ("no", False), ("1", True), ("on", True),
                      ("", True)):
        monkeypatch.setenv("CYBN_CACHE", value)
        assert cache.enabled() is on, value
    monkeypatch.setenv("CYBN_CACHE", "disabled")
    with pytest.raises(ValueError, match=r"CYBN_CACHE='disabled' is not valid \(accepted: 1, on, true, yes, 0"):
        cache.enabled()


def test_cybn_device_is_validated(monkeypatch):
    monkeypatch.setattr(backend, "_name", None)
    monkeypatch.setenv("CYBN_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"CYBN_DEVICE='tpu' is not valid \(accepted: auto, cuda, softgpu\)"):
        backend.init()
    monkeypatch.setenv("CYBN_DEVICE", " SoftGPU ")
    assert backend.init() == "softgpu"


def test_env_flag_and_choice_defaults(monkeypatch):
    monkeypatch.delenv("CYBN_TEST_FLAG", raising=False)
    assert env.flag("CYBN_TEST_FLAG", True) is True and env.choice("CYBN_TEST_FLAG", ("a", "b"), "b") == "b"


def test_cache_dir_and_softgpu_library_are_named(tmp_path, monkeypatch):
    from cybn import diskcache, softgpu
    f = tmp_path / "a-file"
    f.write_text("x")
    monkeypatch.setenv("CYBN_CACHE_DIR", str(f))
    monkeypatch.setattr(diskcache, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"CYBN_CACHE_DIR='.*a-file' \(accepted: a directory you own"):
        assert diskcache.usable_dir() is None
    monkeypatch.setenv("CYBN_SOFTGPU_LIBRARY", str(tmp_path / "missing.so"))
    monkeypatch.setattr(softgpu, "_lib", None)
    with pytest.raises(FileNotFoundError, match=r"CYBN_SOFTGPU_LIBRARY='.*missing.so' does not exist \(accepted:"):
        softgpu.load()
