"""Fixtures for the NVRTC / kernel-cache tests: every test gets its own CYBN_CACHE_DIR (never the user's
cache) and a fresh in-process memo."""
import pytest


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A private, not-yet-existing cache directory for this test; the in-process memo starts empty."""
    from cybn import cache
    d = tmp_path / "kcache"
    monkeypatch.setenv("CYBN_CACHE_DIR", str(d))
    monkeypatch.delenv("CYBN_CACHE", raising=False)
    cache.clear_memory()
    yield d
    cache.clear_memory()


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    """A temporary kernel directory standing in for the package's kernels/ (so tests don't depend on the
    BatchNorm kernels' contents)."""
    from cybn import paths
    d = tmp_path / "kernels"
    d.mkdir()
    monkeypatch.setattr(paths, "kernel_dir", lambda: str(d))
    return d
