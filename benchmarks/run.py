"""needle CPU benchmarks: needle vs numpy (OpenBLAS) vs PyTorch, same inputs, one run.

    python benchmarks/run.py            # full run (~3-4 min on 2 cores)
    python benchmarks/run.py --quick    # a short run (~1-2 min)
    python benchmarks/run.py --only gemm,bandwidth --threads 1

Every comparison interleaves the contenders call by call (warm-up first) and
keeps the best time of each (medians for training steps): on a shared machine
a ratio measured inside one run is the only figure that survives the noise.
Ratios are needle throughput / reference throughput (> 1: needle is faster),
except "overhead", which is needle time / PyTorch time (lower is better).

Threads: each thread count runs in its own child process, started with
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set, which sets needle
(``ndarray_backend_cpu.set_num_threads``), PyTorch (``torch.set_num_threads``)
and numpy's OpenBLAS (threadpoolctl, when installed) once: switching PyTorch's
OpenMP team from 1 to 2 threads inside one process made its 2-thread training
steps 20-100x slower on a busy 2-core machine.

Results: a table on stdout, JSON in benchmarks/results/cpu-<date>.json and the
table in the "Latest results" section of benchmarks/README.md.
"""
import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (os.path.join(ROOT, "python"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

SECTIONS = ["gemm", "dtype_gemm", "conv_gemm", "bandwidth", "compact", "conv", "conv_memory", "train", "overhead",
            "memory", "profile"]

# ResNet9 conv layers (Cin, Cout, k, stride) on 32x32 CIFAR input, "same" padding k // 2.
RESNET9_CONVS = [(3, 16, 7, 4), (16, 32, 3, 2), (32, 32, 3, 1), (32, 32, 3, 1),
                 (32, 64, 3, 2), (64, 128, 3, 2), (128, 128, 3, 1), (128, 128, 3, 1)]


def resnet9_layer_shapes(batch=128):
    """(name, N, H, Cin, Cout, k, stride, M, K, Ncols) per conv layer, with im2col GEMM dims."""
    out, h = [], 32
    for cin, cout, k, s in RESNET9_CONVS:
        ho = (h + 2 * (k // 2) - k) // s + 1
        out.append((f"conv{cin}-{cout}k{k}s{s}@{h}", batch, h, cin, cout, k, s, batch * ho * ho, k * k * cin, cout))
        h = ho
    return out


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------
def load_cpu_backend():
    """The compiled CPU module, loaded by path (works even if `import needle` fails)."""
    so = sorted(glob.glob(os.path.join(ROOT, "python", "needle", "backend_ndarray", "ndarray_backend_cpu*.so")))
    if not so:
        sys.exit("ndarray_backend_cpu is not built: run `make lib` first")
    spec = importlib.util.spec_from_file_location("ndarray_backend_cpu", so[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def try_import(name):
    try:
        return __import__(name), None
    except Exception as e:  # a missing or broken optional dependency
        return None, f"{type(e).__name__}: {e}"


class Threads:
    """Sets the thread count of every contender at once."""

    def __init__(self, cpu, torch):
        self.cpu, self.torch = cpu, torch
        self.limiter = None
        tpc, _ = try_import("threadpoolctl")
        self.threadpoolctl = tpc

    def set(self, n):
        self.cpu.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)
        if self.threadpoolctl is not None:
            if self.limiter is not None:
                self.limiter.restore_original_limits()
            self.limiter = self.threadpoolctl.threadpool_limits(limits=n, user_api="blas")


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def race(fns, min_time=0.3, min_reps=5, max_reps=200, stat="min", settle=0.0, block=3):
    """Interleaved timing of {name: callable}; returns {name: seconds} (best or median).

    With ``settle`` > 0 each contender runs a block of ``block`` calls after
    ``settle`` seconds of idle time: OpenBLAS and OpenMP workers keep spinning
    for ~0.1 s after a call, and call-by-call interleaving would make the next
    contender share its cores with them.
    """
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    start = time.perf_counter()
    reps = 0
    while reps < min_reps or (time.perf_counter() - start < min_time * len(fns) and reps < max_reps):
        for k, f in fns.items():
            if settle:
                time.sleep(settle)
            for _ in range(block if settle else 1):
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        reps += 1
    pick = min if stat == "min" else statistics.median
    return {k: pick(v) for k, v in times.items()}


def row(results, section, name, threads, unit, values, ratio_of="numpy", note=""):
    """values: {contender: throughput in unit}; ratio = needle / reference."""
    entry = {"section": section, "name": name, "threads": threads, "unit": unit, "values": values, "note": note}
    for ref in ("numpy", "torch", "copy", "f32"):
        if ref in values and values.get("needle") and values[ref]:
            entry[f"ratio_vs_{ref}"] = values["needle"] / values[ref]
    results.append(entry)
    vals = "  ".join(f"{k} {v:8.2f}" for k, v in values.items())
    ratios = "  ".join(f"x{k[9:]} {v:5.2f}" for k, v in entry.items() if k.startswith("ratio_vs_"))
    print(f"  [{threads}t] {name:28s} {unit:7s} {vals}   {ratios} {note}", flush=True)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------
def to_dev(cpu, x, dtype="float32"):
    a = cpu.Array(x.size, dtype)
    cpu.from_numpy(np.ascontiguousarray(x).ravel() if x.dtype != np.float64 or dtype == "float64" else
                   np.ascontiguousarray(x, dtype=np.float32).ravel(), a)
    return a


def gemm_race(cpu, torch, results, section, name, threads, m, k, n, quick):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, n), dtype=np.float32)
    C = np.empty((m, n), np.float32)
    a, b, c = to_dev(cpu, A), to_dev(cpu, B), cpu.Array(m * n)
    fns = {"needle": lambda: cpu.matmul(a, b, c, m, k, n), "numpy": lambda: np.matmul(A, B, out=C)}
    if torch is not None:
        tA, tB, tC = torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C.copy())
        fns["torch"] = lambda: torch.mm(tA, tB, out=tC)
    flops = 2.0 * m * n * k
    t = race(fns, min_time=0.1 if quick else 0.3)
    row(results, section, name, threads, "GFLOP/s", {kk: flops / v / 1e9 for kk, v in t.items()})
    if threads > 1 and section == "gemm":
        # Also timed in settled blocks (see race): call-by-call interleaving
        # lets the previous library's spinning workers hold a core.
        t = race(fns, min_time=0.1 if quick else 0.3, settle=0.15)
        row(results, section, name + " settled", threads, "GFLOP/s", {kk: flops / v / 1e9 for kk, v in t.items()})


def bench_gemm(ctx, threads):
    sizes = [64, 256, 1024] if ctx.quick else [64, 128, 256, 512, 1024, 2048]
    for s in sizes:
        gemm_race(ctx.cpu, ctx.torch, ctx.results, "gemm", f"sgemm {s}^3", threads, s, s, s, ctx.quick)


def bench_dtype_gemm(ctx, threads):
    """needle's GEMM in float64 (against numpy's dgemm), float16 and bfloat16 (against
    needle's own float32 GEMM, "f32", and PyTorch's CPU bfloat16 matmul; its float16
    matmul runs at ~1 GFLOP/s, too slow to be a peer)."""
    import ml_dtypes

    cpu, torch = ctx.cpu, ctx.torch
    np_types = {"float64": np.float64, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
    sizes = [256, 1024] if ctx.quick else [256, 1024, 2048]
    rng = np.random.default_rng(0)
    for dtype, np_type in np_types.items():
        for s in sizes:
            A32 = rng.standard_normal((s, s), dtype=np.float32)
            B32 = rng.standard_normal((s, s), dtype=np.float32)
            A, B = A32.astype(np_type), B32.astype(np_type)
            a, b, c = to_dev(cpu, A, dtype), to_dev(cpu, B, dtype), cpu.Array(s * s, dtype)
            a32, b32, c32 = to_dev(cpu, A32), to_dev(cpu, B32), cpu.Array(s * s)
            fns = {"needle": lambda: cpu.matmul(a, b, c, s, s, s), "f32": lambda: cpu.matmul(a32, b32, c32, s, s, s)}
            if dtype == "float64":
                C = np.empty((s, s))
                fns["numpy"] = lambda: np.matmul(A, B, out=C)
            if torch is not None and dtype != "float16":  # PyTorch's CPU float16 matmul is a slow reference loop
                tdt = getattr(torch, dtype)
                tA, tB = torch.from_numpy(A32).to(tdt), torch.from_numpy(B32).to(tdt)
                fns["torch"] = lambda: torch.mm(tA, tB)
            t = race(fns, min_time=0.1 if ctx.quick else 0.3)
            row(ctx.results, "dtype_gemm", f"{dtype} gemm {s}^3", threads, "GFLOP/s",
                {k: 2.0 * s ** 3 / v / 1e9 for k, v in t.items()})


def bench_conv_gemm(ctx, threads):
    for name, *_, m, k, n in resnet9_layer_shapes():
        gemm_race(ctx.cpu, ctx.torch, ctx.results, "conv_gemm", f"{m}x{k}x{n} {name.split('@')[0]}", threads, m, k,
                  n, ctx.quick)


def bench_bandwidth(ctx, threads):
    cpu, torch = ctx.cpu, ctx.torch
    n = 1 << 22 if ctx.quick else 1 << 24
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    Z = np.empty_like(X)
    x, y, z, s = to_dev(cpu, X), to_dev(cpu, Y), cpu.Array(n), cpu.Array(1)
    mt = 0.1 if ctx.quick else 0.3
    tc = race({"copy": lambda: np.copyto(Z, X)}, min_time=mt)["copy"]
    copy_bw = 8.0 * n / tc / 1e9
    fns = {"needle": lambda: cpu.ewise_add(x, y, z), "numpy": lambda: np.add(X, Y, out=Z),
           "copy": lambda: np.copyto(Z, X)}
    if torch is not None:
        tX, tY, tZ = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(Z.copy())
        fns["torch"] = lambda: torch.add(tX, tY, out=tZ)
    t = race(fns, min_time=mt)
    vals = {k: (8.0 if k == "copy" else 12.0) * n / v / 1e9 for k, v in t.items()}
    row(ctx.results, "bandwidth", f"ewise_add {n >> 20}M", threads, "GB/s", vals,
        note=f"(copy = numpy copyto, {copy_bw:.1f} GB/s alone)")
    fns = {"needle": lambda: cpu.reduce_sum(x, s, n), "numpy": lambda: X.sum(), "copy": lambda: np.copyto(Z, X)}
    if torch is not None:
        fns["torch"] = lambda: tX.sum()
    t = race(fns, min_time=mt)
    vals = {k: (8.0 if k == "copy" else 4.0) * n / v / 1e9 for k, v in t.items()}
    row(ctx.results, "bandwidth", f"reduce_sum {n >> 20}M", threads, "GB/s", vals)


def bench_compact(ctx, threads):
    cpu, torch = ctx.cpu, ctx.torch
    n = 1024 if ctx.quick else 2048
    S = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    D = np.empty_like(S)
    s, d = to_dev(cpu, S), cpu.Array(n * n)
    fns = {"needle": lambda: cpu.compact(s, d, [n, n], [1, n], 0), "numpy": lambda: np.copyto(D, S.T)}
    if torch is not None:
        tS, tD = torch.from_numpy(S), torch.from_numpy(D.copy())
        fns["torch"] = lambda: tD.copy_(tS.t())
    t = race(fns, min_time=0.1 if ctx.quick else 0.3)
    row(ctx.results, "compact", f"transpose {n}^2", threads, "GB/s", {k: 8.0 * n * n / v / 1e9 for k, v in t.items()})
    P = S.reshape(n // 8, 8, n)
    fns = {"needle": lambda: cpu.compact(s, d, [n, n // 8, 8], [1, 8 * n, n], 0),
           "numpy": lambda: np.copyto(D.reshape(n, n // 8, 8), P.transpose(2, 0, 1))}
    t = race(fns, min_time=0.1 if ctx.quick else 0.3)
    row(ctx.results, "compact", f"permute3d {n}^2 (2,0,1)", threads, "GB/s",
        {k: 8.0 * n * n / v / 1e9 for k, v in t.items()})


def needle_modules():
    import needle as ndl  # noqa: F401  (errors are reported by the caller)
    return ndl


def bench_conv(ctx, threads):
    ndl, torch = ctx.ndl, ctx.torch
    if ndl is None or torch is None:
        print(f"  skipped: needs needle and torch ({ctx.ndl_error or ctx.torch_error})")
        return
    rng = np.random.default_rng(0)
    layers = resnet9_layer_shapes(32 if ctx.quick else 128)
    for name, n, h, cin, cout, k, s, *_ in layers:
        X = rng.standard_normal((n, h, h, cin), dtype=np.float32)
        W = rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.1
        x = ndl.Tensor(X, device=ndl.cpu(), requires_grad=True)
        w = ndl.Tensor(W, device=ndl.cpu(), requires_grad=True)
        tx = torch.tensor(X.transpose(0, 3, 1, 2).copy(), requires_grad=True)
        tw = torch.tensor(W.transpose(3, 2, 0, 1).copy(), requires_grad=True)
        pad = k // 2

        def n_fwd():
            ndl.ops.conv(x, w, stride=s, padding=pad).realize_cached_data()

        def t_fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, stride=s, padding=pad)

        def n_bwd():
            ndl.ops.conv(x, w, stride=s, padding=pad).backward()
            x.grad = w.grad = None

        def t_bwd():
            y = torch.nn.functional.conv2d(tx, tw, stride=s, padding=pad)
            y.backward(torch.ones_like(y))
            tx.grad = tw.grad = None

        mt = 0.1 if ctx.quick else 0.25
        t = race({"needle": n_fwd, "torch": t_fwd}, min_time=mt, min_reps=3)
        row(ctx.results, "conv", f"fwd {name}", threads, "iter/s", {kk: 1.0 / v for kk, v in t.items()})
        t = race({"needle": n_bwd, "torch": t_bwd}, min_time=mt, min_reps=3)
        row(ctx.results, "conv", f"fwd+bwd {name}", threads, "iter/s", {kk: 1.0 / v for kk, v in t.items()})


# ---- extra memory of one conv forward + backward ----------------------------------------
# (name, N, H, Cin, Cout, k, stride): the ResNet9 layers at batch 128 and the large layer of the
# issue that motivated the implicit GEMM (its im2col matrix alone is 288 MiB).
def conv_memory_cases(quick):
    cases = [(name, n, h, cin, cout, k, s) for name, n, h, cin, cout, k, s, *_ in resnet9_layer_shapes(
        32 if quick else 128)]
    cases = list(dict.fromkeys(cases))  # the repeated layers once
    cases.append(("conv64-64k3s1@64", 8 if quick else 32, 64, 64, 64, 3, 1))
    return cases


def bench_conv_memory(ctx, threads):
    """Peak RSS growth of one conv forward + backward (x and w both need gradients), in a
    fresh child process per framework and layer: libraries are warmed up on a 2-image batch,
    the peak is reset (/proc/self/clear_refs), then the full batch runs. It counts what the
    step allocates beyond its inputs: output, gradients and every temporary."""
    if not os.path.exists("/proc/self/clear_refs"):
        print("  skipped: needs Linux /proc/self/clear_refs")
        return
    for case in conv_memory_cases(ctx.quick):
        name, n = case[0], case[1]
        out = {}
        for who in ("needle", "torch"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child-conv-memory", who, "--threads", str(threads),
                   "--conv-case", json.dumps(case[1:])]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("CONVMEM ")]
            if not line:
                print(f"  {name} {who}: failed ({(r.stderr or r.stdout).strip().splitlines()[-1:]})")
                break
            out[who] = float(line[-1].split()[1])
        if len(out) < 2:
            continue
        # Below a MiB the growth is allocator noise (freed warm-up chunks, page rounding): no ratio.
        small = max(out.values()) < 1.0
        note = "(both under 1 MiB)" if small else f"(needle/torch memory {out['needle'] / out['torch']:.2f}x)"
        row(ctx.results, "conv_memory", f"fwd+bwd {name} b{n}", threads, "MiB", out, note=note)
        entry = ctx.results[-1]
        if not small:
            entry["memory_x"] = out["needle"] / out["torch"]
        for key in [k for k in entry if k.startswith("ratio_vs_")]:  # MiB: lower is better
            del entry[key]


def child_conv_memory(who, case):
    n, h, cin, cout, k, s = case
    pad = k // 2

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))

    rng = np.random.default_rng(0)
    if who == "needle":
        import needle as ndl

        def make(batch):
            x = ndl.Tensor(rng.standard_normal((batch, h, h, cin), dtype=np.float32), device=ndl.cpu())
            w = ndl.Tensor(rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.1, device=ndl.cpu())
            return lambda: ndl.ops.conv(x, w, stride=s, padding=pad).backward()
    else:
        import torch

        def make(batch):
            x = torch.tensor(rng.standard_normal((batch, cin, h, h), dtype=np.float32), requires_grad=True)
            w = torch.tensor(rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.1, requires_grad=True)

            def step():
                y = torch.nn.functional.conv2d(x, w, stride=s, padding=pad)
                y.backward(torch.ones_like(y))
            return step
    make(2)()  # warm-up: thread pools, library state
    step = make(n)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = status_kib("VmRSS")
    step()
    print(f"CONVMEM {(status_kib('VmHWM') - base) / 1024.0:.2f}")


# ---- training steps ---------------------------------------------------------------
def torch_residual(torch):
    """PyTorch twin of needle's nn.Residual: f(x) + x."""

    class Res(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x) + x

    return Res


def torch_resnet9(torch):
    nn = torch.nn
    Res = torch_residual(torch)

    def cbn(a, b, k, s):
        return nn.Sequential(nn.Conv2d(a, b, k, s, k // 2), nn.BatchNorm2d(b), nn.ReLU())

    return nn.Sequential(cbn(3, 16, 7, 4), cbn(16, 32, 3, 2), Res(nn.Sequential(cbn(32, 32, 3, 1), cbn(32, 32, 3, 1))),
                         cbn(32, 64, 3, 2), cbn(64, 128, 3, 2),
                         Res(nn.Sequential(cbn(128, 128, 3, 1), cbn(128, 128, 3, 1))), nn.Flatten(),
                         nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def torch_mlp_resnet(torch, dim=784, hidden=100, blocks=3, classes=10, drop=0.1):
    nn = torch.nn
    Res = torch_residual(torch)

    def block(d, h):
        return nn.Sequential(Res(nn.Sequential(nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(drop),
                                               nn.Linear(h, d), nn.BatchNorm1d(d))), nn.ReLU())

    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), *[block(hidden, hidden // 2) for _ in range(blocks)],
                         nn.Linear(hidden, classes))


class TorchLM:
    def __init__(self, torch, vocab, emb, hidden):
        nn = torch.nn
        self.emb, self.lstm, self.lin = nn.Embedding(vocab, emb), nn.LSTM(emb, hidden), nn.Linear(hidden, vocab)

    def parameters(self):
        return [*self.emb.parameters(), *self.lstm.parameters(), *self.lin.parameters()]

    def __call__(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.lin(out.reshape(-1, out.shape[-1]))


def make_steps(ctx, which, sides=("needle", "torch")):
    """(needle_step, torch_step) closures for one workload; each runs one training step.
    A side not in ``sides`` is not built (None), so a memory child holds one model only."""
    ndl, torch = ctx.ndl, ctx.torch
    rng = np.random.default_rng(0)
    if which == "ResNet9 b128":
        from apps.models import ResNet9
        bs = 32 if ctx.quick else 128
        X = rng.standard_normal((bs, 3, 32, 32), dtype=np.float32)
        Y = rng.integers(0, 10, bs)
        model = ResNet9(device=ndl.cpu()) if "needle" in sides else None
        tmodel = torch_resnet9(torch) if "torch" in sides else None
        lr = 1e-3
    elif which == "MLPResNet b100":
        from apps.mlp_resnet import MLPResNet
        bs = 100
        X = rng.standard_normal((bs, 784), dtype=np.float32)
        Y = rng.integers(0, 10, bs)
        model = MLPResNet(784, 100) if "needle" in sides else None
        tmodel = torch_mlp_resnet(torch) if "torch" in sides else None
        lr = 1e-3
    else:  # LSTM LM
        from apps.models import LanguageModel
        seq, bs, vocab, hidden = 20, 16, 10000, 64
        X = rng.integers(0, vocab, (seq, bs)).astype(np.float32)
        Y = rng.integers(0, vocab, seq * bs)
        model = LanguageModel(hidden, vocab, hidden, seq_model="lstm", device=ndl.cpu()) if "needle" in sides else None
        tmodel = TorchLM(torch, vocab, hidden, hidden) if "torch" in sides else None
        lr = 1e-3
    n_step = t_step = None
    if model is not None:
        opt = ndl.optim.Adam(model.parameters(), lr=lr)
        loss_fn = ndl.nn.SoftmaxLoss()
        model.train()
        # A batch as needle's DataLoader yields it (and as PyTorch's is): no gradient.
        x = ndl.Tensor(X, device=ndl.cpu(), requires_grad=False)
        y = ndl.Tensor(Y.astype(np.float32), device=ndl.cpu(), requires_grad=False)

        def n_step():
            opt.reset_grad()
            out = model(x)
            if isinstance(out, tuple):
                out = out[0]
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            loss.numpy()

    if tmodel is not None:
        if hasattr(tmodel, "train"):
            tmodel.train()
        topt = torch.optim.Adam(list(tmodel.parameters()), lr=lr)
        tx = torch.from_numpy(X) if which != "LSTM LM" else torch.from_numpy(X.astype(np.int64))
        ty = torch.from_numpy(Y.astype(np.int64))

        def t_step():
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tmodel(tx), ty)
            loss.backward()
            topt.step()
            loss.item()

    return n_step, t_step


TRAIN_WORKLOADS = ["ResNet9 b128", "MLPResNet b100", "LSTM LM"]


def bench_train(ctx, threads):
    if ctx.ndl is None or ctx.torch is None:
        print(f"  skipped: needs needle and torch ({ctx.ndl_error or ctx.torch_error})")
        return
    for which in TRAIN_WORKLOADS:
        try:
            n_step, t_step = make_steps(ctx, which)
        except Exception as e:
            print(f"  {which}: skipped ({type(e).__name__}: {e})")
            continue
        reps = 3 if ctx.quick else 8
        t = race({"needle": n_step, "torch": t_step}, min_time=0.5 if ctx.quick else 2.0, min_reps=reps,
                 max_reps=50, stat="median")
        name = which.replace("b128", "b32") if ctx.quick and which.startswith("ResNet9") else which
        row(ctx.results, "train", f"step {name}", threads, "step/s", {k: 1.0 / v for k, v in t.items()},
            note=f"(ms: needle {1e3 * t['needle']:.1f}, torch {1e3 * t['torch']:.1f})")


def bench_overhead(ctx, threads):
    ndl, torch = ctx.ndl, ctx.torch
    if ndl is None or torch is None:
        print(f"  skipped: needs needle and torch ({ctx.ndl_error or ctx.torch_error})")
        return
    # The same work on both sides: only w requires a gradient (needle's Tensor defaults to
    # requires_grad=True, the course's rule; PyTorch's to False).
    a = ndl.Tensor(np.ones(1, np.float32), device=ndl.cpu(), requires_grad=False)
    b = ndl.Tensor(np.ones(1, np.float32), device=ndl.cpu(), requires_grad=False)
    ta, tb = torch.ones(1), torch.ones(1)
    w = ndl.Tensor(np.ones((4, 4), np.float32), device=ndl.cpu(), requires_grad=True)
    v = ndl.Tensor(np.ones((2, 4), np.float32), device=ndl.cpu(), requires_grad=False)
    tw = torch.ones(4, 4, requires_grad=True)
    tv = torch.ones(2, 4)

    def n_add():
        (a + b).realize_cached_data()

    def t_add():
        ta + tb

    def n_fb():
        ndl.ops.summation(ndl.ops.relu(v @ w)).backward()
        w.grad = None

    def t_fb():
        torch.relu(tv @ tw).sum().backward()
        tw.grad = None

    t = race({"needle": n_add, "torch": t_add}, min_time=0.2, min_reps=200, max_reps=20000)
    row(ctx.results, "overhead", "add 1-elem", threads, "us", {k: v * 1e6 for k, v in t.items()},
        note=f"(needle/torch time {t['needle'] / t['torch']:.2f}x)")
    ctx.results[-1]["overhead_x"] = t["needle"] / t["torch"]
    t = race({"needle": n_fb, "torch": t_fb}, min_time=0.2, min_reps=100, max_reps=5000)
    row(ctx.results, "overhead", "tiny matmul+relu+sum fwd+bwd", threads, "us", {k: v * 1e6 for k, v in t.items()},
        note=f"(needle/torch time {t['needle'] / t['torch']:.2f}x)")
    ctx.results[-1]["overhead_x"] = t["needle"] / t["torch"]
    for r in ctx.results[-2:]:  # "us" is a time: drop throughput-style ratios
        for key in [k for k in r if k.startswith("ratio_vs_")]:
            del r[key]


def bench_profile(ctx, threads):
    """needle.profiler's view of one ResNet9 step (the train section's step, after warm-up)."""
    if ctx.ndl is None:
        print(f"  skipped: needs needle ({ctx.ndl_error})")
        return
    n_step, _ = make_steps(ctx, "ResNet9 b128", sides=("needle",))
    for _ in range(2):
        n_step()
    time.sleep(0.5)  # PyTorch's OpenMP workers from earlier sections spin for a while after their last call
    steps = 3
    start = time.perf_counter()
    with ctx.ndl.profiler.profile() as prof:
        for _ in range(steps):
            n_step()
    step_ms = (time.perf_counter() - start) / steps * 1e3
    table = prof.table(sort_by="time", row_limit=12)
    print(f"  [{threads}t] {steps} profiled steps, {step_ms:.1f} ms per step with the profiler on\n" + table)
    ctx.profiles.append({"workload": "ResNet9 b32" if ctx.quick else "ResNet9 b128", "threads": threads,
                         "steps": steps, "step_ms": round(step_ms, 2), "table": table,
                         "ops": prof.key_averages()})


def bench_memory(ctx, threads):
    """Peak RSS (VmHWM) of a process that builds ResNet9 and runs 3 training steps, one per framework."""
    out = {}
    for who in ("needle", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child-memory", who, "--threads", str(threads)]
        if ctx.quick:
            cmd.append("--quick")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("MEMORY ")]
        if not line:
            print(f"  {who}: failed ({(r.stderr or r.stdout).strip().splitlines()[-1:]})")
            return
        base, peak = map(float, line[-1].split()[1:3])
        out[who] = (base, peak)
    vals = {k: v[1] for k, v in out.items()}
    row(ctx.results, "memory", "ResNet9 step peak RSS", threads, "MiB", vals,
        note="(step only: " + ", ".join(f"{k} +{v[1] - v[0]:.0f}" for k, v in out.items()) + " MiB)")
    for key in [k for k in ctx.results[-1] if k.startswith("ratio_vs_")]:
        del ctx.results[-1][key]


def child_memory(who, quick):
    def status_mib(field):
        # /proc, not ru_maxrss: the latter survives exec, so a child would
        # report its parent's peak.
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1]) / 1024.0
        return 0.0

    torch, _ = try_import("torch")
    ctx = Ctx(quick=quick)
    ctx.torch = torch
    ctx.ndl, ctx.ndl_error = try_import("needle")
    n_step, t_step = make_steps(ctx, "ResNet9 b128", sides=(who,))
    step = n_step if who == "needle" else t_step
    base = status_mib("VmRSS")
    for _ in range(3):
        step()
    peak = status_mib("VmHWM")
    print(f"MEMORY {base:.1f} {peak:.1f}")


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
class Ctx:
    def __init__(self, quick):
        self.quick = quick
        self.results = []
        self.profiles = []  # needle.profiler tables (the profile section)
        self.cpu = None
        self.torch = self.ndl = None
        self.torch_error = self.ndl_error = None


RUNNERS = {"gemm": bench_gemm, "dtype_gemm": bench_dtype_gemm, "conv_gemm": bench_conv_gemm, "bandwidth": bench_bandwidth, "compact": bench_compact,
           "conv": bench_conv, "conv_memory": bench_conv_memory, "train": bench_train, "overhead": bench_overhead, "memory": bench_memory,
           "profile": bench_profile}


def machine_info(cpu):
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "needle_kernel": cpu.sgemm_kernel_name()}


def format_table(results, info):
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores; needle GEMM kernel: {info['needle_kernel']}; "
             f"numpy {info['numpy']}" + (f", torch {info['torch']}" if info.get("torch") else "") +
             f"; numpy threads via {info['numpy_threads_via']}. Date: {info['date']}.", "",
             "| section | benchmark | threads | unit | needle | numpy | torch | needle/numpy | needle/torch | "
             "needle/copy | needle/needle-f32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt="{:.2f}"):
        return "" if v is None else fmt.format(v)

    for r in results:
        v = r["values"]
        ratio_t = r.get("ratio_vs_torch")
        if r["section"] == "overhead":
            ratio_t = None
        lines.append(f"| {r['section']} | {r['name']} | {r['threads']} | {r['unit']} | {f(v.get('needle'), '{:.1f}')} | "
                     f"{f(v.get('numpy'), '{:.1f}')} | {f(v.get('torch'), '{:.1f}')} | {f(r.get('ratio_vs_numpy'))} | "
                     f"{_torch_column(r, ratio_t, f)} | "
                     f"{f(r.get('ratio_vs_copy'))} | {f(r.get('ratio_vs_f32'))} |")
    return "\n".join(lines)


def format_profiles(profiles):
    """The profile section's tables, one per thread count, as text blocks after the table."""
    out = []
    for p in profiles:
        out += ["", f"needle.profiler, {p['workload']} step, {p['threads']} thread(s), {p['steps']} steps "
                f"({p['step_ms']:.1f} ms per step with the profiler on):", "", "```", p["table"], "```"]
    return "\n".join(out)


def _torch_column(r, ratio_t, f):
    """needle/torch: a throughput ratio, or 'time x' / 'mem x' (needle's time / memory over torch's)."""
    if "overhead_x" in r:
        return "time x" + f(r["overhead_x"])
    if "memory_x" in r:
        return "mem x" + f(r["memory_x"])
    if r["section"] == "conv_memory":
        return "both < 1 MiB"
    return f(ratio_t)


def update_readme(table):
    path = os.path.join(HERE, "README.md")
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(text)


def run_in_children(args):
    """One child process per thread count, with OpenBLAS's and OpenMP's env set (see the module doc):
    (result rows, profiler tables)."""
    results, profiles = [], []
    for n in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
        out = os.path.join(HERE, "results", f".child-{n}.json.tmp")
        cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(n), "--only", ",".join(args.only),
               "--json-out", out, "--no-readme"] + (["--quick"] if args.quick else [])
        subprocess.run(cmd, env=env, check=True)
        with open(out) as fh:
            child = json.load(fh)
        results += child["results"]
        profiles += child.get("profiles", [])
        os.remove(out)
    return results, profiles


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--json-out", default=None, help="JSON path (default benchmarks/results/cpu-<date>.json)")
    ap.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-conv-memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--conv-case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")

    if args.child_conv_memory:
        from needle.backend_ndarray import ndarray_backend_cpu as cpu
        cpu.set_num_threads(args.threads[0])
        if args.child_conv_memory == "torch":
            import torch
            torch.set_num_threads(args.threads[0])
        child_conv_memory(args.child_conv_memory, json.loads(args.conv_case))
        return

    if args.child_memory:
        from needle.backend_ndarray import ndarray_backend_cpu as cpu
        cpu.set_num_threads(args.threads[0])
        torch, _ = try_import("torch")
        if torch is not None:
            torch.set_num_threads(args.threads[0])
        child_memory(args.child_memory, args.quick)
        return

    t0 = time.time()
    ctx = Ctx(args.quick)
    ctx.torch, ctx.torch_error = try_import("torch")
    if ctx.torch is None:
        print(f"PyTorch not available ({ctx.torch_error}): torch columns are skipped")
    # The package's backend module when needle imports (one module instance:
    # pybind11 refuses to load the same extension twice), else the .so by path.
    try:
        ctx.ndl = needle_modules()
        from needle.backend_ndarray import ndarray_backend_cpu as pkg_cpu
        ctx.cpu = pkg_cpu
    except Exception as e:
        ctx.ndl, ctx.ndl_error = None, f"import needle failed: {type(e).__name__}: {e}"
        print(ctx.ndl_error + ": conv/train/overhead sections are skipped")
        ctx.cpu = load_cpu_backend()
    threads = Threads(ctx.cpu, ctx.torch)
    info = machine_info(ctx.cpu)
    info["date"] = datetime.date.today().isoformat()
    info["torch"] = getattr(ctx.torch, "__version__", None)
    info["numpy_threads_via"] = "threadpoolctl" if threads.threadpoolctl else "child processes (OPENBLAS_NUM_THREADS)"
    print(f"needle CPU benchmarks on {info['cpu']} ({info['cores']} cores), kernel {info['needle_kernel']}, "
          f"numpy threads via {info['numpy_threads_via']}")

    if len(args.threads) > 1 and not args.json_out:
        ctx.results, ctx.profiles = run_in_children(args)
        # Rows by section, then thread count, as a single process would have printed them.
        order = {name: i for i, name in enumerate(SECTIONS)}
        ctx.results.sort(key=lambda r: (order.get(r["section"], len(order)), r["threads"]))
    else:
        for section in args.only:
            print(f"== {section}")
            for n in args.threads:
                threads.set(n)
                try:
                    RUNNERS[section](ctx, n)
                except Exception as e:  # keep the other sections running
                    print(f"  [{n}t] {section} failed: {type(e).__name__}: {e}")
    info["wall_seconds"] = round(time.time() - t0, 1)
    info["quick"] = args.quick
    out = args.json_out or os.path.join(HERE, "results", f"cpu-{info['date']}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"machine": info, "results": ctx.results, "profiles": ctx.profiles}, fh, indent=1)
    table = format_table(ctx.results, info) + format_profiles(ctx.profiles)
    print("\n" + table)
    if not args.no_readme:
        update_readme(table)
    print(f"\nwrote {out} in {info['wall_seconds']} s")


if __name__ == "__main__":
    main()
