"""Devices: a name plus the backend module that holds its kernels.

A device whose module could not be loaded keeps the reason, so that using it
explains itself ("cuda: not built ...") instead of failing deep in a stack.
"""
import os

import numpy as np

from . import ndarray_backend_numpy

# Idle OpenMP threads sleep instead of spinning: on a shared machine a
# spinning team steals the cores that the other threads are waiting for.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_CACHE = {}


class BackendDevice:
    """A backend device: ``name`` and the kernel module ``mod`` (None if unavailable)."""

    def __init__(self, name, mod, reason=None):
        self.name = name
        self.mod = mod
        self.reason = reason if mod is None else None

    def __eq__(self, other):
        return isinstance(other, BackendDevice) and self.name == other.name

    def __hash__(self):
        return hash(("BackendDevice", self.name))

    def __repr__(self):
        return self.name + "()"

    def __getattr__(self, name):
        mod = self.__dict__.get("mod")
        if mod is None:
            raise AttributeError(f"{self.__dict__.get('name')}: {self.__dict__.get('reason')}")
        value = getattr(mod, name)
        if callable(value):
            self.__dict__[name] = value  # later lookups skip __getattr__
        return value

    def enabled(self):
        return self.mod is not None

    def require(self):
        """Raise a clear RuntimeError if this device cannot run kernels."""
        if self.mod is None:
            raise RuntimeError(f"device {self!r} is not available: {self.reason}")

    # Constructors (they draw from the global numpy RNG; API.md section 12).
    def rand(self, *shape, dtype="float32"):
        from .ndarray import NDArray

        return NDArray(np.random.rand(*shape), device=self, dtype=dtype)

    def randn(self, *shape, dtype="float32"):
        from .ndarray import NDArray

        return NDArray(np.random.randn(*shape), device=self, dtype=dtype)

    def one_hot(self, n, i, dtype="float32"):
        from .ndarray import NDArray

        idx = np.asarray(i).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"one_hot: indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
        # Scatter ones into zeros: np.eye(n)[idx] would build an n x n matrix first.
        out = np.zeros(idx.shape + (n,), dtype=np.float32)
        np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
        return NDArray(out, device=self, dtype=dtype)

    def empty(self, shape, dtype="float32"):
        from .ndarray import NDArray

        return NDArray.make(_shape_tuple(shape), device=self, dtype=dtype)

    def full(self, shape, fill_value, dtype="float32"):
        arr = self.empty(shape, dtype)
        arr.fill(fill_value)
        return arr


_INT_TYPES = {int}


def _shape_tuple(shape):
    """Validated shape as a tuple of non-negative Python ints."""
    if type(shape) is tuple and set(map(type, shape)) <= _INT_TYPES and min(shape, default=0) >= 0:
        return shape
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
