"""Shared by every test: run on the software GPU (CI has no GPU) with all its checks on, and fail the
session if user device allocations leaked."""
import contextlib
import gc
import os
import sys

os.environ["CYBN_SOFTGPU_CHECKS"] = "all"  # before the library reads its configuration
os.environ.setdefault("CYBN_DEVICE", "softgpu")
if "CYBN_CACHE_DIR" not in os.environ:  # compiled kernels go to a per-session dir, never ~/.cache/cybn
    import atexit, shutil, tempfile  # noqa: E401
    os.environ["CYBN_CACHE_DIR"] = tempfile.mkdtemp(prefix="cybn-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CYBN_CACHE_DIR"], True)

import pytest  # noqa: E402

from cybn import softgpu  # noqa: E402

softgpu.load()


def release_cached_device_memory():
    """Hook: hand every cached-but-unused block back to the driver before leaks are counted
    (cybn's memory pool keeps freed blocks for reuse)."""
    gc.collect()
    bn = sys.modules.get("cybn.batchnorm")
    if bn is not None:  # BatchNorm keeps its split-plan workspaces for the process's life
        bn.free_workspaces()
    try:
        from cybn import memory
    except ImportError:  # the pool's extension is not built: nothing can be cached
        return
    memory.default_pool().free_all()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_device_allocations():
    before = softgpu.live_allocations()
    yield
    release_cached_device_memory()
    after = softgpu.live_allocations()
    assert after == before, (
        "device allocations leaked over the test session: %d live (%d bytes) at the start, %d (%d bytes) "
        "at the end" % (before + after))


@pytest.fixture(scope="session", autouse=True)
def prewarmed_kernel_cache(request):
    """A large run compiles its kernel programs up front, in parallel (tests/kernel_prewarm.py)."""
    import kernel_prewarm
    line = kernel_prewarm.prewarm(len(request.session.items))
    if line:
        capture = request.config.pluginmanager.getplugin("capturemanager")  # None under -p no:capture
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            request.config.get_terminal_writer().line("\n" + line)
    yield
