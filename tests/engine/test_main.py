"""`python -m cybn`: the step runner, its summary line and exit codes."""
import os
import subprocess
import sys

from cybn import __main__ as main_mod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_main_job_runs_every_step_and_says_ok():
    r = subprocess.run([sys.executable, "-m", "cybn"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, CYBN_DEVICE="softgpu"))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for name, _ in main_mod.STEPS:
        assert f"[{name}]" in lines
    assert "cybn software GPU" in r.stdout and "compute capability 8.0" in r.stdout
    assert lines[-1].startswith("cybn: OK (")


def test_a_failing_step_stops_the_run_with_a_nonzero_exit(capsys):
    ran = []

    def good(report):
        report.line("fine")
        ran.append("good")
        return "good ok"

    def bad(report):
        raise AssertionError("numbers differ\nsecond line")

    def never(report):
        ran.append("never")

    assert main_mod.run([("good", good), ("bad", bad), ("never", never)]) == 1
    out = capsys.readouterr().out
    assert ran == ["good"]
    assert out.splitlines()[-1] == "cybn: FAILED bad: AssertionError: numbers differ"
    assert main_mod.run([("good", good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("cybn: OK (good ok;")


def test_unknown_argument_is_a_usage_error(capsys):
    assert main_mod.main(["bogus"]) == 2
    assert "usage: python -m cybn" in capsys.readouterr().err
