"""Chooses the array backend at import time from ``NEEDLE_BACKEND``.

``nd`` (default): arrays are ``NDArray`` (float32) on ``cpu()``, ``cuda()`` or
``cpu_numpy()``. ``np``: arrays are plain numpy arrays that keep their dtype;
this mode never imports the compiled modules, so it works before ``make``.
Everything else that differs between the two modes lives in ``ops/array_backend.py``.
"""
import os as _os
import warnings as _warnings

BACKEND = _os.environ.get("NEEDLE_BACKEND", "nd")

if BACKEND == "nd":
    from . import backend_ndarray as array_api
    from .backend_ndarray import BackendDevice as Device
    from .backend_ndarray import NDArray, all_devices, cpu, cpu_numpy, cuda

    _warned = []

    def default_device():
        """``cpu()``; falls back to ``cpu_numpy()`` (with one warning) when the C++ module is not built."""
        dev = cpu()
        if dev.enabled():
            return dev
        if not _warned:
            _warned.append(True)
            _warnings.warn(f"{dev.reason}; using cpu_numpy() instead", RuntimeWarning, stacklevel=2)
        return cpu_numpy()

elif BACKEND == "np":
    import numpy as array_api
    from .backend_numpy import Device, all_devices, cpu, default_device

    NDArray = array_api.ndarray
else:
    raise RuntimeError(f"Unknown needle array backend NEEDLE_BACKEND={BACKEND!r} (use 'nd' or 'np')")
