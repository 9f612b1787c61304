"""Mixed precision: ``autocast`` and ``GradScaler``, as PyTorch's.

    scaler = needle.amp.GradScaler()
    with needle.amp.autocast(dtype="float16"):
        loss = loss_fn(model(X), y)
    scaler.scale(loss).backward()
    scaler.step(opt)        # skipped when a gradient overflowed
    scaler.update()         # and the scale adapts

Inside ``autocast`` the matrix products (matmul, hence Linear and attention, and
convolution) run on half-precision copies of their floating-point inputs, where tensor
cores make them fast, while the ops that need range or precision (sums, exp/log/pow,
logsumexp, softmax, the losses and the norms) run on float32 copies of half inputs.
Linear and Conv add their bias in half too (``bias_for``), as PyTorch's autocast runs
those layers; every other op follows the usual promotion (bfloat16 + float32 -> float32). Parameters
stay float32 (the master weights): the casts are graph nodes, so gradients flow back
through them into float32 ``.grad``. A parameter is cast once per autocast region.

On the CPU the half types are storage formats (kernels compute in float32), so autocast
there saves memory, not time; it runs the same graph, which is how CI tests it.

float16's range ends at 65504: small gradients underflow to zero unless the loss is
scaled up first. ``GradScaler`` multiplies the loss by ``scale``, divides the gradients
by it before the step, skips a step whose gradients hold inf/NaN and halves the scale
then, and doubles it after ``growth_interval`` clean steps. bfloat16 has float32's range
and needs no scaler (a disabled or bfloat16 scaler is harmless).
"""
import threading

from .backend_ndarray.dtypes import FLOATING as _FLOATING
from .backend_ndarray.dtypes import HALF as _HALVES
from .backend_ndarray.dtypes import canonical as _canonical

__all__ = ["autocast", "GradScaler", "is_autocast_enabled", "get_autocast_dtype"]

_HALF_OPS = frozenset({"MatMul", "Conv"})
_FLOAT32_OPS = frozenset({
    "Summation", "SumToShape", "Exp", "Log", "EWisePow", "PowerScalar", "LogSumExp", "LogSoftmax",
    "SoftmaxCrossEntropy", "SoftmaxCrossEntropyGrad", "_Norm", "_NormGrad",
})

_state = threading.local()


def _current():
    return getattr(_state, "region", None)


def is_autocast_enabled():
    return _current() is not None


def get_autocast_dtype():
    region = _current()
    return None if region is None else region.dtype


class autocast:
    """Context manager (and decorator) for mixed-precision regions; ``enabled=False``
    turns autocast off inside (e.g. for a part that must run in float32)."""

    def __init__(self, dtype="bfloat16", enabled=True):
        dtype = _canonical(dtype)
        if dtype not in _HALVES:
            raise ValueError(f"autocast: dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        self.dtype = dtype
        self.enabled = bool(enabled)
        self._casts = {}

    def __enter__(self):
        self._saved = _current()
        _state.region = self if self.enabled else None
        _regions_opened(+1)
        return self

    def __exit__(self, *exc):
        _state.region = self._saved
        self._casts.clear()
        _regions_opened(-1)
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.dtype, self.enabled):
                return fn(*args, **kwargs)
        return wrapped

    def _cast(self, t, dtype):
        from .ops import cast

        if t.is_leaf():  # parameters: once per region (they do not change inside it)
            hit = self._casts.get((id(t), dtype))
            if hit is not None and hit[0] is t:
                return hit[1]
            out = cast(t, dtype)
            self._casts[(id(t), dtype)] = (t, out)
            return out
        return cast(t, dtype)


def bias_for(t):
    """A layer's bias ``t`` as its product is computed: in the region's half dtype inside
    autocast (cast once per region; the gradient flows back to the float32 bias), else
    ``t`` itself. PyTorch's autocast runs linear and conv, bias included, in half: their
    output is half, not float32 by promotion."""
    region = _current()
    if region is None or t.dtype == region.dtype or t.dtype not in _FLOATING:
        return t
    return region._cast(t, region.dtype)


_open_regions = 0
_open_lock = threading.Lock()


def _regions_opened(delta):
    """Count the regions open in any thread; autograd consults autocast only while one is."""
    global _open_regions
    from . import autograd

    with _open_lock:
        _open_regions += delta
        autograd.set_autocast_hook(autocast_inputs if _open_regions else None)


def autocast_inputs(op, inputs):
    """The inputs ``op`` runs on inside the current autocast region (autograd calls this
    for every op while a region is active)."""
    region = _current()
    if region is None:
        return inputs
    name = type(op).__name__
    if name in _HALF_OPS:
        target, change = region.dtype, _FLOATING
    elif name in _FLOAT32_OPS:
        target, change = "float32", _HALVES
    else:
        return inputs
    out = []
    for t in inputs:
        dtype = getattr(t, "dtype", None)
        out.append(region._cast(t, target) if dtype in change and dtype != target else t)
    return out


class GradScaler:
    """Loss scaling for float16 training (PyTorch's ``torch.amp.GradScaler``)."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if int(growth_interval) < 1:
            raise ValueError(f"GradScaler: growth_interval must be >= 1, got {growth_interval}")
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._enabled = bool(enabled)
        self._growth_tracker = 0
        self._unscaled = {}  # id(optimizer) -> found_inf, for the current step

    def is_enabled(self):
        return self._enabled

    def get_scale(self):
        return self._scale if self._enabled else 1.0

    def scale(self, outputs):
        """``outputs`` (a Tensor, or a list/tuple of them) times the scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        return outputs * self._scale

    def unscale_(self, optimizer):
        """Divide ``optimizer``'s gradients by the scale (once per step) and note whether
        any is inf/NaN; call before clipping gradients."""
        if not self._enabled:
            return
        if id(optimizer) in self._unscaled:
            raise RuntimeError("GradScaler.unscale_ was already called for this optimizer since the last update()")
        from .autograd import Tensor, no_grad

        inv = 1.0 / self._scale
        probe = None
        with no_grad():
            for p in optimizer.params:
                g = getattr(p, "grad", None)
                if g is None:
                    continue
                g = Tensor.make_const((g * inv).realize_cached_data())
                p.grad = g
                # inf * 0 and NaN * 0 are NaN, finite * 0 is 0: one sum finds any overflow.
                term = (g.float() * 0.0).sum()
                probe = term if probe is None else probe + term
        found_inf = probe is not None and not _is_finite(probe.item())
        self._unscaled[id(optimizer)] = found_inf

    def step(self, optimizer):
        """``optimizer.step()`` unless the gradients overflowed; returns whether it stepped."""
        if not self._enabled:
            optimizer.step()
            return True
        if id(optimizer) not in self._unscaled:
            self.unscale_(optimizer)
        if self._unscaled[id(optimizer)]:
            return False
        optimizer.step()
        return True

    def update(self, new_scale=None):
        """Adapt the scale after a step: back off on overflow, grow after a clean run."""
        if not self._enabled:
            return
        found_inf = any(self._unscaled.values())
        self._unscaled.clear()
        if new_scale is not None:
            self._scale = float(new_scale)
            self._growth_tracker = 0
        elif found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._scale *= self.growth_factor
                self._growth_tracker = 0

    def state_dict(self):
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state):
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])


def _is_finite(x):
    return x == x and x not in (float("inf"), float("-inf"))
