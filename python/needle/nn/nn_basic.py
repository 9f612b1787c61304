"""Module machinery and the basic layers (Linear, norms, losses, dropout, ...).

Every layer takes and returns Tensors; parameters are created on ``device``
with ``dtype`` in the order fixed by the API contract (the numpy RNG order is
part of it), and tensors made during ``forward`` go on the input's device.
"""
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, NamedTuple, Tuple

import numpy as np

import needle.amp as _amp
import needle.init as init
from needle import ops
from needle.autograd import Tensor


class Parameter(Tensor):
    """A Tensor owned by a Module: collected by ``parameters()``, updated by optimizers."""


def _unpack_params(value: object) -> List[Tensor]:
    if isinstance(value, Parameter):
        return [value]
    if isinstance(value, Module):
        return value.parameters()
    if isinstance(value, dict):
        params = []
        for v in value.values():
            params += _unpack_params(v)
        return params
    if isinstance(value, (list, tuple)):
        params = []
        for v in value:
            params += _unpack_params(v)
        return params
    return []


def _child_modules(value: object) -> List["Module"]:
    if isinstance(value, Module):
        return [value] + _child_modules(value.__dict__)
    if isinstance(value, dict):
        modules = []
        for v in value.values():
            modules += _child_modules(v)
        return modules
    if isinstance(value, (list, tuple)):
        modules = []
        for v in value:
            modules += _child_modules(v)
        return modules
    return []


def _named_entries(value: object, prefix: str, torch_names: bool = False, recurse: bool = True,
                   _root: bool = True) -> Iterator[Tuple[str, object, str, Tensor]]:
    """Yield ``(dotted_name, owner_module, attribute, tensor)`` for parameters and buffers.

    Names follow attribute paths (``modules.0.weight``, ``rnn_cells.1.W_ih``), the
    way ``state_dict`` keys do. With ``torch_names`` the attributes a module lists in
    ``_index_attrs`` drop out of the path (``Sequential``'s layers are ``0.weight``, as in
    PyTorch, where they are registered by index). ``recurse=False`` stops at child modules.
    """
    if isinstance(value, Module):
        if not (_root or recurse):
            return
        for attr, v in value.__dict__.items():
            name = f"{prefix}{attr}"
            if isinstance(v, Parameter):
                yield name, value, attr, v
            elif attr in value._buffer_names and isinstance(v, Tensor):
                yield name, value, attr, v
            elif torch_names and attr in value._index_attrs:
                yield from _named_entries(v, prefix, torch_names, recurse, False)
            else:
                yield from _named_entries(v, name + ".", torch_names, recurse, False)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, Parameter):
                yield f"{prefix}{k}", None, None, v
            else:
                yield from _named_entries(v, f"{prefix}{k}.", torch_names, recurse, False)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, Parameter):
                yield f"{prefix}{i}", None, None, v
            else:
                yield from _named_entries(v, f"{prefix}{i}.", torch_names, recurse, False)


def _named_child_modules(value: object, prefix: str) -> Iterator[Tuple[str, "Module"]]:
    """The Modules directly inside ``value`` (an attribute value: a Module, or a
    list/tuple/dict that may nest further), named ``prefix`` + index or key path."""
    if isinstance(value, Module):
        yield prefix[:-1], value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _named_child_modules(v, f"{prefix}{k}.")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _named_child_modules(v, f"{prefix}{i}.")


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    return "\n".join(lines[:1] + [" " * spaces + line for line in lines[1:]])


def _parse_to_args(args, device, dtype):
    """``to(device)``, ``to(dtype)``, ``to(device, dtype)``, keywords, or a device name
    (``"cpu"``, ``"cuda"``, ``"cpu_numpy"``) -> (device or None, canonical dtype or None)."""
    from needle import backend_selection

    for a in args:
        if isinstance(a, str) and a in ("cpu", "cuda", "cpu_numpy"):
            device = a
        elif isinstance(a, (str, np.dtype, type)):
            dtype = a
        elif a is not None:
            device = a
    if isinstance(device, str):
        make = getattr(backend_selection, device, None)
        if make is None:
            raise ValueError(f"Module.to: device {device!r} is not available with "
                             f"NEEDLE_BACKEND={backend_selection.BACKEND!r}")
        device = make()
    if dtype is not None:
        from needle.backend_ndarray import dtypes

        dtype = dtypes.canonical(dtype)
        if not dtypes.is_floating(dtype):
            raise TypeError(f"Module.to only accepts floating point dtypes, got {dtype!r}")
    return device, dtype


def _converted(t: Tensor, device, dtype):
    """The raw array of ``t`` on ``device`` as ``dtype`` (None: unchanged), or None when
    nothing changes. Only floating-point tensors change dtype, as in PyTorch."""
    data = t.realize_cached_data()
    changed = False
    if dtype is not None and str(t.dtype) != dtype and str(t.dtype) in _FLOATING:
        if isinstance(data, np.ndarray):  # np mode: numpy needs a dtype object for bfloat16
            from needle.backend_ndarray import dtypes
            data = data.astype(dtypes.to_numpy_dtype(dtype))
        else:
            data = data.astype(dtype)
        changed = True
    if device is not None and t.device != device:
        data = data.to(device)  # NDArray (np mode has a single device)
        changed = True
    return data if changed else None


_FLOATING = ("float32", "float64", "float16", "bfloat16")


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return np.asarray(value.numpy())
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.asarray(value.numpy())
    return np.asarray(value)


class Module:
    """Base class of every layer. Subclasses call ``super().__init__()`` first.

    Besides the course's ``parameters()``, ``train()`` and ``eval()``, modules have
    PyTorch's ``to``, ``named_parameters``, ``named_buffers``, ``children``,
    ``named_children``, ``modules``, ``named_modules`` and a tree ``__repr__`` (layers
    describe themselves in ``extra_repr()``). Children are the Modules held in
    attributes, directly or inside lists, tuples and dicts; their names are the
    attribute path (``rnn_cells.0``), like PyTorch's ModuleList/ModuleDict entries.
    """

    # Attribute names of non-trainable state saved in ``state_dict`` (e.g. running stats).
    _buffer_names: Tuple[str, ...] = ()
    # Container attributes whose entries PyTorch names by index alone (Sequential: "0", "1").
    _index_attrs: Tuple[str, ...] = ()

    def __init__(self):
        self.training = True

    def parameters(self) -> List[Tensor]:
        """All Parameters reachable through attributes, in insertion order (no duplicates)."""
        seen, unique = set(), []
        for p in _unpack_params(self.__dict__):
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        return unique

    def _children(self) -> List["Module"]:
        return _child_modules(self.__dict__)

    def eval(self):
        self.training = False
        for m in self._children():
            m.training = False
        return self

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for m in self._children():
            m.training = bool(mode)
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ----- PyTorch's module API -----------------------------------------
    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, Parameter]]:
        """``(name, Parameter)`` with PyTorch's names (``"0.weight"``, ``"rnn_cells.1.W_ih"``),
        in the order of ``parameters()``; a shared Parameter appears once, under its first name."""
        seen = set()
        for name, _, _, t in self._entries(prefix, recurse):
            if isinstance(t, Parameter):
                if remove_duplicate:
                    if id(t) in seen:
                        continue
                    seen.add(id(t))
                yield name, t

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[Tuple[str, Tensor]]:
        """``(name, Tensor)`` of the non-trainable state (``"1.running_mean"``)."""
        seen = set()
        for name, _, _, t in self._entries(prefix, recurse):
            if not isinstance(t, Parameter):
                if remove_duplicate:
                    if id(t) in seen:
                        continue
                    seen.add(id(t))
                yield name, t

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, t in self.named_buffers(recurse=recurse):
            yield t

    def _entries(self, prefix: str, recurse: bool):
        return _named_entries(self, prefix + "." if prefix else "", True, recurse)

    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        """The Modules held directly in attributes (or in lists/tuples/dicts there)."""
        seen = set()
        for attr, v in self.__dict__.items():
            prefix = "" if attr in self._index_attrs else attr + "."
            for name, m in _named_child_modules(v, prefix):
                if id(m) not in seen:
                    seen.add(id(m))
                    yield name, m

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True
                      ) -> Iterator[Tuple[str, "Module"]]:
        """Self (named ``prefix``) then every descendant, depth first, each once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                       remove_duplicate)

    def modules(self) -> Iterator["Module"]:
        for _, m in Module.named_modules(self):
            yield m

    def to(self, *args, device=None, dtype=None):
        """Move and/or convert every parameter and buffer in place; returns self.

        ``to(device)``, ``to("float64")``, ``to(device, dtype)``, keywords, or a device
        name (``"cuda"``). Parameters keep their identity (optimizers built before stay
        valid, though their state is not converted) and their ``.grad`` follows;
        buffers (BatchNorm running statistics) are replaced. Only floating-point
        tensors change dtype. A module's ``device``/``dtype`` attributes are updated.
        """
        device, dtype = _parse_to_args(args, device, dtype)
        for _, owner, attr, t in _named_entries(self, ""):
            data = _converted(t, device, dtype)
            if data is None:
                continue
            if isinstance(t, Parameter) or owner is None:
                t.cached_data = data   # in place: the ``.data`` setter refuses a dtype change
                grad = getattr(t, "grad", None)
                if grad is not None:
                    gdata = _converted(grad, device, dtype)
                    if gdata is not None:
                        t.grad = Tensor.make_const(gdata)
            else:
                setattr(owner, attr, Tensor.make_const(data))
        for _, m in Module.named_modules(self):
            if device is not None and "device" in m.__dict__:
                m.device = device
            if dtype is not None and isinstance(m.__dict__.get("dtype"), str):
                m.dtype = dtype
        return self

    def extra_repr(self) -> str:
        """The layer's own settings for ``repr``, e.g. ``in_features=3, out_features=4``."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_addindent(repr(m), 2)}" for name, m in self.named_children()]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"

    # ----- checkpoints -------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Copies of every parameter and buffer (e.g. BatchNorm running stats) under
        PyTorch's names: attribute paths, Sequential children by index (``"0.weight"``,
        ``"layers.2.bias"``, ``"bn.running_mean"``). Values are detached Tensors that
        later training does not change; a shared Parameter appears once."""
        state = OrderedDict()
        for name, _, _, t in _named_entries(self, "", torch_names=True):
            if name in state:
                continue
            state[name] = Tensor(_as_numpy(t).copy(), device=t.device, dtype=t.dtype,
                                 requires_grad=False)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True):
        """Load values (Tensors, NDArrays, numpy arrays) under ``state_dict()``'s names.

        Parameters are updated in place (optimizers keep working on them). As in
        PyTorch, a RuntimeError lists every missing and unexpected key (``strict``) and
        every shape mismatch (always) before anything changes; with ``strict=False``
        missing and unexpected keys are skipped and returned as
        ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict expects a dict, got {type(state_dict).__name__}")
        entries = OrderedDict()
        for name, owner, attr, t in _named_entries(self, "", torch_names=True):
            entries.setdefault(name, (owner, attr, t))
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        problems = []
        if strict and missing:
            problems.append("missing key(s) " + ", ".join(repr(k) for k in missing))
        if strict and unexpected:
            problems.append("unexpected key(s) " + ", ".join(repr(k) for k in unexpected))
        arrays = {}
        for name, (_, _, t) in entries.items():
            if name not in state_dict:
                continue
            value = _as_numpy(state_dict[name])
            if tuple(value.shape) != tuple(t.shape):
                problems.append(f"size mismatch for {name!r}: the checkpoint has shape "
                                f"{tuple(value.shape)}, the model {tuple(t.shape)}")
            arrays[name] = value
        if problems:
            raise RuntimeError(f"load_state_dict for {type(self).__name__}: " + "; ".join(problems))
        for name, value in arrays.items():
            owner, attr, t = entries[name]
            new = Tensor(value.astype(_np_dtype(t.dtype)), device=t.device,
                         dtype=t.dtype, requires_grad=False)
            if isinstance(t, Parameter) or owner is None:
                t.data = new
            else:
                setattr(owner, attr, new)
        return IncompatibleKeys(missing, unexpected)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` skipped (PyTorch's ``_IncompatibleKeys``)."""
    missing_keys: List[str]
    unexpected_keys: List[str]


def _np_dtype(dtype) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype("float32")


def one_hot(n, y, device, dtype):
    """Same values as ``init.one_hot(n, y)`` built in O(len(y) * n).

    (The device's one_hot indexes a full ``eye(n)``, which costs O(n^2): 0.2 s and
    230 MB per call for a 7,596-word vocabulary.)
    """
    idx = np.asarray(y.numpy() if isinstance(y, Tensor) else y).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"one_hot: indices must lie in [0, {n}), got range "
                         f"[{idx.min()}, {idx.max()}]")
    out = np.zeros((idx.size, n), dtype=np.float32)
    out[np.arange(idx.size), idx.reshape(-1)] = 1.0
    return Tensor(out.reshape(idx.shape + (n,)), device=device, dtype=dtype, requires_grad=False)


class Identity(Module):
    def forward(self, x):
        return x


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _check_positive_int(name, value, owner):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


class Linear(Module):
    """``y = x @ W + b`` with W (in, out); x may have extra leading dims."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype="float32"):
        super().__init__()
        _check_positive_int("in_features", in_features, "Linear")
        _check_positive_int("out_features", out_features, "Linear")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(init.kaiming_uniform(
            in_features, out_features, device=device, dtype=dtype, requires_grad=True))
        if bias:
            self.bias = Parameter(init.kaiming_uniform(
                out_features, 1, device=device, dtype=dtype,
                requires_grad=True).reshape((1, out_features)))
        else:
            self.bias = None

    def forward(self, X: Tensor) -> Tensor:
        if X.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): input shape "
                             f"{tuple(X.shape)} has last dim {X.shape[-1]}, expected {self.in_features}")
        lead = tuple(X.shape[:-1])
        x2 = X if len(X.shape) == 2 else X.reshape((_prod(lead), self.in_features))
        out = x2 @ self.weight
        if self.bias is not None:
            bias = _amp.bias_for(self.bias)
            if bias.shape != (1, self.out_features):  # e.g. a (out,) bias from a checkpoint
                bias = bias.reshape((1, self.out_features))
            out = out + bias.broadcast_to(out.shape)
        if len(X.shape) != 2:
            out = out.reshape(lead + (self.out_features,))
        return out

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1*d2*...)."""

    def forward(self, X):
        return X.reshape((X.shape[0], _prod(X.shape[1:])))


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class _LayerTuple(tuple):
    """``Sequential.modules``: the course's tuple of layers that can also be called, as
    PyTorch's ``model.modules()`` (which the course's attribute would otherwise hide)."""

    def __new__(cls, layers, owner):
        self = super().__new__(cls, layers)
        self._owner = owner
        return self

    def __call__(self):
        return Module.modules(self._owner)


class Sequential(Module):
    """Applies ``modules`` in order; PyTorch names them "0", "1", ..."""

    _index_attrs = ("modules",)

    def __init__(self, *modules):
        super().__init__()
        self.modules = modules

    @property
    def modules(self):
        return _LayerTuple(self.__dict__["modules"], self)

    @modules.setter
    def modules(self, layers):
        # Stored in __dict__ under its course name: parameters(), state_dict keys unchanged.
        self.__dict__["modules"] = tuple(layers)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.__dict__["modules"]:
            x = m(x)
        return x


class SoftmaxLoss(Module):
    """Mean cross-entropy of ``logits`` (N, k) against integer labels ``y`` (N,)."""

    def forward(self, logits: Tensor, y: Tensor):
        if len(logits.shape) != 2:
            raise ValueError(f"SoftmaxLoss: logits must be (N, k), got {tuple(logits.shape)}")
        n, k = logits.shape
        if tuple(y.shape) != (n,):
            raise ValueError(f"SoftmaxLoss: labels must be ({n},) for logits {tuple(logits.shape)}, "
                             f"got {tuple(y.shape)}")
        labels = np.asarray(y.numpy()).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"SoftmaxLoss: labels must lie in [0, {k}), got range "
                             f"[{labels.min()}, {labels.max()}]")
        # One fused pass per row forward and backward (ops_loss); the composition
        # logsumexp(logits) - logits[i, y_i] is its test oracle.
        return ops.softmax_cross_entropy(logits, y)  # y, already on the device: no upload of labels


class BatchNorm1d(Module):
    """Batch normalisation over axis 0 of (N, dim) inputs, with running statistics."""

    _buffer_names = ("running_mean", "running_var")

    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        _check_positive_int("dim", dim, type(self).__name__)
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype, requires_grad=True))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype, requires_grad=True))
        self.running_mean = init.zeros(dim, device=device, dtype=dtype)
        self.running_var = init.ones(dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}({self.dim}): expected (N, {self.dim}) input, "
                             f"got {tuple(x.shape)}")
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        """Training: the fused ``ops.BatchNorm`` (one graph node; x (N, C) or (N, C, H, W))
        whose batch mean and biased variance update the running statistics off the graph.
        Eval: ``(x - running_mean) * (weight / sqrt(running_var + eps)) + bias``.
        ``ops.batch_norm_composition`` is the training path's test oracle."""
        if self.training:
            op = ops.BatchNorm(self.eps)
            y = op(x, self.weight, self.bias)
            m = self.momentum
            self.running_mean = Tensor.make_const((1 - m) * self.running_mean.realize_cached_data() + op.mean * m)
            self.running_var = Tensor.make_const((1 - m) * self.running_var.realize_cached_data() + op.var * m)
            return y
        if len(x.shape) != 2:
            s = x.shape
            x2 = ops.permute(x, (0, 2, 3, 1)).reshape((s[0] * s[2] * s[3], s[1]))
            y = self._normalize(x2).reshape((s[0], s[2], s[3], s[1]))
            return ops.permute(y, (0, 3, 1, 2))
        shape = x.shape
        xc = x - self.running_mean.broadcast_to(shape)
        scale = self.weight * (self.running_var + self.eps) ** -0.5
        return xc * scale.broadcast_to(shape) + self.bias.broadcast_to(shape)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(BatchNorm1d):
    """BatchNorm over N, H, W of an NCHW input (channels are the features)."""

    def forward(self, x: Tensor):
        if len(x.shape) != 4 or x.shape[1] != self.dim:
            raise ValueError(f"BatchNorm2d({self.dim}): expected (N, {self.dim}, H, W) input, "
                             f"got {tuple(x.shape)}")
        # Training normalises the (N*H*W, C) channels-last view inside the op: after
        # nn.Conv (NHWC underneath) that view is free and the output is NCHW over NHWC again.
        return self._normalize(x)


class LayerNorm1d(Module):
    """Normalise over the last axis (biased variance); inputs may have leading dims."""

    def __init__(self, dim, eps=1e-5, device=None, dtype="float32"):
        super().__init__()
        _check_positive_int("dim", dim, "LayerNorm1d")
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype, requires_grad=True))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype, requires_grad=True))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm1d({self.dim}): input {tuple(x.shape)} has last dim "
                             f"{x.shape[-1]}")
        # One fused node (ops.LayerNorm); ops.layer_norm_composition is its test oracle.
        return ops.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Training: zero each element with probability p and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        mask = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        if self.p == 1.0:
            return x * mask
        # The 1/(1-p) scale goes into the constant mask: one graph node, not two.
        return x * Tensor.make_const(mask.realize_cached_data() * (1.0 / (1 - self.p)))

    def extra_repr(self):
        return f"p={self.p}"


class Residual(Module):
    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x
