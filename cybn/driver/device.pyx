# distutils: language = c++
"""Device and its primary Context; the per-thread "make our context current" rule lives here."""
from cuda.bindings cimport cydriver
from cybn.driver.status cimport check

cdef extern from *:
    """
    /* Which device this thread works on (Device.use / Context.make_current); C thread-local so the
       per-call context check costs no Python attribute lookup. */
    static __thread int cybn_tls_device = 0;
    """
    int cybn_tls_device

cdef enum:
    MAX_DEVICES = 64

cdef bint _initialized = False
cdef int _count = 0
cdef cydriver.CUcontext _primary[MAX_DEVICES]
cdef list _contexts = [None] * MAX_DEVICES   # Context objects: retained once per device, never released


cdef int _init() except -1:
    global _initialized, _count
    from cybn import backend
    backend.init()
    with nogil:
        check(cydriver.cuInit(0), "cuInit")
        check(cydriver.cuDeviceGetCount(&_count), "cuDeviceGetCount")
    if _count == 0:
        raise RuntimeError("the CUDA driver reports no device")
    _initialized = True
    return 0


cdef int current_ordinal() noexcept nogil:
    return cybn_tls_device


cdef Context _context_for(int ordinal):
    cdef Context c = _contexts[ordinal]
    cdef cydriver.CUcontext ctx
    if c is None:
        dev = Device(ordinal)
        with nogil:
            check(cydriver.cuDevicePrimaryCtxRetain(&ctx, dev.dev), "cuDevicePrimaryCtxRetain")
        c = Context.__new__(Context)
        c.ctx = ctx
        c.device = dev
        _primary[ordinal] = ctx
        _contexts[ordinal] = c
    return c


cdef cydriver.CUcontext ensure_context() except NULL:
    cdef cydriver.CUcontext cur = NULL
    cdef int ordinal = cybn_tls_device
    if not _initialized:
        _init()
    check(cydriver.cuCtxGetCurrent(&cur), "cuCtxGetCurrent")
    if cur != NULL and cur == _primary[ordinal]:
        return cur
    if _primary[ordinal] == NULL:
        _context_for(ordinal)
    check(cydriver.cuCtxSetCurrent(_primary[ordinal]), "cuCtxSetCurrent")
    return _primary[ordinal]


def device_count():
    """Number of devices the selected driver reports."""
    if not _initialized:
        _init()
    return _count


cdef class Device:
    """One CUDA device (the software GPU is device 0 "cybn software GPU")."""

    def __cinit__(self, int ordinal=0):
        if not _initialized:
            _init()
        if ordinal < 0 or ordinal >= _count or ordinal >= MAX_DEVICES:
            raise ValueError(f"Device(ordinal={ordinal}): there are {_count} device(s)")
        self.ordinal = ordinal
        with nogil:
            check(cydriver.cuDeviceGet(&self.dev, ordinal), "cuDeviceGet")

    def attribute(self, attr):
        """cuDeviceGetAttribute for a CUdevice_attribute (enum member or its int value)."""
        cdef int value = 0
        cdef int a = int(attr)
        check(cydriver.cuDeviceGetAttribute(&value, <cydriver.CUdevice_attribute>a, self.dev),
              "cuDeviceGetAttribute")
        return value

    @property
    def name(self):
        cdef char buf[256]
        check(cydriver.cuDeviceGetName(buf, sizeof(buf), self.dev), "cuDeviceGetName")
        return buf.decode(errors="replace")

    @property
    def compute_capability(self):
        return (self.attribute(cydriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                self.attribute(cydriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))

    @property
    def arch(self):
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"

    @property
    def sm_count(self):
        return self.attribute(cydriver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)

    @property
    def total_memory(self):
        cdef size_t nbytes = 0
        check(cydriver.cuDeviceTotalMem(&nbytes, self.dev), "cuDeviceTotalMem")
        return nbytes

    @property
    def handle(self):
        return <int>self.dev

    def context(self):
        """The device's primary context (retained once per process, shared with other libraries)."""
        return _context_for(self.ordinal)

    def use(self):
        """Make this the calling thread's device and its primary context current."""
        self.context().make_current()
        return self

    def synchronize(self):
        self.context().synchronize()

    def __eq__(self, other):
        return isinstance(other, Device) and (<Device>other).ordinal == self.ordinal

    def __hash__(self):
        return hash(("cybn.Device", self.ordinal))

    def __repr__(self):
        return f"<cybn.Device {self.ordinal}: {self.name} ({self.arch})>"


cdef class Context:
    """A device's primary context. Get it from Device.context(); cybn never creates others."""

    def __init__(self):
        raise TypeError("Context objects come from Device.context()")

    @property
    def handle(self):
        return <size_t>self.ctx

    def make_current(self):
        """Make this context current on the calling thread (and its device the thread's device)."""
        global cybn_tls_device
        cybn_tls_device = self.device.ordinal
        with nogil:
            check(cydriver.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        return self

    def synchronize(self):
        """Wait for all work in this context (every stream)."""
        self.make_current()
        with nogil:
            check(cydriver.cuCtxSynchronize(), "cuCtxSynchronize")

    def __repr__(self):
        return f"<cybn.Context primary of device {self.device.ordinal} at {self.handle:#x}>"


def get_device():
    """The calling thread's current Device (device 0 unless Device.use() chose another)."""
    return Device(cybn_tls_device)


def current_context():
    """Make the calling thread's device context current (as every cybn call does) and return it."""
    ensure_context()
    return _contexts[cybn_tls_device]
