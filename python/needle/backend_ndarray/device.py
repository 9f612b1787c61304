"""Devices: a name plus the backend module that holds its kernels.

A device whose module could not be loaded keeps the reason, so that using it
explains itself ("cuda: not built ...") instead of failing deep in a stack.
"""
import os

import numpy as np

from . import ndarray_backend_numpy
from .dtypes import canonical

# Idle OpenMP threads sleep instead of spinning: on a shared machine a
# spinning team steals the cores that the other threads are waiting for.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_CACHE = {}


class BackendDevice:
    """A backend device: ``name`` and the kernel module ``mod`` (None if unavailable).

    The module's functions are read as attributes of the device (``device.ewise_add``).
    A working device copies them into its own ``__dict__`` once, so that these reads,
    several per op, take Python's plain attribute path; a device without a module is a
    ``_MissingDevice``, whose ``__getattr__`` says why it has none.
    """

    def __new__(cls, name=None, mod=None, reason=None):
        return object.__new__(_MissingDevice if mod is None and cls is BackendDevice else cls)

    def __init__(self, name, mod, reason=None):
        self.name = name
        self.mod = mod
        self.reason = reason if mod is None else None
        if mod is not None:
            for key, value in vars(mod).items():
                if (not key.startswith("__") or key in _MODULE_CONSTANTS) and not hasattr(BackendDevice, key):
                    self.__dict__.setdefault(key, value)
            # Every op result allocates a buffer: ``new_array`` is ``Array(size, dtype)`` as a plain
            # function where the module has one (the CPU module), else the Array class itself.
            self.new_array = getattr(mod, "new_array", mod.Array)

    def __eq__(self, other):
        return isinstance(other, BackendDevice) and self.name == other.name

    def __hash__(self):
        return hash(("BackendDevice", self.name))

    def __repr__(self):
        return self.name + "()"

    def __deepcopy__(self, memo):
        return self  # a device is a process-wide handle (copy.deepcopy of a model keeps it)

    def enabled(self):
        return self.mod is not None

    def require(self):
        """Raise a clear RuntimeError if this device cannot run kernels."""
        if self.mod is None:
            raise RuntimeError(f"device {self!r} is not available: {self.reason}")

    # Constructors (they draw from the global numpy RNG; API.md section 12).
    def rand(self, *shape, dtype="float32"):
        return _nd.NDArray(np.random.rand(*shape), device=self, dtype=dtype)

    def randn(self, *shape, dtype="float32"):
        return _nd.NDArray(np.random.randn(*shape), device=self, dtype=dtype)

    def one_hot(self, n, i, dtype="float32"):
        idx = np.asarray(i).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"one_hot: indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
        # Scatter ones into zeros: np.eye(n)[idx] would build an n x n matrix first.
        out = np.zeros(idx.shape + (n,), dtype=np.float32)
        np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
        return _nd.NDArray(out, device=self, dtype=dtype)

    def empty(self, shape, dtype="float32"):
        self.require()
        return _nd._alloc(_shape_tuple(shape), self, canonical(dtype))

    def full(self, shape, fill_value, dtype="float32"):
        arr = self.empty(shape, dtype)
        arr.fill(fill_value)
        return arr


# Module attributes with dunder names that are read through the device.
_MODULE_CONSTANTS = ("__device_name__", "__tile_size__")


class _MissingDevice(BackendDevice):
    """A device whose kernel module could not be loaded: every kernel lookup raises
    AttributeError with the reason ("cuda: not built ...")."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__dict__.get('name')}: {self.__dict__.get('reason')}")


def _shape_tuple(shape):
    """Validated shape as a tuple of non-negative Python ints."""
    if type(shape) is tuple:
        for s in shape:
            if type(s) is not int or s < 0:
                break
        else:
            return shape  # the common case, already valid
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(shape)
    for s in shape:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
            raise TypeError(f"shape entries must be integers, got {shape!r}")
        if s < 0:
            raise ValueError(f"shape entries must be >= 0, got {shape!r}")
    return tuple(int(s) for s in shape)


def _load_cpu():
    try:
        from . import ndarray_backend_cpu as mod
    except ImportError as e:
        return BackendDevice("cpu", None, f"cpu: not built - run `make` at the repository root ({e})")
    return BackendDevice("cpu", mod)


def _load_cuda():
    try:
        from . import ndarray_backend_cuda as mod
    except ImportError as e:
        return BackendDevice(
            "cuda", None, f"cuda: not built - nvcc was not found at configure time or the build failed ({e})"
        )
    try:
        count = mod.device_count()
    except RuntimeError as e:
        return BackendDevice("cuda", None, f"cuda: the CUDA runtime could not be initialised ({e})")
    if count == 0:
        return BackendDevice("cuda", None, "cuda: module built, but no CUDA device is visible")
    return BackendDevice("cuda", mod)


def cpu():
    """The C++ CPU backend."""
    if "cpu" not in _CACHE:
        _CACHE["cpu"] = _load_cpu()
    return _CACHE["cpu"]


def cuda():
    """The CUDA backend; ``enabled()`` is False (with ``reason``) when no GPU is usable."""
    if "cuda" not in _CACHE:
        _CACHE["cuda"] = _load_cuda()
    return _CACHE["cuda"]


def cpu_numpy():
    """The pure-numpy reference backend."""
    if "cpu_numpy" not in _CACHE:
        _CACHE["cpu_numpy"] = BackendDevice("cpu_numpy", ndarray_backend_numpy)
    return _CACHE["cpu_numpy"]


def default_device():
    return cpu()


def all_devices():
    """All devices, usable or not: [cpu(), cuda(), cpu_numpy()]."""
    return [cpu(), cuda(), cpu_numpy()]


def cuda_memory_stats():
    """Bytes allocated, cached and peak in the CUDA caching allocator."""
    dev = cuda()
    dev.require()
    return dict(dev.mod.memory_stats())


# ndarray imports this module; bound last, so that either module may be imported first.
# (An import inside a function would cost a microsecond on every call.)
from . import ndarray as _nd  # noqa: E402
