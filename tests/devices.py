"""Device parametrisation shared by the test modules.

``ND_DEVICES`` are the NDArray devices (nd mode); CUDA cases skip cleanly when
no GPU or no CUDA module is present. ``DEVICES`` are the devices Tensors can
live on in the current backend mode.
"""
import pytest

import needle as ndl
from needle import backend_selection

BACKEND = backend_selection.BACKEND
nd_only = pytest.mark.skipif(BACKEND != "nd", reason="needs NEEDLE_BACKEND=nd")
np_only = pytest.mark.skipif(BACKEND != "np", reason="needs NEEDLE_BACKEND=np")


def _cuda_param():
    dev = ndl.cuda()
    reason = getattr(dev, "reason", "no CUDA device")
    return pytest.param(dev, id="cuda", marks=pytest.mark.skipif(not dev.enabled(), reason=reason))


if BACKEND == "nd":
    ND_DEVICES = [
        pytest.param(ndl.cpu(), id="cpu"),
        _cuda_param(),
        pytest.param(ndl.cpu_numpy(), id="cpu_numpy"),
    ]
    DEVICES = ND_DEVICES
else:
    ND_DEVICES = []
    DEVICES = [pytest.param(ndl.cpu(), id="numpy")]
