"""DeviceBuffer, the caching MemoryPool (size classes, reuse, free_all, accounting, OOM retry) and
PinnedBuffer, checked against the software GPU's own count of live allocations."""
import gc

import numpy as np
import pytest

import cybn
from cybn import CudaError, softgpu
from cybn.memory import DeviceBuffer, MemoryPool, PinnedBuffer, default_pool


def live():
    return softgpu.live_allocations()[0]


def test_device_buffer_owns_one_allocation():
    gc.collect()  # leftovers of earlier tests must not be freed inside the measurement
    before = live()
    b = DeviceBuffer(1000)
    assert b.nbytes == 1000 and b.ptr != 0 and b.owned and int(b) == b.ptr
    assert live() == before + 1
    del b
    gc.collect()
    assert live() == before
    z = DeviceBuffer(0)
    assert z.ptr == 0 and z.nbytes == 0 and live() == before


def test_external_buffer_does_not_free():
    gc.collect()
    owner = DeviceBuffer(64)
    before = live()
    ext = DeviceBuffer.external(owner.ptr, 64, owner)
    assert not ext.owned and ext.ptr == owner.ptr
    del owner, ext
    gc.collect()
    assert live() == before - 1  # freed exactly once, by its real owner


def test_pool_reuses_freed_blocks_of_the_same_class():
    pool = MemoryPool()
    gc.collect()
    before = live()
    a = pool.malloc(1000)
    assert a.nbytes == 1000 and pool.used_bytes == 1024 and pool.held_bytes == 1024
    ptr = a.ptr
    del a
    assert pool.used_bytes == 0 and pool.held_bytes == 1024 and pool.cached_bytes == 1024
    b = pool.malloc(900)  # same 1 KiB class: the cached block comes back, no driver call
    assert b.ptr == ptr and live() == before + 1
    c = pool.malloc(5000)  # another class: a new allocation
    assert c.ptr != ptr and live() == before + 2
    assert pool.used_bytes == 1024 + 5120 and pool.held_bytes == 1024 + 5120
    del b, c
    assert pool.free_blocks == 2
    pool.free_all()
    assert pool.held_bytes == 0 and pool.free_blocks == 0 and live() == before


def test_size_classes():
    pool = MemoryPool()
    # up to 4 KiB: 512-byte steps; above: 8 steps per power of two
    for n, cls in [(1, 512), (512, 512), (513, 1024), (4096, 4096), (4097, 4608), (9000, 9216),
                   (1 << 20, 1 << 20), ((1 << 20) + 1, (1 << 20) + (1 << 17))]:
        b = pool.malloc(n)
        assert pool.used_bytes == cls, n
        del b
    pool.free_all()
    assert pool.malloc(0).ptr == 0


def test_pool_free_lists_are_per_stream():
    pool = MemoryPool()
    s = cybn.Stream()
    a = pool.malloc(512, stream=s)
    ptr = a.ptr
    del a
    other = pool.malloc(512)  # the legacy stream must not get a block s may still be using
    assert other.ptr != ptr
    same = pool.malloc(512, stream=s)
    assert same.ptr == ptr
    del other, same
    pool.free_all()


def test_free_all_leaves_blocks_in_use_alone():
    pool = MemoryPool()
    keep = pool.malloc(2048)
    tmp = pool.malloc(2048)
    del tmp
    pool.free_all()
    assert pool.used_bytes == 2048 and pool.held_bytes == 2048
    del keep
    pool.free_all()
    assert pool.held_bytes == 0


def test_default_pool_backs_gpuarrays():
    pool = default_pool()
    assert pool is cybn.default_pool()
    used = pool.used_bytes
    a = cybn.empty(1000, np.float32)
    assert a.gpudata.nbytes == 4000 and pool.used_bytes == used + 4096
    del a
    assert pool.used_bytes == used


def test_oom_releases_the_cache_and_retries_once():
    pool = MemoryPool()
    cached = pool.malloc(8192)
    del cached
    assert pool.cached_bytes == 8192
    gc.collect()
    before = live()
    with softgpu.fail_alloc_after(1):  # the next cuMemAlloc fails, the retry succeeds
        b = pool.malloc(4096)
    assert b.nbytes == 4096 and pool.cached_bytes == 0 and pool.held_bytes == 4096
    assert live() == before  # one cached block freed, one new block allocated
    del b
    pool.free_all()


def test_oom_after_the_retry_raises_and_the_process_stays_usable():
    pool = MemoryPool()
    cached = pool.malloc(1 << 16)
    del cached
    used_now = softgpu.live_allocations()[1]
    with softgpu.alloc_budget(used_now + (1 << 16)):  # room for 64 KiB more at most
        with pytest.raises(CudaError) as info:
            pool.malloc(1 << 20)
    assert info.value.name == "CUDA_ERROR_OUT_OF_MEMORY" and info.value.call == "cuMemAlloc"
    assert pool.held_bytes == 0 and pool.used_bytes == 0  # it released its cache before retrying
    a = cybn.to_gpu(np.arange(1000, dtype=np.float32))  # still usable
    np.testing.assert_array_equal(a.get(), np.arange(1000))


def test_direct_oom_raises_cuda_error():
    with softgpu.fail_alloc_after(1):
        with pytest.raises(CudaError, match="cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY"):
            DeviceBuffer(100)


def test_pinned_buffer_is_page_locked_and_freed():
    before = softgpu.live_pinned_allocations()[0]
    p = PinnedBuffer(4096)
    assert softgpu.live_pinned_allocations()[0] == before + 1
    p.array(np.uint8)[:] = 3
    del p
    gc.collect()
    assert softgpu.live_pinned_allocations()[0] == before


def test_buffers_freed_by_the_cycle_collector_go_back_to_their_pool():
    # A GPUArray kept alive only by a reference cycle (here: frame <-> exception) is freed by the GC;
    # its block must return to the pool, not bypass it with cuMemFree and skew the accounting.
    pool = default_pool()
    gc.collect()
    used, held, nbytes = pool.used_bytes, pool.held_bytes, softgpu.live_allocations()[1]

    def keep_cycle():
        a = cybn.empty(4096, np.float32)  # noqa: F841
        try:
            raise ValueError
        except ValueError as e:
            err = e  # noqa: F841  (frame -> err -> traceback -> frame)

    for _ in range(3):
        keep_cycle()
        gc.collect()
        assert pool.used_bytes == used
        # whatever the driver holds beyond the start is exactly what the pool says it caches
        assert softgpu.live_allocations()[1] - nbytes == pool.held_bytes - held
