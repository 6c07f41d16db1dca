"""Device attributes and the primary context across threads."""
import threading

import numpy as np
import pytest
from cuda.bindings import driver

import cybn
from cybn.device import Device, current_context, device_count, get_device


def test_device_attributes():
    d = Device(0)
    assert d.name == "cybn software GPU"
    assert d.compute_capability == (8, 0) and d.arch == "sm_80"
    assert d.total_memory > 0
    assert d.sm_count >= 1
    assert d.attribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) == d.sm_count
    assert d.attribute(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK) == 1024
    assert d.attribute(int(driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)) == 8
    assert d == Device() == get_device() and hash(d) == hash(Device(0))
    assert "cybn software GPU" in repr(d)
    assert device_count() >= 1


def test_bad_ordinal_is_refused():
    with pytest.raises(ValueError, match=r"Device\(ordinal=7\)"):
        Device(7)
    with pytest.raises(ValueError):
        Device(-1)


def test_bad_attribute_raises_cuda_error():
    with pytest.raises(cybn.CudaError) as info:
        Device().attribute(99999)
    assert info.value.call == "cuDeviceGetAttribute" and info.value.name == "CUDA_ERROR_INVALID_VALUE"


def test_primary_context_is_retained_once_and_current():
    c1, c2 = Device().context(), Device(0).context()
    assert c1 is c2 and c1.handle != 0
    assert current_context() is c1
    err, cur = driver.cuCtxGetCurrent()
    assert int(cur) == c1.handle
    c1.synchronize()
    with pytest.raises(TypeError):
        cybn.Context()


def test_context_is_made_current_on_every_thread():
    primary = Device().context().handle
    results, errors = {}, []

    def work(i):
        try:
            # A fresh thread has no current context: the first cybn call must set ours.
            _, before = driver.cuCtxGetCurrent()
            a = cybn.to_gpu(np.arange(100, dtype=np.float32) * i)
            b = a.copy()
            _, after = driver.cuCtxGetCurrent()
            results[i] = (int(before), int(after), b.get())
        except Exception as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (before, after, data) in results.items():
        assert before == 0 and after == primary
        np.testing.assert_array_equal(data, np.arange(100, dtype=np.float64) * i)


def test_context_restored_after_foreign_switch():
    # Another library leaving no context current must not break the next cybn call.
    driver.cuCtxSetCurrent(driver.CUcontext(0))
    a = cybn.zeros(4)
    np.testing.assert_array_equal(a.get(), np.zeros(4))
    _, cur = driver.cuCtxGetCurrent()
    assert int(cur) == Device().context().handle
