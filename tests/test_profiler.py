"""needle.profiler: events per op and phase, FLOP and byte counts checked against
formulas computed here, hidden copies, the table, the Chrome trace, and no hooks left
behind when it is off."""
import json

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import autograd, ops, profiler

PEAK = (1e11, 1e10)  # a fixed peak keeps the table tests from measuring the machine


def T(*shape, requires_grad=True):
    return ndl.Tensor(np.random.randn(*shape).astype(np.float32), requires_grad=requires_grad)


def test_forward_and_backward_events_with_exact_flops():
    np.random.seed(0)
    a, b = T(7, 5), T(5, 3)
    with profiler.profile() as prof:
        c = (a @ b).relu().sum()
        c.backward()
    fwd = [(e.name, e.flops) for e in prof.events if e.phase == "forward"]
    assert fwd[:3] == [("MatMul", 2 * 7 * 5 * 3), ("ReLU", 7 * 3), ("Summation", 7 * 3)]
    bwd = {e.name for e in prof.events if e.phase == "backward"}
    assert "MatMul" in bwd  # the adjoints of a matmul are matmuls, recorded as backward
    mm = next(e for e in prof.events if e.name == "MatMul")
    assert mm.bytes == 4 * (7 * 5 + 5 * 3 + 7 * 3) and mm.shapes == ((7, 5), (5, 3))
    assert all(e.dur_ns > 0 for e in prof.events)


def test_conv_flops_and_views_move_no_bytes():
    x = ndl.Tensor(np.random.randn(2, 6, 6, 4).astype(np.float32))
    w = ndl.Tensor(np.random.randn(3, 3, 2, 8).astype(np.float32))
    with profiler.profile() as prof:
        out = ops.conv(x, w, stride=1, padding=1, groups=2)
        out.reshape((2, 36, 8))
    conv = next(e for e in prof.events if e.name == "Conv")
    assert conv.flops == 2 * (2 * 6 * 6 * 8) * 3 * 3 * 2  # 2 * outputs * taps * channels per group
    reshape = next(e for e in prof.events if e.name == "Reshape")
    assert reshape.bytes == 0 and reshape.flops == 0


@pytest.mark.skipif(ndl.backend_selection.BACKEND != "nd", reason="NDArray compacts")
def test_hidden_copies_are_attributed_to_the_op():
    x = T(16, 32, requires_grad=False)
    with profiler.profile() as prof:
        x.transpose().reshape((512,))  # a transposed view cannot be reshaped without a copy
    reshape = next(e for e in prof.events if e.name == "Reshape")
    assert reshape.copies == 1 and reshape.copy_bytes == 16 * 32 * 4


def test_table_and_chrome_trace(tmp_path):
    np.random.seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    X, y = T(32, 8, requires_grad=False), ndl.Tensor(np.random.randint(0, 4, 32))
    with profiler.profile() as prof:
        nn.SoftmaxLoss()(model(X), y).backward()
    text = prof.table(sort_by="time", peak=PEAK)
    assert "MatMul" in text and "forward" in text and "backward" in text and "%peak" in text
    rows = prof.key_averages()
    assert sum(r["calls"] for r in rows) == len(prof.events)
    by_calls = prof.table(sort_by="calls", row_limit=2, peak=PEAK).splitlines()
    assert len(by_calls) == 2 + 2 + 1  # header, rule, two rows, summary
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="speed", peak=PEAK)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(path)
    trace = json.loads(path.read_text())["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert len(spans) == len(prof.events)
    assert {e["cat"] for e in spans} == {"forward", "backward"}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    assert [e["ts"] for e in spans] == sorted(e["ts"] for e in spans)


def test_optimizer_steps_are_events(tmp_path):
    """Each step() is one "optimizer" event (a subclass calling its base's step too), after
    the backward ops; the trace puts it on its own row; no event when the profiler is off."""
    np.random.seed(2)
    model = nn.Linear(6, 3)

    class LoggedSGD(ndl.optim.SGD):
        def step(self):
            super().step()

    X = T(5, 6, requires_grad=False)
    for opt in (ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), ndl.optim.Adam(model.parameters()),
                LoggedSGD(model.parameters(), lr=0.1)):
        with profiler.profile() as prof:
            for _ in range(2):
                opt.reset_grad()
                model(X).sum().backward()
                opt.step()
        steps = [e for e in prof.events if e.phase == "optimizer"]
        assert [e.name for e in steps] == [f"{type(opt).__name__}.step"] * 2
        assert all(e.dur_ns > 0 for e in steps)
        last_backward = max(e.start_ns for e in prof.events if e.phase == "backward")
        assert steps[-1].start_ns > last_backward
        assert f"{type(opt).__name__}.step" in prof.table(peak=PEAK)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(path)
    rows = {e["cat"]: e["tid"] for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"}
    assert rows == {"forward": 0, "backward": 1, "optimizer": 2}
    opt.step()  # off: runs, records nothing anywhere
    assert len([e for e in prof.events if e.phase == "optimizer"]) == 2


def test_roofline_percent():
    # 1 GFLOP in 0.1 s at intensity 100 FLOP/byte: compute-bound on (1e11, 1e10) -> 10%
    assert profiler._roofline_percent(1e9, 1e7, 0.1, *PEAK) == "10"
    # pure data movement: 1 GB in 0.5 s against 10 GB/s -> 20%
    assert profiler._roofline_percent(0, 1e9, 0.5, *PEAK) == "20"
    assert profiler._roofline_percent(0, 0, 0.5, *PEAK) == "-"


def test_off_leaves_no_hooks_and_profiles_do_not_nest():
    from needle.ops import array_backend as B

    with profiler.profile():
        with pytest.raises(RuntimeError, match="already recording"):
            with profiler.profile():
                pass
    assert autograd._compute is B.compute and profiler.active() is None
    with pytest.raises(ZeroDivisionError):
        with profiler.profile():
            1 / 0
    assert autograd._compute is B.compute and profiler.active() is None


def test_measured_peak_is_positive():
    flops, bandwidth = profiler.measure_peak()
    assert flops > 1e8 and bandwidth > 1e8


def test_conv_adjoints_count_the_forward_multiply_adds():
    x = ndl.Tensor(np.random.randn(2, 6, 6, 4).astype(np.float32))
    w = ndl.Tensor(np.random.randn(3, 3, 4, 8).astype(np.float32))
    with profiler.profile() as prof:
        ops.conv(x, w, stride=1, padding=1).sum().backward()
    forward = next(e.flops for e in prof.events if e.name == "Conv")
    assert forward == 2 * (2 * 6 * 6 * 8) * 3 * 3 * 4
    adjoints = {e.name: e.flops for e in prof.events if e.phase == "backward" and e.name.startswith("Conv")}
    # dX and dW each cost what the forward costs (as Conv nodes or as dedicated adjoint ops)
    assert adjoints and all(f == forward for f in adjoints.values()), adjoints
