"""One rank of the 2-rank checks in test_distributed.py (started by the launcher).

Every rank runs the same sections and saves what it saw to OUT/rank<r>.npz (halves as
float32) and OUT/rank<r>.json (error messages, settings); the test compares them with
numpy on the same inputs. Inputs come from ``rank_input`` so the test can rebuild them.
"""
import json
import os
import sys

import numpy as np

import needle as ndl
import needle.distributed as dist
import needle.nn as nn
from needle.backend_ndarray.ndarray import NDArray

DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8", "bool")
SHAPE = (3, 5)


def rank_input(rank, dtype, shape=SHAPE):
    """Rank ``rank``'s values for dtype ``dtype`` (as a float64 or bool numpy array)."""
    rng = np.random.RandomState(100 + rank)
    if dtype == "bool":
        return rng.rand(*shape) > 0.5
    if dtype in ("uint8",):
        return rng.randint(0, 100, size=shape).astype(np.float64)
    if dtype.startswith("int"):
        return rng.randint(-1000, 1000, size=shape).astype(np.float64)
    return rng.randn(*shape) * 10


class ThreeHeads(nn.Module):
    """Head a is used on every rank, b on some (``use_b``), c on none."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x, use_b):
        out = self.a(x).sum()
        return out + self.b(x).sum() if use_b else out


def _as_numpy(x, dtype):
    return x.astype(np.dtype(dtype))


def mlp(seed, dtype="float32"):
    np.random.seed(seed)
    return nn.Sequential(nn.Linear(6, 16, dtype=dtype), nn.ReLU(), nn.Linear(16, 4, dtype=dtype))


def batch(n=16, seed=7):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 6).astype(np.float32), rng.randint(0, 4, size=n)


def train(model, X, y, optimizer, steps):
    for _ in range(steps):
        optimizer.reset_grad()
        loss = nn.SoftmaxLoss()(model(ndl.Tensor(X)), ndl.Tensor(y))
        loss.backward()
        optimizer.step()


def half_of(rank, X, y):
    n = len(X) // 2
    return X[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def params_of(model):
    return [p.numpy().astype(np.float64) for p in model.parameters()]


def main(out):
    r, world = dist.rank(), dist.world_size()
    saved, notes = {}, {"world": world, "rank": r, "local_rank": dist.local_rank(),
                        "threads": ndl.cpu().get_num_threads()}

    # Collectives on every dtype, on Tensors, NDArrays, numpy arrays and strided views.
    for dt in DTYPES:
        x = rank_input(r, dt)
        ops = ("sum", "max", "min") + (("mean",) if dt.startswith("float") else ())
        for op in ops:
            a = NDArray(x, dtype=dt)
            dist.all_reduce(a, op)
            saved[f"reduce_{dt}_{op}"] = a.numpy().astype(np.float64)
        t = ndl.Tensor(x, dtype=dt, requires_grad=False)
        dist.broadcast(t, src=1)
        saved[f"bcast_{dt}"] = t.numpy().astype(np.float64)
        gathered = dist.all_gather(NDArray(x, dtype=dt))
        saved[f"gather_{dt}"] = np.stack([g.numpy().astype(np.float64) for g in gathered])
        if dt != "bfloat16":  # numpy arrays of every dtype numpy has
            gathered = dist.all_gather(_as_numpy(x, dt))
            saved[f"np_gather_{dt}"] = np.stack(gathered).astype(np.float64)
            assert all(g.dtype == _as_numpy(x, dt).dtype for g in gathered)
    v = rank_input(r, "float32", (4, 6)).astype(np.float32)
    strided = NDArray(v)
    dist.all_reduce(strided.permute((1, 0))[1:5:2], "sum")  # a permuted, stepped view
    saved["strided_view"] = strided.numpy().astype(np.float64)
    arr = rank_input(r, "float64")
    dist.all_reduce(arr, "mean")
    saved["numpy_mean"] = arr

    # The path of cuda arrays without NCCL (copied through host memory), taken here by
    # cpu arrays that are treated as device arrays.
    from needle.distributed import buffers
    host_devices, buffers.HOST_DEVICES = buffers.HOST_DEVICES, frozenset({"cpu_numpy"})
    for dt in DTYPES:
        x = rank_input(r, dt)
        a = NDArray(x, dtype=dt)
        dist.all_reduce(a, "max" if dt == "bool" else "sum")
        saved[f"copy_reduce_{dt}"] = a.numpy().astype(np.float64)
        b = NDArray(np.stack([x, x]), dtype=dt)
        dist.broadcast(b[1], src=1)  # a view with an offset
        saved[f"copy_bcast_{dt}"] = b.numpy().astype(np.float64)
        gathered = dist.all_gather(ndl.Tensor(x, dtype=dt, requires_grad=False))
        saved[f"copy_gather_{dt}"] = np.stack([g.numpy().astype(np.float64) for g in gathered])
    buffers.HOST_DEVICES = host_devices

    # Disagreeing ranks: an error on every rank, not a hang.
    try:
        dist.all_reduce(NDArray(np.ones(3 + r, np.float32)))
    except ValueError as e:
        notes["shape_error"] = str(e)
    np.random.seed(r)
    try:
        dist.DistributedDataParallel(nn.Linear(4, 5 + r))
    except ValueError as e:
        notes["model_error"] = str(e)

    # Ranks started from different seeds agree after wrapping.
    model = mlp(seed=r)
    dist.DistributedDataParallel(model)
    for i, p in enumerate(params_of(model)):
        saved[f"wrapped_{i}"] = p

    # Half a batch per rank, SGD with momentum and Adam (float32 and float64).
    X, y = batch()
    Xh, yh = half_of(r, X, y)
    for name, make_opt, dtype in (
            ("sgd", lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3), "float32"),
            ("adam", lambda ps: ndl.optim.Adam(ps, lr=0.01, weight_decay=1e-3), "float32"),
            ("adam64", lambda ps: ndl.optim.Adam(ps, lr=0.01), "float64")):
        model = mlp(seed=r, dtype=dtype)
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0002)  # several buckets
        notes[f"buckets_{name}"] = len(ddp._reducer.buckets)
        train(ddp, Xh, yh, make_opt(model.parameters()), steps=4)
        for i, p in enumerate(params_of(model)):
            saved[f"{name}_{i}"] = p

    # no_sync: two micro-batches accumulated locally, the third averages the sum.
    model = mlp(seed=0)
    ddp = dist.DistributedDataParallel(model)
    loss_fn = nn.SoftmaxLoss()
    for m in range(3):
        Xm, ym = half_of(r, *batch(seed=20 + m))
        if m < 2:
            with ddp.no_sync():
                loss_fn(ddp(ndl.Tensor(Xm)), ndl.Tensor(ym)).backward()
        else:
            loss_fn(ddp(ndl.Tensor(Xm)), ndl.Tensor(ym)).backward()
        if m == 1:
            for i, p in enumerate(model.parameters()):
                saved[f"nosync_local_{i}"] = p.grad.numpy().astype(np.float64)
    for i, p in enumerate(model.parameters()):
        saved[f"nosync_final_{i}"] = p.grad.numpy().astype(np.float64)

    # Parameters used by one rank only, or by none.
    np.random.seed(0)
    heads = ThreeHeads()
    ddp = dist.DistributedDataParallel(heads)
    ddp(ndl.Tensor(rank_input(r, "float32", (4, 3)).astype(np.float32)), use_b=r == 1).backward()
    notes["unused_grad_is_none"] = heads.c.weight.grad is None
    saved["head_a"] = heads.a.weight.grad.numpy().astype(np.float64)
    saved["head_b"] = heads.b.weight.grad.numpy().astype(np.float64)

    # BatchNorm: rank 0's buffers at wrapping, each rank's own batch statistics after.
    bn = nn.BatchNorm1d(3)
    bn.running_mean = ndl.Tensor(np.full(3, 10.0 * (r + 1), np.float32), requires_grad=False)
    ddp = dist.DistributedDataParallel(bn)
    saved["bn_wrapped"] = bn.running_mean.numpy().astype(np.float64)
    ddp(ndl.Tensor(rank_input(r, "float32", (8, 3)).astype(np.float32)))
    saved["bn_after"] = bn.running_mean.numpy().astype(np.float64)

    # Buckets that live on the device (the cuda path's code), used here on cpu arrays.
    from needle.distributed import buckets, ddp as ddp_module
    ddp_module.bucket_class = lambda device: buckets.DeviceBucket
    model = mlp(seed=r)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0002)
    train(ddp, Xh, yh, ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps=4)
    for i, p in enumerate(params_of(model)):
        saved[f"device_sgd_{i}"] = p

    # The sampler takes its rank and world from the launcher.
    sampler = ndl.data.DistributedSampler(ndl.data.NDArrayDataset(np.zeros((11, 1))), seed=3)
    saved["sampler_e0"] = sampler.indices()
    sampler.set_epoch(1)
    saved["sampler_e1"] = sampler.indices()

    np.savez(os.path.join(out, f"rank{r}.npz"), **saved)
    with open(os.path.join(out, f"rank{r}.json"), "w") as f:
        json.dump(notes, f)
    dist.barrier()


def cuda_main(out, backend):
    """The cuda checks (run where a GPU is visible): collectives on cuda arrays of every
    dtype and DDP training on cuda, over NCCL (one GPU per rank) or through host memory."""
    dist.init(backend)
    r, dev = dist.rank(), ndl.cuda()
    saved = {}
    for dt in DTYPES:
        x = rank_input(r, dt)
        for op in ("sum", "max", "min") + (("mean",) if dt.startswith("float") else ()):
            a = NDArray(x, dtype=dt, device=dev)
            dist.all_reduce(a, op)
            saved[f"reduce_{dt}_{op}"] = a.numpy().astype(np.float64)
        t = ndl.Tensor(x, dtype=dt, device=dev, requires_grad=False)
        dist.broadcast(t, src=1)
        saved[f"bcast_{dt}"] = t.numpy().astype(np.float64)
        gathered = dist.all_gather(NDArray(x, dtype=dt, device=dev))
        saved[f"gather_{dt}"] = np.stack([g.numpy().astype(np.float64) for g in gathered])
    X, y = batch()
    Xh, yh = half_of(r, X, y)
    model = mlp(seed=r).to(dev)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0002)
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        opt.reset_grad()
        nn.SoftmaxLoss()(ddp(ndl.Tensor(Xh, device=dev)), ndl.Tensor(yh, device=dev)).backward()
        opt.step()
    for i, p in enumerate(params_of(model)):
        saved[f"sgd_{i}"] = p
    from needle.distributed.group import group
    np.savez(os.path.join(out, f"rank{r}.npz"), **saved)
    with open(os.path.join(out, f"rank{r}.json"), "w") as f:
        json.dump({"nccl": group().nccl() is not None}, f)
    dist.barrier()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--cuda":
        cuda_main(sys.argv[1], sys.argv[3])
    else:
        main(sys.argv[1])
