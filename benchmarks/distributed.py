"""needle.distributed on this machine, and the ring-allreduce model beyond it.

    python benchmarks/distributed.py            # ~1-2 min on 2 cores
    python benchmarks/distributed.py --quick    # fewer sizes and steps

1. Allreduce latency and bandwidth against message size, 2 ranks: mpi4py's own
   ``Allreduce`` on a numpy array and needle's ``all_reduce`` on an NDArray (zero-copy
   buffer plus its one-allgather argument check), float32 sums.
2. A training step (forward, backward, gradient averaging, optimizer) of MLPResNet
   (MNIST shapes, batch 100 per rank, Adam) and ResNet9 (CIFAR shapes, batch 32 per
   rank) at 1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread, with the
   time spent waiting for the slower rank and averaging gradients shown apart
   (medians over steps of the slowest rank).
3. The ring-allreduce cost model, 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency per
   bucket, for the apps' models on N = 2..64 machines and 10/25/100 Gb/s links.

Results: tables on stdout, JSON in benchmarks/results/distributed-<date>.json.
docs/distributed.md explains the model and quotes a run.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (os.path.join(ROOT, "python"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

LINKS_GBIT = (10, 25, 100)
MACHINES = (2, 4, 8, 16, 32, 64)
LINK_LATENCY_S = 20e-6  # one message between two hosts over TCP on Ethernet (assumed)
BUCKET_CAP_MB = 25


# ---- rank side --------------------------------------------------------------------

def _timed(fn, reps, comm):
    """Seconds per call of ``fn``, the slowest rank's, best of 3 trials."""
    from mpi4py import MPI
    best = float("inf")
    for _ in range(3):
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        per = (time.perf_counter() - start) / reps
        best = min(best, comm.allreduce(per, op=MPI.MAX))
    return best


def part_allreduce(quick):
    import needle.distributed as dist
    from needle.backend_ndarray.ndarray import NDArray
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    exps = range(0, 25, 4 if quick else 2)
    rows = []
    for e in exps:
        n = 2 ** e
        buf = np.ones(n, np.float32)
        nd = NDArray(buf)
        reps = max(3, min(2000, int(2e7 / max(n, 1) / 4)))
        for _ in range(3):  # warm-up
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            dist.all_reduce(nd)
        raw = _timed(lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), reps, comm)
        ours = _timed(lambda: dist.all_reduce(nd), reps, comm)
        rows.append({"bytes": 4 * n, "mpi4py_s": raw, "needle_s": ours})
    return rows


def _step_setup(name, batch):
    import needle as ndl
    from apps.mlp_resnet import MLPResNet
    from apps.models import ResNet9
    np.random.seed(0)
    rng = np.random.RandomState(1)
    if name == "MLPResNet":
        model = MLPResNet(784, 100)
        X = rng.rand(batch, 784).astype(np.float32)
    else:
        model = ResNet9()
        X = rng.rand(batch, 3, 32, 32).astype(np.float32)
    y = rng.randint(0, 10, size=batch)
    return ndl, model, ndl.Tensor(X), ndl.Tensor(y)


def part_step(quick):
    import needle.distributed as dist
    import needle.nn as nn
    out = []
    for name, batch, steps in (("MLPResNet", 100, 10 if quick else 30),
                               ("ResNet9", 32, 3 if quick else 8)):
        ndl, model, X, y = _step_setup(name, batch)
        ddp = dist.DistributedDataParallel(model)
        opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.SoftmaxLoss()
        compute, wait, sync, total = [], [], [], []
        for i in range(steps + 2):
            dist.barrier()
            t0 = time.perf_counter()
            opt.reset_grad()
            loss_fn(ddp(X), y).backward()
            t1 = time.perf_counter()
            dist.barrier()  # apart: waiting for the slower rank (load imbalance, noise)
            t1b = time.perf_counter()
            ddp.sync_gradients()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if i >= 2:  # after warm-up
                compute.append((t1 - t0) + (t3 - t2))
                wait.append(t1b - t1)
                sync.append(t2 - t1b)
                total.append(t3 - t0)
        times = np.array([np.median(total), np.median(compute), np.median(sync), np.median(wait)])
        dist.all_reduce(times, "max")
        out.append({"model": name, "batch_per_rank": batch, "ranks": dist.world_size(),
                    "step_s": float(times[0]), "compute_s": float(times[1]),
                    "sync_s": float(times[2]), "wait_s": float(times[3]),
                    "grad_bytes": 4 * sum(int(np.prod(p.shape)) for p in model.parameters())})
    return out


def rank_main(args):
    import needle.distributed as dist
    result = part_allreduce(args.quick) if args.part == "allreduce" else part_step(args.quick)
    if dist.rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)


# ---- driver ---------------------------------------------------------------------

def _launch(nprocs, threads, part, quick):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "part.json")
        env = dict(os.environ, NEEDLE_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"), ROOT]))
        cmd = [sys.executable, "-m", "needle.distributed.run", "-n", str(nprocs), "--timeout", "600",
               os.path.abspath(__file__), "--part", part, "--out", out] + (["--quick"] if quick else [])
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        with open(out) as f:
            return json.load(f)


def ring_allreduce_s(nbytes, machines, gbit, latency=LINK_LATENCY_S, buckets=1):
    """The ring-allreduce time: 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency per bucket."""
    if machines == 1:
        return 0.0
    bandwidth = gbit * 1e9 / 8
    return 2 * (machines - 1) / machines * nbytes / bandwidth + 2 * (machines - 1) * latency * buckets


def model_sizes():
    """Gradient bytes (float32) of the apps' models."""
    from apps.mlp_resnet import MLPResNet
    from apps.models import LanguageModel, ResNet9, SmallConvNet
    count = lambda m: sum(int(np.prod(p.shape)) for p in m.parameters())
    return {"SmallConvNet (digits)": 4 * count(SmallConvNet(1, 10, 8)),
            "MLPResNet(784, 100) (MNIST)": 4 * count(MLPResNet(784, 100)),
            "ResNet9 (CIFAR-10)": 4 * count(ResNet9()),
            "LSTM LM 64/64, vocab 10,000 (PTB)": 4 * count(LanguageModel(64, 10000, 64, 1, "lstm"))}


def paper_table(nbytes, compute_s, backward_share=2 / 3):
    """Rows (N, link, comm ms, step ms, efficiency, with overlap) for one model whose step
    computes for ``compute_s`` per machine; overlap hides communication behind the
    backward pass (``backward_share`` of the step) at best."""
    buckets = max(1, int(np.ceil(nbytes / (BUCKET_CAP_MB * 2 ** 20))))
    rows = []
    for n in MACHINES:
        for gbit in LINKS_GBIT:
            comm = ring_allreduce_s(nbytes, n, gbit, buckets=buckets)
            step = compute_s + comm
            overlapped = compute_s + max(0.0, comm - backward_share * compute_s)
            rows.append({"machines": n, "gbit": gbit, "comm_s": comm, "step_s": step,
                         "efficiency": compute_s / step, "efficiency_overlap": compute_s / overlapped})
    return rows


def _fmt_s(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--part", choices=("allreduce", "step"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        return rank_main(args)

    date = datetime.date.today().isoformat()
    results = {"date": date, "machine": f"{platform.processor() or platform.machine()}, "
                                        f"{os.cpu_count()} cores, no GPU",
               "allreduce": _launch(2, 1, "allreduce", args.quick),
               "step": {"1 rank x 1 thread": _launch(1, 1, "step", args.quick),
                        "1 rank x 2 threads": _launch(1, 2, "step", args.quick),
                        "2 ranks x 1 thread": _launch(2, 1, "step", args.quick)}}

    print("\nAllreduce, 2 ranks on this machine (float32 sum; bus bandwidth = 2(N-1)/N * bytes / time)")
    print("| bytes | mpi4py Allreduce | needle all_reduce | bus bandwidth (needle) |")
    print("|---|---|---|---|")
    for r in results["allreduce"]:
        bw = r["bytes"] / r["needle_s"] / 1e9  # 2(N-1)/N = 1 for N = 2
        print(f"| {r['bytes']:,} | {_fmt_s(r['mpi4py_s'])} | {_fmt_s(r['needle_s'])} | {bw:.2f} GB/s |")

    print("\nTraining step (median; sync = averaging the gradients over ranks)")
    print("| model | configuration | samples/step | step | compute | waiting for the other rank | gradient averaging | samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for config, rows in results["step"].items():
        for r in rows:
            samples = r["batch_per_rank"] * r["ranks"]
            print(f"| {r['model']} | {config} | {samples} | {_fmt_s(r['step_s'])} | "
                  f"{_fmt_s(r['compute_s'])} | {_fmt_s(r['wait_s'])} | {_fmt_s(r['sync_s'])} | "
                  f"{samples / r['step_s']:.0f} |")

    sizes = model_sizes()
    results["model_bytes"] = sizes
    print("\nGradient sizes of the apps' models (float32)")
    for name, nbytes in sizes.items():
        print(f"- {name}: {nbytes:,} bytes ({nbytes / 2 ** 20:.2f} MiB)")

    # The compute of one machine: this machine's faster 1-rank configuration.
    resnet_compute = min(r["compute_s"] for config in ("1 rank x 1 thread", "1 rank x 2 threads")
                         for r in results["step"][config] if r["model"] == "ResNet9")
    results["paper"] = {}
    for title, nbytes, compute in (
            ("ResNet9 batch 32, this machine's 1-rank compute", sizes["ResNet9 (CIFAR-10)"],
             resnet_compute),
            ("ResNet9, a 5 ms step (a GPU)", sizes["ResNet9 (CIFAR-10)"], 5e-3),
            ("LSTM LM (PTB), a 5 ms step (a GPU)", sizes["LSTM LM 64/64, vocab 10,000 (PTB)"], 5e-3)):
        rows = paper_table(nbytes, compute)
        results["paper"][title] = rows
        print(f"\nModel: {title}; compute {_fmt_s(compute)}, {nbytes / 2 ** 20:.2f} MiB of gradient, "
              f"latency {LINK_LATENCY_S * 1e6:.0f} us per message")
        print("| machines | " + " | ".join(f"{g} Gb/s: allreduce, step, efficiency (with overlap)"
                                           for g in LINKS_GBIT) + " |")
        print("|---|" + "---|" * len(LINKS_GBIT))
        for n in MACHINES:
            cells = [r for r in rows if r["machines"] == n]
            print(f"| {n} | " + " | ".join(
                f"{_fmt_s(c['comm_s'])}, {_fmt_s(c['step_s'])}, {c['efficiency']:.0%} "
                f"({c['efficiency_overlap']:.0%})" for c in cells) + " |")

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"distributed-{date}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
