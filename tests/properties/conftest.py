"""Property-based tests (Hypothesis) on the software GPU with every check on.

Profiles: "ci" (default: few examples, derandomised, no example database, so CI stays fast and repeatable) and
"nightly" (many random examples); choose with CYBN_HYPOTHESIS_PROFILE=ci|nightly."""
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the test extra installs it

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])

PROFILES = ("ci", "nightly")
_profile = os.environ.get("CYBN_HYPOTHESIS_PROFILE", "").strip().lower() or "ci"
if _profile not in PROFILES:
    raise pytest.UsageError(f"CYBN_HYPOTHESIS_PROFILE={_profile!r} is not valid (accepted: {', '.join(PROFILES)})")
settings.load_profile(_profile)
