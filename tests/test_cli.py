"""`python -m cybn`'s command line: --help, --version, warmup --help, the compile step's per-program report,
and warmup's progress (a bar on a terminal only)."""
import io
import os
import re
import subprocess
import sys

import cybn
from cybn import __main__ as main_mod
from cybn import warmup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cybn", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, CYBN_DEVICE="softgpu", **(env or {})))


def test_help_describes_the_main_job_and_every_subcommand():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m cybn")
    for words in ("main job", "software GPU", "warmup", "--arch", "--all-archs", "--jobs", "--version",
                  "cybn: OK", "warmup --help"):
        assert words in r.stdout, words


def test_warmup_help_describes_every_option():
    r = cli("warmup", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m cybn warmup")
    for opt in ("--arch", "--all-archs", "--jobs", "-h, --help", "CYBN_CACHE_DIR"):
        assert opt in r.stdout, opt


def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cybn {cybn.__version__}"


def test_usage_errors_exit_2_naming_the_argument(capsys):
    assert main_mod.main(["--bogus"]) == 2
    err = capsys.readouterr().err
    assert "usage: python -m cybn" in err and "--bogus" in err


def test_compile_step_reports_every_program_it_compiles_then_loads(tmp_path):
    env = {"CYBN_CACHE_DIR": str(tmp_path)}
    line = re.compile(r"  (\w+\.cu)( \[.*\])?: (\d+) kernels for ptx compute_80, (.+), (\d+) ms$")

    def compile_lines(r):
        assert r.returncode == 0, r.stdout + r.stderr
        section = r.stdout.split("[compile]\n")[1].split("[gpuarray]")[0]
        found = [line.match(l) for l in section.splitlines()]
        assert all(found), section
        return {m.group(1): m.group(4) for m in found}

    cold = compile_lines(cli(env=env))
    # the batchnorm kernels too (both layouts' programs), not only elementwise
    assert set(cold) == {"elementwise.cu", "batchnorm.cu", "batchnorm_nhwc.cu"}
    assert set(cold.values()) == {"compiled by NVRTC"}
    warm_run = cli(env=env)
    assert set(compile_lines(warm_run).values()) == {"loaded from the disk cache"}
    # The BatchNorm step compiles nothing the compile step did not report.
    assert "batchnorm.cu float32 spatial kernels: already in memory" in warm_run.stdout
    # every registered (source, dtype, EPI) program: one [compile] line each
    n = len(warm_run.stdout.split("[compile]\n")[1].split("[gpuarray]")[0].splitlines())
    assert n >= 3 and f"{n} programs: 0 compiled, {n} from the disk cache" in warm_run.stdout.splitlines()[-1]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    log = io.StringIO()
    p = warmup._Progress(2, log)
    p.step("a.cu compiled")
    p.step("b.cu cached")
    p.close()
    assert log.getvalue() == "warmup 1/2 a.cu compiled\nwarmup 2/2 b.cu cached\n"
    tty = _Tty()
    p = warmup._Progress(2, tty)
    p.step("a.cu compiled")
    p.step("b.cu cached")
    p.close()
    assert tty.getvalue().count("\r") == 2 and "[" + "#" * 30 + "] 2/2 b.cu cached" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
