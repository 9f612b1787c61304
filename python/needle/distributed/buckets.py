"""Gradient buckets: the gradients of many parameters packed into one flat array, so
that a model's whole gradient is averaged in a few large allreduces instead of one
small (latency-bound) message per parameter.

Each bucket also carries one presence count per parameter: a rank on which a
parameter got no gradient contributes zeros and a 0, so every rank makes the same
calls whatever its graph, and a parameter that no rank used keeps no gradient.
"""
import numpy as np

from ..autograd import Tensor
from ..backend_ndarray import dtypes as _dt
from .buffers import HOST_DEVICES, NDArray, Operand, host_view
from .collectives import _path, reduce_host, reduce_operand


def wire_dtype(dtype, on_host):
    """The dtype a bucket of ``dtype`` gradients is reduced in: halves go over MPI as
    float32 (MPI has no 16-bit float); NCCL reduces them natively."""
    return "float32" if on_host and dtype in _dt.HALF else dtype


def plan_buckets(entries, cap_bytes):
    """Group parameters into buckets. ``entries``: (key, nbytes) per parameter in
    registration order; parameters of one bucket share a key (dtype and device).

    Buckets are filled in reverse registration order (the order backward produces the
    gradients, which is what a reducer that overlaps with backward would need) and
    close when the next gradient would take them past ``cap_bytes``; a gradient larger
    than the cap gets a bucket of its own. -> list of lists of parameter indices.
    """
    open_bucket, open_bytes, buckets = {}, {}, []
    for i in reversed(range(len(entries))):
        key, nbytes = entries[i]
        if key in open_bucket and open_bytes[key] + nbytes > cap_bytes:
            buckets.append(open_bucket.pop(key))
        if key not in open_bucket:
            open_bucket[key], open_bytes[key] = [], 0
        open_bucket[key].append(i)
        open_bytes[key] += nbytes
    return buckets + list(open_bucket.values())


def _layout(params):
    sizes = [int(np.prod(p.shape)) for p in params]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return sizes, offsets


def _new_grad(p, values):
    """A gradient Tensor for parameter ``p`` from numpy ``values``."""
    data = p.realize_cached_data()
    if isinstance(data, np.ndarray):
        return Tensor.make_const(values.astype(data.dtype).reshape(p.shape))
    out = NDArray.make(p.shape, device=data.device, dtype=data.dtype)
    np.copyto(host_view(out), values.reshape(p.shape), casting="unsafe")
    return Tensor.make_const(out)


class HostBucket:
    """A bucket of gradients in host memory, reduced by MPI straight from a numpy array."""

    def __init__(self, params, dtype):
        self.params = params
        self.wire = wire_dtype(dtype, True)
        self.sizes, self.offsets = _layout(params)
        self.total = int(self.offsets[-1])
        self.flat = np.empty(self.total + len(params), _dt.to_numpy_dtype(self.wire))

    def reduce(self, g, grads):
        """Average ``grads`` (one Tensor or None per parameter) over the ranks. -> the mean
        gradients (None for a parameter that no rank has a gradient for)."""
        flat, total = self.flat, self.total
        for i, grad in enumerate(grads):
            seg = flat[self.offsets[i]:self.offsets[i + 1]]
            if grad is None:
                seg[...] = 0
                flat[total + i] = 0
            else:
                np.copyto(seg, Operand(grad, "DistributedDataParallel").host().reshape(-1),
                          casting="unsafe")
                flat[total + i] = 1
        if g.size > 1:
            reduce_host(g, flat, "sum", self.wire)
        means = []
        for i, p in enumerate(self.params):
            if flat[total + i] == 0:
                means.append(None)
                continue
            seg = flat[self.offsets[i]:self.offsets[i + 1]]
            means.append(_new_grad(p, seg / np.asarray(g.size, seg.dtype)))
        return means


class DeviceBucket:
    """A bucket of gradients on an accelerator, reduced by NCCL in place (or copied
    through host memory when MPI has to carry it)."""

    def __init__(self, params, dtype):
        self.params = params
        self.sizes, self.offsets = _layout(params)
        self.total = int(self.offsets[-1])
        device = params[0].realize_cached_data().device
        self.flat = NDArray.make((self.total + len(params),), device=device, dtype=dtype)

    def reduce(self, g, grads):
        flat, total = self.flat, self.total
        for i, grad in enumerate(grads):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            if grad is None:
                flat[lo:hi] = 0
                flat[total + i:total + i + 1] = 0
            else:
                flat[lo:hi] = grad.realize_cached_data().compact().reshape((hi - lo,))
                flat[total + i:total + i + 1] = 1
        if g.size > 1:
            operand = Operand(flat, "DistributedDataParallel")
            reduce_operand(g, operand, "sum", _path(g, operand))
        counts = flat[total:].numpy()
        means = []
        for i, p in enumerate(self.params):
            if counts[i] == 0:
                means.append(None)
                continue
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            means.append(Tensor.make_const((flat[lo:hi] / g.size).compact().reshape(p.shape)))
        return means


def bucket_class(device_name):
    return HostBucket if device_name in HOST_DEVICES or device_name == "numpy" else DeviceBucket
