"""DistributedDataParallel: one model replica per rank, gradients averaged over ranks.

At wrapping, every rank checks that all ranks hold the same parameter and buffer
names, shapes and dtypes (a mismatch is a ValueError on every rank), then takes rank
0's parameters and buffers. After ``loss.backward()`` each parameter's ``.grad`` is
the mean over ranks, reduced in flat buckets of at most ``bucket_cap_mb``.

How the gradients are intercepted without touching autograd: the wrapped module's
parameters get a ``grad`` property (their class becomes a subclass made here). The
gradients that backward writes are kept per rank; the first read of any ``.grad``
afterwards (the optimizer's, normally) reduces all buckets at once. Backward is not
overlapped with communication; docs/distributed.md says where that would pay.
"""
import contextlib

import numpy as np

from ..backend_ndarray.dtypes import ITEMSIZE
from ..nn import Module
from .buckets import bucket_class, plan_buckets, wire_dtype
from .buffers import HOST_DEVICES, Operand
from .collectives import _path, broadcast_operand
from .group import group

_GRAD = "_ddp_grad"        # where a wrapped parameter keeps its gradient
_REDUCER = "_ddp_reducer"  # the reducer that owns a wrapped parameter
_SYNCED_CLASSES = {}


def _get_grad(p):
    reducer = p.__dict__.get(_REDUCER)
    if reducer is not None and reducer.pending:
        reducer.reduce()
    return p.__dict__.get(_GRAD)


def _set_grad(p, value):
    reducer = p.__dict__.get(_REDUCER)
    if reducer is None:
        p.__dict__[_GRAD] = value
    else:
        reducer.on_write(p, value)


def _synced_class(cls):
    """``cls`` with a ``grad`` property that routes reads and writes through the reducer."""
    if cls not in _SYNCED_CLASSES:
        _SYNCED_CLASSES[cls] = type(cls.__name__, (cls,), {
            "grad": property(_get_grad, _set_grad),
            "__doc__": cls.__doc__, "__module__": cls.__module__})
    return _SYNCED_CLASSES[cls]


class _Reducer:
    """The gradient state of the wrapped parameters.

    A forward through the wrapper opens a generation; the first write of a parameter's
    gradient in a generation comes from backward. Under ``no_sync`` it is added to the
    rank's local accumulation; otherwise it joins (with any local accumulation) the
    next reduction, run by the first ``.grad`` read. Later writes in the same
    generation (clipping, an optimizer's zeros) are taken as they are.
    """

    def __init__(self, params, buckets, g):
        self.params = params
        self.buckets = buckets
        self.group = g
        self.generation = 0
        self.generation_syncs = True
        self.no_sync_depth = 0
        self.pending = False
        self.written_in = {}   # id(p) -> generation of its last write
        self.local = {}        # id(p) -> this rank's gradient awaiting reduction
        self.accumulated = {}  # id(p) -> gradient summed under no_sync

    def begin_forward(self):
        self.generation += 1
        self.generation_syncs = self.no_sync_depth == 0

    def on_write(self, p, value):
        key = id(p)
        if value is None:  # reset_grad / zero_grad(set_to_none=True)
            self.local.pop(key, None)
            self.accumulated.pop(key, None)
            p.__dict__[_GRAD] = None
            return
        first_write = self.generation > 0 and self.written_in.get(key) != self.generation
        self.written_in[key] = self.generation
        if not first_write:
            p.__dict__[_GRAD] = value
            if key in self.local:
                self.local[key] = value
            elif key in self.accumulated:
                self.accumulated[key] = value
            return
        previous = self.accumulated.pop(key, None)
        if previous is not None:
            value = previous + value
        p.__dict__[_GRAD] = value
        if self.generation_syncs:
            self.local[key] = value
            self.pending = True
        else:
            self.accumulated[key] = value

    def reduce(self):
        """Average the pending gradients over the ranks (collective: every rank reads its
        gradients after the same backward)."""
        self.pending = False
        local, self.local = self.local, {}
        # A parameter unused by this backward but accumulated under no_sync still counts.
        for key in list(self.accumulated):
            local[key] = self.accumulated.pop(key)
        if self.group.size == 1:
            return
        for bucket in self.buckets:
            means = bucket.reduce(self.group, [local.get(id(p)) for p in bucket.params])
            for p, mean in zip(bucket.params, means):
                if mean is not None or id(p) in local:
                    p.__dict__[_GRAD] = mean


def _signature(module):
    params = [(name, tuple(t.shape), t.dtype) for name, t in module.named_parameters()]
    buffers = [(name, tuple(t.shape), t.dtype) for name, t in module.named_buffers()]
    return (tuple(params), tuple(buffers))


def _describe_signature(sig):
    params, buffers = sig
    listed = [f"{n} {s} {d}" for n, s, d in params] + [f"buffer {n} {s} {d}" for n, s, d in buffers]
    return f"{len(params)} parameters: " + ", ".join(listed)


def _first_difference(signatures):
    """A short description of where rank r's model first differs from rank 0's."""
    ref = list(signatures[0][0]) + list(signatures[0][1])
    for r, sig in enumerate(signatures[1:], 1):
        mine = list(sig[0]) + list(sig[1])
        for a, b in zip(ref, mine):
            if a != b:
                return f"rank 0 has {a[0]} {a[1]} {a[2]}, rank {r} has {b[0]} {b[1]} {b[2]}"
        if len(ref) != len(mine):
            return f"rank 0 has {len(ref)} parameters and buffers, rank {r} has {len(mine)}"
    return "no difference found"


class DistributedDataParallel(Module):
    """Data-parallel training: wrap the model, train as usual; ``.grad`` after backward
    is the mean over ranks.

        model = DistributedDataParallel(MyNet())
        for X, y in loader:                       # loader with a DistributedSampler
            opt.reset_grad(); loss_fn(model(X), y).backward(); opt.step()

    ``bucket_cap_mb``: the largest bucket, in MiB of gradient. ``broadcast_buffers``: as
    in PyTorch, every forward first takes rank 0's buffers (BatchNorm running
    statistics), so that all replicas evaluate alike; batch statistics in training stay
    per rank. Move the module to its device before wrapping it. The state of the
    replica is ``model.module`` (``state_dict()`` of the wrapper prefixes "module.").
    """

    def __init__(self, module, bucket_cap_mb=25, broadcast_buffers=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got {type(module).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) \
                or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        params = module.parameters()
        for p in params:
            if _REDUCER in p.__dict__:
                raise ValueError("DistributedDataParallel: a parameter of this module is already "
                                 "wrapped by another DistributedDataParallel")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        g = group()
        if g.size > 1:
            self._check_same_model(g)
            for t in params + list(module.buffers()):
                operand = Operand(t, "DistributedDataParallel")
                broadcast_operand(g, operand, 0, _path(g, operand))
        self._reducer = _Reducer(params, self._make_buckets(params, bucket_cap_mb), g)
        for p in params:
            p.__dict__[_GRAD] = p.__dict__.pop("grad", None)
            p.__dict__[_REDUCER] = self._reducer
            p.__class__ = _synced_class(type(p))

    def _check_same_model(self, g):
        sig = _signature(self.module)
        try:
            g.agree("DistributedDataParallel", sig, _describe_signature)
        except ValueError:
            diff = _first_difference(g.comm.allgather(sig))
            raise ValueError("DistributedDataParallel: the ranks' models differ in their "
                             f"parameters or buffers: {diff}") from None

    @staticmethod
    def _make_buckets(params, bucket_cap_mb):
        keys, entries = [], []
        for p in params:
            data = p.realize_cached_data()
            device = data.device.name if hasattr(data.device, "name") else "numpy"
            wire = wire_dtype(p.dtype, device in HOST_DEVICES or device == "numpy")
            keys.append((p.dtype, device))
            entries.append((keys[-1], int(np.prod(p.shape)) * ITEMSIZE[wire]))
        plan = plan_buckets(entries, bucket_cap_mb * 2 ** 20)
        return [bucket_class(keys[ix[0]][1])([params[i] for i in ix], keys[ix[0]][0])
                for ix in plan]

    def forward(self, *args, **kwargs):
        g = self._reducer.group
        if self.broadcast_buffers and g.size > 1:
            for t in self.module.buffers():
                operand = Operand(t, "DistributedDataParallel")
                broadcast_operand(g, operand, 0, _path(g, operand))
        self._reducer.begin_forward()
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Forward and backward passes inside this block add their gradients to this
        rank's ``.grad`` without communicating; the first backward after it (of a forward
        outside the block) adds its own and averages the sum over ranks. PyTorch's
        semantics; needle's backward otherwise overwrites ``.grad``."""
        self._reducer.no_sync_depth += 1
        try:
            yield
        finally:
            self._reducer.no_sync_depth -= 1

    def sync_gradients(self):
        """Average pending gradients now (reading any ``.grad`` does the same)."""
        if self._reducer.pending:
            self._reducer.reduce()

