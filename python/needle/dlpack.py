"""``needle.from_dlpack``: a Tensor sharing the memory of any DLPack producer."""
from .autograd import Tensor
from .backend_selection import array_api


def from_dlpack(obj, device=None, copy=None):
    """A Tensor (``requires_grad=False``) over the memory of ``obj``: a numpy array, a
    PyTorch/CuPy/JAX tensor, a needle Tensor or NDArray, or a DLPack capsule.

    Zero-copy when the memory is on a needle device, writable and element-aligned;
    ``device`` moves the result (a copy when it differs), ``copy=True`` always copies
    and ``copy=False`` raises BufferError where a copy would be needed. Writes through
    either side are seen by the other while no copy was made.
    """
    kwargs = {"copy": copy} if copy is not None else {}
    if device is not None:
        kwargs["device"] = device
    return Tensor.make_const(array_api.from_dlpack(obj, **kwargs))
