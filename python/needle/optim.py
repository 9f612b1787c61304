"""Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedulers.

Updates run on the parameters' raw arrays (NDArray, or numpy in np mode) and are
written back as the parameters' data, so no autograd graph is ever built and the
number of live Tensors stays flat across steps. ``p.grad`` is never modified
by ``step()``. Where the backend has a one-pass update kernel (``sgd_step``,
``adam_step``) it runs; otherwise (np mode) the same update as a composition.
"""
import functools
import math

import numpy as np

from . import init, profiler
from .autograd import Tensor
from .ops import array_backend as B


def _raw(t):
    return t.realize_cached_data()


def _keep_dtype(arr, p):
    """``arr`` in the parameter's dtype: a half-precision parameter is updated in float32,
    and numpy's promotions can widen a result."""
    return arr if arr.dtype == p.dtype else arr.astype(p.dtype)


def _set_param(p, arr):
    """The new array ``arr`` (an update's result, never shared) becomes p's data."""
    p.cached_data = B.as_result(_keep_dtype(arr, p))  # what ``p.data = ...`` does, minus the Tensor


def _fused_operands(w, g):
    """(w, g) as the backend's one-pass updates take them, or None when it has none (np
    mode): then the composition runs. See ``array_backend.fused_update_operands``."""
    return B.fused_update_operands(w, g)


def _state(store, p, w):
    """The optimizer-owned compact buffer for ``p`` (zeros at first): kernels update it in place."""
    buf = store.get(p)
    if buf is None:
        buf = store[p] = w.device.full(w.shape, 0.0, w.dtype)
    elif buf._offset or not buf.is_compact():
        buf = store[p] = buf.compact()
    return buf


def clip_grad_norm(params, max_norm, eps=1e-6):
    """Scale all gradients in ``params`` so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping. Scaling is by ``max_norm / (norm + eps)`` when that
    is below 1 (PyTorch semantics). Parameters without a gradient are skipped.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = [p for p in params if getattr(p, "grad", None) is not None]
    total = math.sqrt(sum(B.sum_of_squares(_raw(p.grad)) for p in params))
    coef = max_norm / (total + eps)
    if coef < 1:
        for p in params:
            g = _raw(p.grad) * coef
            p.grad = Tensor(_keep_dtype(g, p), device=p.device, dtype=p.dtype,
                            requires_grad=False)
    return total


def _profiled(step):
    """``step`` recorded by an active needle.profiler as one "optimizer" event (the fused
    updates are kernel calls, not ops; a step that calls its base class's is one event)."""
    @functools.wraps(step)
    def run(self, *args, **kwargs):
        prof = profiler.active()
        if prof is None or getattr(self, "_profiled_step", False):
            return step(self, *args, **kwargs)
        self._profiled_step = True
        try:
            with prof.region(f"{type(self).__name__}.step", "optimizer"):
                return step(self, *args, **kwargs)
        finally:
            self._profiled_step = False
    return run


class Optimizer:
    """Base class: holds ``params``; ``step()`` updates them; ``reset_grad()`` clears grads."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:
            cls.step = _profiled(cls.__dict__["step"])

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")

    def step(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def reset_grad(self):
        for p in self.params:
            p.grad = None

    def zero_grad(self, set_to_none: bool = True):
        """PyTorch's name for ``reset_grad``. ``set_to_none=False`` gives every existing
        gradient zeros instead (parameters without a gradient keep None, as in PyTorch).
        The zeros are new arrays: a gradient may share its array with another tensor's."""
        if set_to_none:
            self.reset_grad()
            return
        for p in self.params:
            g = getattr(p, "grad", None)
            if g is not None:
                p.grad = init.zeros_like(g)

    def clip_grad_norm(self, max_norm=0.25):
        return clip_grad_norm(self.params, max_norm)

    # ----- checkpoints -------------------------------------------------
    _hyper = ("lr",)
    _slots = ()

    def state_dict(self):
        """Hyper-parameters, step count and per-parameter state (numpy, by parameter index)."""
        state = {name: {} for name in self._slots}
        for name in self._slots:
            store = getattr(self, name)
            for i, p in enumerate(self.params):
                if p in store:
                    state[name][i] = B.to_numpy(store[p])
        return {"type": type(self).__name__,
                "hyper": {h: getattr(self, h) for h in self._hyper},
                "t": getattr(self, "t", 0),
                "num_params": len(self.params),
                "state": state}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "state" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: not an optimizer state dict")
        if state.get("type") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state was saved by "
                             f"{state.get('type')!r}")
        if state.get("num_params") != len(self.params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state has "
                             f"{state.get('num_params')} parameters, optimizer has "
                             f"{len(self.params)}")
        for name in self._slots:
            for i, arr in state["state"].get(name, {}).items():
                arr = np.asarray(arr.numpy() if hasattr(arr, "numpy") else arr)
                p = self.params[int(i)]
                if tuple(arr.shape) != tuple(p.shape):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {name}[{i}] has "
                                     f"shape {arr.shape}, parameter has {tuple(p.shape)}")
        for h, v in state["hyper"].items():
            setattr(self, h, v)
        if hasattr(self, "t"):
            self.t = state.get("t", 0)
        for name in self._slots:
            store = getattr(self, name)
            store.clear()
            for i, arr in state["state"].get(name, {}).items():
                p = self.params[int(i)]
                arr = np.asarray(arr.numpy() if hasattr(arr, "numpy") else arr)
                store[p] = _raw(Tensor(arr, device=p.device, dtype=p.dtype, requires_grad=False))
        return self


class SGD(Optimizer):
    """``g = grad + wd*p``; ``u = momentum*u + (1-momentum)*g``; ``p -= lr*u``."""

    _hyper = ("lr", "momentum", "weight_decay")
    _slots = ("u",)

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"SGD: need lr >= 0, 0 <= momentum < 1, weight_decay >= 0; got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.u = {}

    def step(self):
        for p in self.params:
            if getattr(p, "grad", None) is None:
                continue
            w = _raw(p)
            g = _raw(p.grad)
            fused = _fused_operands(w, g)
            if fused is not None:  # one pass: g + wd*w, momentum, w - lr*u
                w, g = fused
                u = _state(self.u, p, w) if self.momentum else None
                _set_param(p, w.sgd_step(g, u, self.lr, self.momentum, self.weight_decay))
                continue
            if self.weight_decay:
                g = g + w * self.weight_decay
            if self.momentum:
                u = self.u.get(p)
                u = g * (1 - self.momentum) if u is None else \
                    u * self.momentum + g * (1 - self.momentum)
                self.u[p] = u
            else:
                u = g
            _set_param(p, w - u * self.lr)


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 folded into the gradient."""

    _hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _slots = ("m", "v")

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        if lr < 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: invalid hyper-parameters lr={lr}, "
                             f"beta1={beta1}, beta2={beta2}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0
        self.m = {}
        self.v = {}

    def _l2(self):
        return self.weight_decay

    def step(self):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1 = 1 - b1 ** self.t
        c2 = 1 - b2 ** self.t
        l2 = self._l2()
        for p in self.params:
            if getattr(p, "grad", None) is None:
                continue
            w = _raw(p)
            g = _raw(p.grad)
            fused = _fused_operands(w, g)
            if fused is not None:  # one pass per parameter; m and v updated in place
                w, g = fused
                m = _state(self.m, p, w)
                v = _state(self.v, p, w)
                _set_param(p, w.adam_step(g, m, v, self.lr, b1, b2, self.eps, l2, self._decay_factor(), c1, c2))
                continue
            if l2:
                g = g + w * l2
            m = self.m.get(p)
            v = self.v.get(p)
            m = g * (1 - b1) if m is None else m * b1 + g * (1 - b1)
            v = (g * g) * (1 - b2) if v is None else v * b2 + (g * g) * (1 - b2)
            self.m[p] = m
            self.v[p] = v
            update = (m / c1) / ((v / c2) ** 0.5 + self.eps)
            w = self._decay(w)
            _set_param(p, w - update * self.lr)

    def _decay_factor(self):
        return 1.0

    def _decay(self, w):
        return w


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p -= lr*wd*p`` before the Adam update."""

    def __init__(self, params, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay)

    def _l2(self):
        return 0.0

    def _decay(self, w):
        if self.weight_decay:
            return w * (1 - self.lr * self.weight_decay)
        return w

    def _decay_factor(self):
        return 1 - self.lr * self.weight_decay if self.weight_decay else 1.0


# ----- learning-rate schedulers (PyTorch style: ``step()`` after each epoch) -----

class LRScheduler:
    """Sets ``optimizer.lr`` from the epoch counter; ``step()`` advances it by one."""

    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} has no lr")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = last_epoch
        self.step()

    def get_lr(self, epoch):
        raise NotImplementedError(f"{type(self).__name__} must define get_lr (abstract)")

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr(self.last_epoch)
        return self.optimizer.lr

    def get_last_lr(self):
        return self.optimizer.lr

    def state_dict(self):
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        self.base_lr = state["base_lr"]
        self.last_epoch = state["last_epoch"]
        self.optimizer.lr = self.get_lr(self.last_epoch)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if step_size <= 0:
            raise ValueError(f"StepLR: step_size must be > 0, got {step_size}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be > 0, got {T_max}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2
