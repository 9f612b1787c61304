"""needle.profiler: where the time of a step goes, op by op.

    with needle.profiler.profile() as prof:
        loss = model(X).sum(); loss.backward(); opt.step()
    print(prof.table(sort_by="time"))
    prof.export_chrome_trace("step.json")   # open in Perfetto or chrome://tracing

Every op that runs (its ``compute``, forward or inside ``backward()``) and every optimizer
``step()`` (phase "optimizer", time only) becomes an event
with its wall time, input shapes, an estimate of its FLOPs and of the bytes it moves
(inputs read, output written; views move none), and the hidden copies it forced (an
NDArray ``compact()`` that had to copy while the op ran). ``table()`` sums the events
by op and phase and rates each row against the measured peak of the machine (a
roofline: GEMM FLOP/s, elementwise bandwidth), so a row at 10% of what its arithmetic
intensity allows is a kernel worth tuning and one at 90% is not.

Off (no ``profile`` active) the only cost is one global read per op.
"""
import json
import math
import os
import threading
import time

__all__ = ["profile", "measure_peak"]

_ACTIVE = None  # the recording profile; autograd and NDArray.compact read it


def active():
    return _ACTIVE


# ---- what an op costs, estimated from its arrays ----------------------------------------
_ELEMENTWISE = {
    "EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWiseDiv", "DivScalar", "EWisePow", "PowerScalar",
    "Abs", "Negate", "Log", "Exp", "ReLU", "Tanh", "TanhGrad", "Sigmoid", "SigmoidGrad", "Maximum", "Where",
    "Erf", "FusedAddScalars",
}
_REDUCTIONS = {"Summation", "Max", "SumToShape"}
_FLOPS_PER_INPUT = {"LogSumExp": 4, "LogSoftmax": 5, "SoftmaxCrossEntropy": 5, "SoftmaxCrossEntropyGrad": 4,
                    "_Norm": 8, "_NormGrad": 10}


def _arrays(values):
    for v in values:
        if isinstance(v, tuple):
            yield from _arrays(v)
        elif v is not None and hasattr(v, "shape"):
            yield v


def _size(a):
    return math.prod(a.shape)


def _itemsize(dtype):
    from .backend_ndarray.dtypes import ITEMSIZE

    return ITEMSIZE.get(str(dtype), 4)


def _shares_memory(out, inputs):
    handle = getattr(out, "_handle", None)
    if handle is not None:
        return any(getattr(a, "_handle", None) is handle for a in inputs)
    base = getattr(out, "base", None)  # numpy views (NEEDLE_BACKEND=np)
    return base is not None and any(base is a or base is getattr(a, "base", None) for a in inputs)


def op_flops(op, inputs, outputs):
    """Floating-point operations of one op call (multiply-add = 2), from its arrays."""
    name = type(op).__name__
    out = outputs[0] if outputs else None
    if name == "MatMul" and out is not None and len(inputs) == 2:
        a = inputs[0]
        k = a.shape[-2] if getattr(op, "trans_a", False) else a.shape[-1]
        return 2 * _size(out) * k
    if name == "Conv" and out is not None and len(inputs) == 2:
        kh, kw, cin_per_group, _ = inputs[1].shape
        return 2 * _size(out) * kh * kw * cin_per_group
    if name in ("ConvGradInput", "ConvGradWeight") and len(inputs) == 2:
        # the same multiply-adds as the forward: (taps x channels per group) per output gradient
        g, other = (inputs[0], inputs[1]) if name == "ConvGradInput" else (inputs[1], inputs[0])
        w_shape = other.shape if name == "ConvGradInput" else outputs[0].shape
        kh, kw, cin_per_group, _ = w_shape
        return 2 * _size(g) * kh * kw * cin_per_group
    if name in _ELEMENTWISE and out is not None:
        return _size(out)
    if name in _REDUCTIONS and inputs:
        return _size(inputs[0])
    if name in _FLOPS_PER_INPUT and inputs:
        return _FLOPS_PER_INPUT[name] * _size(inputs[0])
    return 0


def op_bytes(inputs, outputs):
    """Bytes an op reads and writes; 0 for an output that is a view of an input."""
    if len(outputs) == 1 and _shares_memory(outputs[0], inputs):
        return 0
    return sum(_array_bytes(a) for a in inputs) + sum(_array_bytes(a) for a in outputs)


def _array_bytes(a):
    itemsize = getattr(a, "itemsize", None)
    if itemsize is None:
        itemsize = _itemsize(a.dtype)
    return _size(a) * int(itemsize)


# ---- recording --------------------------------------------------------------------------
class Event:
    """One op call: ``name``, ``phase`` ("forward"/"backward"), start and duration (ns),
    ``flops``, ``bytes``, hidden ``copies`` and ``copy_bytes``, input ``shapes``."""

    __slots__ = ("name", "phase", "start_ns", "dur_ns", "flops", "bytes", "copies", "copy_bytes", "shapes")

    def __init__(self, name, phase, start_ns, shapes):
        self.name, self.phase, self.start_ns, self.shapes = name, phase, start_ns, shapes
        self.dur_ns = self.flops = self.bytes = self.copies = self.copy_bytes = 0


class profile:
    """Records every op run inside the ``with`` block (see the module docstring).

    ``sync_cuda`` waits for the GPU after each op on a cuda array, so that an event's
    time is its kernels' time and not just the launch.
    """

    def __init__(self, sync_cuda=True):
        self.sync_cuda = sync_cuda
        self.events = []
        self._phase = "forward"
        self._current = None
        self._t0 = None
        self._thread = None

    def __enter__(self):
        global _ACTIVE
        from . import autograd
        from .backend_ndarray import ndarray

        if _ACTIVE is not None:
            raise RuntimeError("needle.profiler.profile: a profile is already recording (profiles do not nest)")
        self._t0 = time.perf_counter_ns()
        self._thread = threading.get_ident()
        _ACTIVE = self
        autograd.set_compute_hook(self.run)
        ndarray.set_copy_hook(self.hidden_copy)
        return self

    def __exit__(self, *exc):
        global _ACTIVE
        from . import autograd
        from .backend_ndarray import ndarray

        autograd.set_compute_hook(None)
        ndarray.set_copy_hook(None)
        _ACTIVE = None
        return False

    # -- hooks (called by autograd and NDArray) --
    def run(self, compute, op, datas):
        """``compute(op, datas)`` timed and recorded as one event."""
        if threading.get_ident() != self._thread:
            return compute(op, datas)  # another thread's ops (e.g. a data-loader worker)
        inputs = list(_arrays(datas))
        event = Event(type(op).__name__, self._phase, time.perf_counter_ns(),
                      tuple(tuple(a.shape) for a in inputs))
        outer, self._current = self._current, event
        try:
            out = compute(op, datas)
            if self.sync_cuda:
                _sync_if_cuda(out)
        finally:
            self._current = outer
            event.dur_ns = time.perf_counter_ns() - event.start_ns
        outputs = list(_arrays(out if isinstance(out, tuple) else (out,)))
        event.flops = op_flops(op, inputs, outputs)
        event.bytes = op_bytes(inputs, outputs)
        self.events.append(event)
        return out

    def hidden_copy(self, nbytes):
        """A compact() that copied ``nbytes`` while the current op ran."""
        if self._current is not None and threading.get_ident() == self._thread:
            self._current.copies += 1
            self._current.copy_bytes += nbytes

    def backward_phase(self):
        """Context for ``backward()``: the ops it runs are recorded as the backward phase."""
        return _Phase(self, "backward")

    def region(self, name, phase):
        """Context for work that is not an op (an optimizer's fused step runs NDArray
        kernels directly): one event ``name`` in ``phase`` with its wall time and the
        hidden copies made inside it; no FLOP or byte estimate."""
        return _Region(self, name, phase)

    # -- results --
    def key_averages(self):
        """One row per (op, phase): dicts with calls, time_ms, flops, bytes, copies, copy_bytes."""
        rows = {}
        for e in self.events:
            r = rows.setdefault((e.name, e.phase), {"name": e.name, "phase": e.phase, "calls": 0, "time_ns": 0,
                                                    "flops": 0, "bytes": 0, "copies": 0, "copy_bytes": 0})
            r["calls"] += 1
            r["time_ns"] += e.dur_ns
            r["flops"] += e.flops
            r["bytes"] += e.bytes
            r["copies"] += e.copies
            r["copy_bytes"] += e.copy_bytes
        for r in rows.values():
            r["time_ms"] = r["time_ns"] / 1e6
        return list(rows.values())

    def table(self, sort_by="time", row_limit=None, peak=None):
        """The summary as text: per op and phase, calls, total and mean time, share of the
        recorded op time, GFLOP/s, GB/s, hidden copies, and ``%peak``: the achieved rate
        over what the roofline allows at the op's arithmetic intensity. ``peak`` is
        (FLOP/s, bytes/s); measured on this machine (once per device) when None.
        ``sort_by``: "time", "calls", "flops", "bytes" or "copies"."""
        keys = {"time": "time_ns", "calls": "calls", "flops": "flops", "bytes": "bytes", "copies": "copies"}
        if sort_by not in keys:
            raise ValueError(f"profile.table: sort_by must be one of {sorted(keys)}, got {sort_by!r}")
        rows = sorted(self.key_averages(), key=lambda r: r[keys[sort_by]], reverse=True)
        if row_limit is not None:
            rows = rows[:row_limit]
        peak_flops, peak_bw = peak if peak is not None else measure_peak()
        total_ns = sum(e.dur_ns for e in self.events) or 1
        header = (f"{'op':<26}{'phase':<10}{'calls':>7}{'total ms':>11}{'mean us':>10}{'%time':>7}"
                  f"{'GFLOP/s':>10}{'GB/s':>8}{'copies':>8}{'copy MB':>9}{'%peak':>7}")
        lines = [header, "-" * len(header)]
        for r in rows:
            seconds = r["time_ns"] / 1e9 or 1e-12
            gflops, gbs = r["flops"] / seconds / 1e9, r["bytes"] / seconds / 1e9
            lines.append(
                f"{r['name'][:25]:<26}{r['phase']:<10}{r['calls']:>7}{r['time_ns'] / 1e6:>11.3f}"
                f"{r['time_ns'] / 1e3 / r['calls']:>10.1f}{100 * r['time_ns'] / total_ns:>7.1f}"
                f"{gflops:>10.2f}{gbs:>8.2f}{r['copies']:>8}{r['copy_bytes'] / 2**20:>9.2f}"
                f"{_roofline_percent(r['flops'], r['bytes'], seconds, peak_flops, peak_bw):>7}")
        lines.append(f"{len(self.events)} op calls, {total_ns / 1e6:.3f} ms in ops; peak "
                     f"{peak_flops / 1e9:.1f} GFLOP/s, {peak_bw / 1e9:.1f} GB/s")
        return "\n".join(lines)

    def export_chrome_trace(self, path):
        """Write the events in the Trace Event format (Perfetto, chrome://tracing)."""
        pid = os.getpid()
        trace = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "needle"}}]
        for e in self.events:
            trace.append({
                "name": e.name, "cat": e.phase, "ph": "X", "pid": pid, "tid": _TRACE_ROWS.get(e.phase, 2),
                "ts": (e.start_ns - self._t0) / 1e3, "dur": e.dur_ns / 1e3,
                "args": {"shapes": [list(s) for s in e.shapes], "flops": e.flops, "bytes": e.bytes,
                         "hidden_copies": e.copies, "copy_bytes": e.copy_bytes},
            })
        with open(os.fspath(path), "w") as f:
            json.dump({"traceEvents": trace, "displayTimeUnit": "ms"}, f)


_TRACE_ROWS = {"forward": 0, "backward": 1}  # other phases (the optimizer step) share a third row


class _Region:
    def __init__(self, prof, name, phase):
        self.prof, self.name, self.phase = prof, name, phase

    def __enter__(self):
        self.event = Event(self.name, self.phase, time.perf_counter_ns(), ())
        self.outer, self.prof._current = self.prof._current, self.event
        return self.event

    def __exit__(self, *exc):
        self.event.dur_ns = time.perf_counter_ns() - self.event.start_ns
        self.prof._current = self.outer
        self.prof.events.append(self.event)
        return False


class _Phase:
    def __init__(self, prof, phase):
        self.prof, self.phase = prof, phase

    def __enter__(self):
        self.saved, self.prof._phase = self.prof._phase, self.phase

    def __exit__(self, *exc):
        self.prof._phase = self.saved
        return False


def _sync_if_cuda(out):
    for a in _arrays(out if isinstance(out, tuple) else (out,)):
        device = getattr(a, "device", None)
        if getattr(device, "name", None) == "cuda":
            device.synchronize()
            return


def _roofline_percent(flops, nbytes, seconds, peak_flops, peak_bw):
    if flops == 0 and nbytes == 0:
        return "-"
    if flops == 0:  # pure data movement: against bandwidth alone
        return f"{100 * nbytes / seconds / peak_bw:.0f}"
    attainable = min(peak_flops, flops / max(nbytes, 1) * peak_bw)
    return f"{100 * flops / seconds / attainable:.0f}"


# ---- the machine's peak -------------------------------------------------------------------
_PEAKS = {}


def measure_peak(device=None):
    """(FLOP/s, bytes/s) this machine reaches through needle on ``device``: the best of a
    few 1024^3 float32 matmuls and of a 16M-element add (3 arrays moved). Cached."""
    import numpy as np

    from .autograd import Tensor, no_grad
    from .backend_selection import default_device

    device = default_device() if device is None else device
    key = getattr(device, "name", str(device))
    if key in _PEAKS:
        return _PEAKS[key]
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((1024, 1024), dtype=np.float32), device=device, requires_grad=False)
    x = Tensor(rng.standard_normal(1 << 24, dtype=np.float32), device=device, requires_grad=False)

    def best(fn, reps=3):
        with no_grad():
            _sync_if_cuda(fn().realize_cached_data())
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                _sync_if_cuda(fn().realize_cached_data())
                times.append(time.perf_counter() - t)
        return min(times)

    flops = 2 * 1024 ** 3 / best(lambda: a @ a)
    bandwidth = 3 * 4 * (1 << 24) / best(lambda: x + x)
    _PEAKS[key] = (flops, bandwidth)
    return _PEAKS[key]
