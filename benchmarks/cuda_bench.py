"""GPU benchmarks: needle's CUDA backend against PyTorch on the same device, in one run.

    python benchmarks/cuda_bench.py --out cuda_bench.json [--only sgemm] [--budgets sgemm=60]

bandwidth  ewise_add (12 bytes moved per element) and reduce_sum (4) over 64M float32, GB/s,
           against a device-to-device copy (8 bytes per element; PyTorch's copy_, and
           needle's own strided copy `compact` beside it)
sgemm      square float32 matmul 1024, 2048, 4096, 8192, TFLOP/s, against torch.mm with TF32
           off (needle's matmul is exact float32)
bf16_matmul, fp16_matmul
           the same sizes in bfloat16 / float16 with float32 accumulation (needle's tensor-core
           rungs; torch.mm through cuBLAS with PyTorch's default settings, recorded in info)
resnet9    one training step (Adam) of apps.models.ResNet9 at batch 128 against its PyTorch
           twin in benchmarks/run.py, eager, TF32 off for matmuls and convolutions
resnet9_amp
           the same step with the forward pass under autocast in bfloat16 (needle.amp.autocast
           against torch.autocast; no loss scaling is needed for bfloat16)

Timing: device work is asynchronous, so a round queues several calls and then waits for the
device (needle's `synchronize`, `torch.cuda.synchronize`) before the clock is read; the
contenders alternate round by round after a warm-up, and the median round counts. A training
step ends by reading its loss, which waits for the device. Inputs are random (never zeros) and
every result is checked before it is timed: the matmul outputs (poisoned with NaN first)
against a float64 product of the same stored values, ewise_add exactly against PyTorch's,
reduce_sum against a float64 sum.

Each benchmark has a time budget (sizes that would overrun it are cut) and the JSON is
rewritten after each one, so a run stopped from outside keeps what finished. `--device cpu
--tiny` runs the same code on needle's cpu() and PyTorch's CPU at toy sizes (the dry run of
`make gpu-check`).
"""
import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (os.path.join(ROOT, "python"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

# cheap first: a slow ResNet9 can be cut last
PARTS = ["bandwidth", "sgemm", "bf16_matmul", "fp16_matmul", "resnet9", "resnet9_amp"]
BUDGETS = {"bandwidth": 25.0, "sgemm": 60.0, "bf16_matmul": 40.0, "fp16_matmul": 30.0, "resnet9": 60.0,
           "resnet9_amp": 60.0}
MATMUL_SIZES = {"full": [1024, 2048, 4096, 8192], "tiny": [32, 64]}
SIZES = {"full": {"bandwidth": 1 << 26, "resnet9": 128}, "tiny": {"bandwidth": 1 << 16, "resnet9": 4}}
ROUND_SECONDS = {"full": 0.02, "tiny": 0.002}  # queued work per timed round
# Relative error (in norm) of a matmul against float64 that still counts as right: float32
# sums land near 1e-6 here, TF32 (10-bit mantissa) near 3e-4; the halves' one rounding of
# the output near 2e-3 (bfloat16) and 3e-4 (float16).
MATMUL_RTOL = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 2e-3}
MATMUL_DTYPES = {"sgemm": "float32", "bf16_matmul": "bfloat16", "fp16_matmul": "float16"}
AMP_DTYPE = "bfloat16"


def sig(x, digits=4):
    """x to `digits` significant digits (toy sizes give tiny rates that fixed decimals would zero)."""
    return float(f"{x:.{digits}g}")


def load_cpu_benchmarks():
    """benchmarks/run.py by path: the ResNet9 twin lives there (one definition of each model)."""
    spec = importlib.util.spec_from_file_location("needle_cpu_benchmarks", os.path.join(HERE, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bench:
    """needle's device module and the PyTorch device they are compared on, with their waits."""

    def __init__(self, device, tiny):
        import needle as ndl
        import torch

        self.ndl, self.torch, self.tiny = ndl, torch, tiny
        self.size = "tiny" if tiny else "full"
        self.dev = ndl.cuda() if device == "cuda" else ndl.cpu()
        self.dev.require()
        self.mod = self.dev.mod
        self.tdev = torch.device(device)
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("PyTorch sees no CUDA device: nothing to compare against")
            self.tsync = torch.cuda.synchronize
        else:
            self.tsync = lambda: None
        self.nsync = getattr(self.mod, "synchronize", lambda: None)
        # The reference computes in float32 like needle: no TF32 in matmuls or convolutions.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        self.rng = np.random.default_rng(0)
        from needle.backend_ndarray.dtypes import to_numpy_dtype
        self.np_dtype = to_numpy_dtype

    def info(self):
        t = self.torch
        m = t.backends.cuda.matmul
        out = {"needle_device": repr(self.dev), "torch": t.__version__,
               "torch_settings": {"matmul.allow_tf32": m.allow_tf32,
                                  "matmul.allow_bf16_reduced_precision_reduction":
                                      getattr(m, "allow_bf16_reduced_precision_reduction", None),
                                  "matmul.allow_fp16_reduced_precision_reduction":
                                      getattr(m, "allow_fp16_reduced_precision_reduction", None),
                                  "cudnn.allow_tf32": t.backends.cudnn.allow_tf32,
                                  "cudnn.benchmark": t.backends.cudnn.benchmark}}
        if self.tdev.type == "cuda":
            out["torch_device"] = t.cuda.get_device_name(0)
            out["needle_device_name"] = self.mod.device_name()
        if hasattr(self.mod, "get_matmul_kernel"):
            out["needle_matmul_kernel"] = self.mod.matmul_kernel_names()[self.mod.get_matmul_kernel()]
        if hasattr(self.mod, "device_capability"):
            out["needle_device_capability"] = list(self.mod.device_capability())
        return out

    def kernel_used(self):
        """The matmul rung the last needle matmul ran (None where the module does not say)."""
        if not hasattr(self.mod, "matmul_kernel_used"):
            return None
        used = self.mod.matmul_kernel_used()
        return self.mod.matmul_kernel_names()[used] if used >= 0 else None

    def array(self, x, dtype="float32"):
        """A needle device buffer holding the numpy array x converted to dtype."""
        a = self.mod.Array(x.size, dtype)
        self.mod.from_numpy(np.ascontiguousarray(x, dtype=self.np_dtype(dtype)).ravel(), a)
        return a

    def numpy(self, a, shape):
        strides, acc = [], 1
        for d in reversed(shape):
            strides.insert(0, acc)
            acc *= d
        return self.mod.to_numpy(a, list(shape), strides, 0)

    def time_rounds(self, fns, budget, max_rounds=9):
        """{name: (call, wait)} -> {name: median seconds per call}; rounds alternate the names.

        One call of each (after a warm-up one) sizes the rounds: enough calls to queue
        ROUND_SECONDS of work, and as many rounds (3 to max_rounds) as the budget allows."""
        single = {}
        for name, (call, wait) in fns.items():
            call()
            wait()
            t = time.perf_counter()
            call()
            wait()
            single[name] = max(time.perf_counter() - t, 1e-7)
        calls = {k: int(min(max(ROUND_SECONDS[self.size] / v, 1), 1000)) for k, v in single.items()}
        per_round = sum(single[k] * calls[k] for k in fns)
        rounds = int(min(max(budget / max(per_round, 1e-9), 3), max_rounds))
        samples = {k: [] for k in fns}
        for _ in range(rounds):
            for name, (call, wait) in fns.items():
                wait()
                t = time.perf_counter()
                for _ in range(calls[name]):
                    call()
                wait()
                samples[name].append((time.perf_counter() - t) / calls[name])
        return {k: statistics.median(v) for k, v in samples.items()}


# ---- the benchmarks ---------------------------------------------------------------------
def bench_bandwidth(b, budget):
    torch, mod = b.torch, b.mod
    n = SIZES[b.size]["bandwidth"]
    X = b.rng.standard_normal(n, dtype=np.float32)
    Y = b.rng.standard_normal(n, dtype=np.float32)
    x, y, z, s = b.array(X), b.array(Y), mod.Array(n, "float32"), mod.Array(1, "float32")
    tx, ty = torch.from_numpy(X).to(b.tdev), torch.from_numpy(Y).to(b.tdev)
    tz, tc = torch.empty_like(tx), torch.empty_like(tx)

    mod.fill(z, float("nan"))
    mod.ewise_add(x, y, z)
    torch.add(tx, ty, out=tz)
    if not np.array_equal(b.numpy(z, (n,)), tz.cpu().numpy()):
        raise AssertionError("bandwidth: needle's ewise_add differs from PyTorch's add")
    mod.fill(s, float("nan"))
    mod.reduce_sum(x, s, n)
    total = float(b.numpy(s, (1,))[0])
    exact = float(X.astype(np.float64).sum())
    if not abs(total - exact) <= 1e-5 * float(np.abs(X).astype(np.float64).sum()):
        raise AssertionError(f"bandwidth: needle's reduce_sum gave {total}, float64 sum {exact}")

    nw, tw = b.nsync, b.tsync
    t = b.time_rounds({
        "needle_add": (lambda: mod.ewise_add(x, y, z), nw),
        "torch_add": (lambda: torch.add(tx, ty, out=tz), tw),
        "needle_sum": (lambda: mod.reduce_sum(x, s, n), nw),
        "torch_sum": (lambda: torch.sum(tx), tw),
        "torch_copy": (lambda: tc.copy_(tx), tw),
        "needle_copy": (lambda: mod.compact(x, z, [n], [1], 0), nw),
    }, budget * 0.7)
    gbps = {k: (12 if k.endswith("add") else 4 if k.endswith("sum") else 8) * n / v / 1e9 for k, v in t.items()}
    copy = gbps["torch_copy"]
    return {
        "elements": n, "bytes_per_array": 4 * n, "copy_gbps": sig(copy),
        "needle_copy_gbps": sig(gbps["needle_copy"]),
        "ewise_add": {"needle_gbps": sig(gbps["needle_add"]), "torch_gbps": sig(gbps["torch_add"]),
                      "ratio_vs_copy": sig(gbps["needle_add"] / copy),
                      "ratio_vs_torch": sig(gbps["needle_add"] / gbps["torch_add"])},
        "reduce_sum": {"needle_gbps": sig(gbps["needle_sum"]), "torch_gbps": sig(gbps["torch_sum"]),
                       "ratio_vs_copy": sig(gbps["needle_sum"] / copy),
                       "ratio_vs_torch": sig(gbps["needle_sum"] / gbps["torch_sum"])},
        "bytes_counted": "add 12, sum 4, copy 8 per element (each input read once, each output written once)",
    }


def matmul_one(b, n, dtype, budget):
    """One n x n x n product in dtype: checked against float64, then timed against torch.mm."""
    torch, mod = b.torch, b.mod
    A = b.rng.standard_normal((n, n), dtype=np.float32)
    B = b.rng.standard_normal((n, n), dtype=np.float32)
    a, bb, c = b.array(A, dtype), b.array(B, dtype), mod.Array(n * n, dtype)
    tdt = getattr(torch, dtype)
    # float32 -> half rounds to nearest even in numpy (ml_dtypes) and in PyTorch alike, so
    # both sides multiply the same stored values
    tA, tB = torch.from_numpy(A).to(b.tdev).to(tdt), torch.from_numpy(B).to(b.tdev).to(tdt)
    tC = torch.empty_like(tA)

    mod.fill(c, float("nan"))
    mod.matmul(a, bb, c, n, n, n)
    kernel = b.kernel_used()
    torch.mm(tA, tB, out=tC)
    ref = tA.double() @ tB.double()
    ref_norm = float(ref.norm())
    got = torch.from_numpy(b.numpy(c, (n, n)).astype(np.float64)).to(b.tdev)
    needle_err = float((got - ref).norm()) / ref_norm
    torch_err = float((tC.double() - ref).norm()) / ref_norm
    del ref, got
    if not needle_err <= MATMUL_RTOL[dtype]:  # NaN (an unwritten element) fails too
        raise AssertionError(f"{dtype} matmul {n}: needle's relative error {needle_err:.2e} against float64 "
                             f"(limit {MATMUL_RTOL[dtype]:.0e})")

    t = b.time_rounds({"needle": (lambda: mod.matmul(a, bb, c, n, n, n), b.nsync),
                       "torch": (lambda: torch.mm(tA, tB, out=tC), b.tsync)}, budget)
    flops = 2.0 * n ** 3
    nt, tt = flops / t["needle"] / 1e12, flops / t["torch"] / 1e12
    out = {"needle_tflops": sig(nt), "torch_tflops": sig(tt), "ratio": sig(nt / tt),
           "needle_ms": sig(t["needle"] * 1e3), "torch_ms": sig(t["torch"] * 1e3),
           "needle_rel_err": float(f"{needle_err:.3g}"), "torch_rel_err": float(f"{torch_err:.3g}")}
    if kernel is not None:
        out["needle_kernel"] = kernel
    return out


def bench_matmul(b, budget, record, dtype):
    """Sizes in increasing order; a size whose predicted time (8x the last one's: 8x the
    work) would overrun the budget is recorded as cut."""
    start, last = time.perf_counter(), 0.0
    out = {}
    for n in MATMUL_SIZES[b.size]:
        left = budget - (time.perf_counter() - start)
        if 8 * last > left:
            out[str(n)] = {"status": f"cut: predicted {8 * last:.0f} s, {left:.0f} s of the budget left"}
            continue
        began = time.perf_counter()
        out[str(n)] = matmul_one(b, n, dtype, min(left * 0.25, 15.0))
        last = time.perf_counter() - began
        record(out)
    return out


def bench_resnet9(b, budget, amp_dtype=None):
    """One Adam training step; with amp_dtype the forward pass (and the loss) runs under
    needle.amp.autocast / torch.autocast in that dtype, the master weights stay float32."""
    import contextlib

    ndl, torch = b.ndl, b.torch
    from apps.models import ResNet9
    torch_resnet9 = load_cpu_benchmarks().torch_resnet9

    bs = SIZES[b.size]["resnet9"]
    X = b.rng.standard_normal((bs, 3, 32, 32), dtype=np.float32)
    Y = b.rng.integers(0, 10, bs)
    np.random.seed(0)
    model = ResNet9(device=b.dev)
    model.train()
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = ndl.nn.SoftmaxLoss()
    x = ndl.Tensor(X, device=b.dev)
    y = ndl.Tensor(Y.astype(np.float32), device=b.dev)
    torch.manual_seed(0)
    tmodel = torch_resnet9(torch).to(b.tdev)
    tmodel.train()
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(X).to(b.tdev), torch.from_numpy(Y.astype(np.int64)).to(b.tdev)
    losses = {"needle": [], "torch": []}

    def n_autocast():
        return ndl.amp.autocast(dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def t_autocast():
        return torch.autocast(device_type=b.tdev.type, dtype=getattr(torch, amp_dtype)) if amp_dtype \
            else contextlib.nullcontext()

    def n_step():
        opt.reset_grad()
        with n_autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses["needle"].append(float(loss.numpy()))  # reading the loss waits for the device

    def t_step():
        topt.zero_grad()
        with t_autocast():
            loss = torch.nn.functional.cross_entropy(tmodel(tx), ty)
        loss.backward()
        topt.step()
        losses["torch"].append(loss.item())

    t = b.time_rounds({"needle": (n_step, lambda: None), "torch": (t_step, lambda: None)}, budget * 0.6,
                      max_rounds=15)
    if not all(math.isfinite(v) for v in losses["needle"]):
        raise AssertionError(f"resnet9: needle's training loss is not finite: {losses['needle']}")
    out = {"batch": bs, "autocast": amp_dtype, "needle_ms": sig(t["needle"] * 1e3), "torch_ms": sig(t["torch"] * 1e3),
           "ratio": sig(t["torch"] / t["needle"]), "steps_timed": len(losses["needle"]),
           "needle_loss_first_last": [losses["needle"][0], losses["needle"][-1]],
           "torch_loss_first_last": [losses["torch"][0], losses["torch"][-1]]}
    if hasattr(b.mod, "memory_stats"):
        out["needle_peak_mib"] = sig(b.mod.memory_stats()["peak"] / 2 ** 20)
    if b.tdev.type == "cuda":
        out["torch_peak_mib"] = sig(torch.cuda.max_memory_allocated() / 2 ** 20)
    return out


# ---- driver -------------------------------------------------------------------------------
def parse_budgets(text):
    budgets = dict(BUDGETS)
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        if name not in BUDGETS:
            raise SystemExit(f"cuda_bench: unknown benchmark {name!r}; choose from {PARTS}")
        budgets[name] = float(value)
    return budgets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="toy sizes (the CPU dry run)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    ap.add_argument("--budgets", default="", help="seconds per benchmark, e.g. sgemm=60,resnet9=40")
    ap.add_argument("--out", required=True, help="JSON file, rewritten after every benchmark")
    args = ap.parse_args(argv)
    only = [p for p in args.only.split(",") if p]
    if set(only) - set(PARTS):
        raise SystemExit(f"cuda_bench: unknown benchmarks {sorted(set(only) - set(PARTS))}; choose from {PARTS}")
    budgets = parse_budgets(args.budgets)

    b = Bench(args.device, args.tiny)
    result = {"device": args.device, "size": b.size, "info": b.info(), "parts": {}}

    def save():
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)

    keys = {"bandwidth": "bandwidth", "sgemm": "sgemm", "bf16_matmul": "bf16_matmul", "fp16_matmul": "fp16_matmul",
            "resnet9": "resnet9_step", "resnet9_amp": "resnet9_amp_step"}
    ok = True
    for name in [p for p in PARTS if p in only]:
        start = time.perf_counter()
        result["parts"][name] = {"status": "running", "budget_s": budgets[name]}
        save()

        def record(partial, key=keys[name]):
            result[key] = partial
            save()

        try:
            if name in MATMUL_DTYPES:
                value = bench_matmul(b, budgets[name], record, MATMUL_DTYPES[name])
            elif name == "bandwidth":
                value = bench_bandwidth(b, budgets[name])
            else:
                value = bench_resnet9(b, budgets[name], AMP_DTYPE if name == "resnet9_amp" else None)
            result[keys[name]] = value
            status = "ok"
        except Exception as e:  # one benchmark's failure must not hide the others
            status = f"error: {type(e).__name__}: {e}"
            result["parts"][name]["traceback"] = traceback.format_exc()[-2000:]
            ok = False
        result["parts"][name].update(status=status, seconds=round(time.perf_counter() - start, 2))
        print(f"bench {name}: {status} in {result['parts'][name]['seconds']} s "
              f"{json.dumps(result.get(keys[name]))}", flush=True)
        save()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
