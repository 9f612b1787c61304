"""The numpy "device" used when ``NEEDLE_BACKEND=np``: arrays are plain numpy arrays."""
import numpy


class Device:
    """Base class of the numpy-mode devices."""


class CPUDevice(Device):
    """Data lives in host memory as numpy arrays (any numpy dtype is kept)."""

    def __repr__(self):
        return "needle.cpu()"

    def __hash__(self):
        return self.__repr__().__hash__()

    def __eq__(self, other):
        return isinstance(other, CPUDevice)

    def enabled(self):
        return True

    def zeros(self, *shape, dtype="float32"):
        return numpy.zeros(shape, dtype=dtype)

    def ones(self, *shape, dtype="float32"):
        return numpy.ones(shape, dtype=dtype)

    def randn(self, *shape):
        # Raw float64 draws from the global RNG (API.md section 12).
        return numpy.random.randn(*shape)

    def rand(self, *shape):
        return numpy.random.rand(*shape)

    def one_hot(self, n, i, dtype="float32"):
        return numpy.eye(n, dtype=dtype)[i]

    def empty(self, shape, dtype="float32"):
        return numpy.empty(shape, dtype=dtype)

    def full(self, shape, fill_value, dtype="float32"):
        return numpy.full(shape, fill_value, dtype=dtype)


def cpu():
    """The (only) numpy-mode device."""
    return CPUDevice()


def default_device():
    return cpu()


def all_devices():
    """All devices of numpy mode."""
    return [cpu()]
