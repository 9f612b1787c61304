"""needle.distributed: collectives, DistributedDataParallel, DistributedSampler and the
launcher. The 2-rank checks start ``python -m needle.distributed.run -n 2`` as a
subprocess with a timeout (one thread per rank on a 2-core machine) and compare what
each rank saw with numpy, PyTorch or single-process needle on the same inputs."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import needle as ndl
import needle.distributed as dist
import needle.nn as nn
from needle.backend_ndarray import dtypes as ndt
from needle.backend_ndarray.ndarray import NDArray

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402  (rank_input, mlp, batch: the ranks' inputs)

JOB_TIMEOUT = 120


def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    from needle.distributed.run import find_mpiexec
    try:
        find_mpiexec()
    except SystemExit:
        return False
    return True


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="mpi4py/mpiexec not installed "
                                                       "(pip install -r requirements.txt)")


def _env(threads="1"):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), ROOT])
    env["NEEDLE_NO_DOWNLOAD"] = "1"
    env.pop("NEEDLE_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["NEEDLE_NUM_THREADS"] = threads
    return env


def launch(args, threads="1", timeout=JOB_TIMEOUT):
    """Run ``python -m needle.distributed.run -n 2 ARGS`` -> (CompletedProcess, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "needle.distributed.run", "-n", "2",
                           "--timeout", str(timeout - 10)] + args,
                          cwd=ROOT, env=_env(threads), capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.perf_counter() - start


# ----- the 2-rank job: one run, many checks --------------------------------------

@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    # NEEDLE_NUM_THREADS unset: the launcher gives each rank this machine's cores / 2.
    proc, _ = launch([os.path.join(HERE, "distributed_worker.py"), str(out)], threads=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [(dict(np.load(out / f"rank{r}.npz")), json.load(open(out / f"rank{r}.json")))
            for r in range(2)]


def _as(x, dtype):
    return x.astype(ndt.to_numpy_dtype(dtype))


def _expected_reduce(dtype, op):
    a, b = (_as(worker.rank_input(r, dtype), dtype) for r in range(2))
    if dtype == "bool":
        return (a & b) if op == "min" else (a | b)
    if op == "max":
        return np.maximum(a, b)
    if op == "min":
        return np.minimum(a, b)
    if dtype in ndt.HALF:  # reduced through float32, one rounding
        s = a.astype(np.float32) + b.astype(np.float32)
        return _as(s / np.float32(2) if op == "mean" else s, dtype)
    s = a + b
    return s / s.dtype.type(2) if op == "mean" else s


@needs_mpi
def test_job_sees_two_ranks_one_thread_each(ranks):
    cores = len(os.sched_getaffinity(0))
    for r, (_, notes) in enumerate(ranks):
        assert (notes["world"], notes["rank"], notes["local_rank"]) == (2, r, r)
        assert notes["threads"] == max(1, cores // 2)


@needs_mpi
@pytest.mark.parametrize("dtype", worker.DTYPES)
def test_collectives_every_dtype(ranks, dtype):
    inputs = [_as(worker.rank_input(r, dtype), dtype) for r in range(2)]
    for saved, _ in ranks:
        ops = ("sum", "max", "min") + (("mean",) if dtype.startswith("float") else ())
        for op in ops:
            want = _expected_reduce(dtype, op).astype(np.float64)
            np.testing.assert_array_equal(saved[f"reduce_{dtype}_{op}"], want, err_msg=f"{dtype} {op}")
        np.testing.assert_array_equal(saved[f"bcast_{dtype}"], inputs[1].astype(np.float64))
        np.testing.assert_array_equal(saved[f"gather_{dtype}"],
                                      np.stack(inputs).astype(np.float64))
        if dtype != "bfloat16":
            np.testing.assert_array_equal(saved[f"np_gather_{dtype}"],
                                          np.stack(inputs).astype(np.float64))


@needs_mpi
@pytest.mark.parametrize("dtype", worker.DTYPES)
def test_collectives_through_host_copies(ranks, dtype):
    """The path of cuda arrays when NCCL is missing: copy out, MPI, copy back."""
    inputs = [_as(worker.rank_input(r, dtype), dtype) for r in range(2)]
    for r, (saved, _) in enumerate(ranks):
        want = _expected_reduce(dtype, "max" if dtype == "bool" else "sum").astype(np.float64)
        np.testing.assert_array_equal(saved[f"copy_reduce_{dtype}"], want)
        np.testing.assert_array_equal(saved[f"copy_bcast_{dtype}"],
                                      np.stack([inputs[r], inputs[1]]).astype(np.float64))
        np.testing.assert_array_equal(saved[f"copy_gather_{dtype}"],
                                      np.stack(inputs).astype(np.float64))


@needs_mpi
def test_collectives_on_views_and_numpy(ranks):
    v = [worker.rank_input(r, "float32", (4, 6)).astype(np.float32) for r in range(2)]
    for r, (saved, _) in enumerate(ranks):
        want = v[r].copy()
        want[:, [1, 3]] = v[0][:, [1, 3]] + v[1][:, [1, 3]]  # columns 1, 3 = rows 1:5:2 of v.T
        np.testing.assert_array_equal(saved["strided_view"], want)
        np.testing.assert_array_equal(saved["numpy_mean"],
                                      (worker.rank_input(0, "float64") + worker.rank_input(1, "float64")) / 2)


@needs_mpi
def test_disagreeing_ranks_raise_on_every_rank(ranks):
    for _, notes in ranks:
        assert "rank 0: sum, float32, (3,)" in notes["shape_error"]
        assert "rank 1: sum, float32, (4,)" in notes["shape_error"]
        assert "rank 0 has weight (4, 5) float32, rank 1 has weight (4, 6)" in notes["model_error"]


@needs_mpi
def test_ranks_from_different_seeds_agree_after_wrapping(ranks):
    reference = [p.numpy() for p in worker.mlp(seed=0).parameters()]
    for saved, _ in ranks:
        for i, want in enumerate(reference):
            np.testing.assert_array_equal(saved[f"wrapped_{i}"], want)


def _whole_batch_training(make_opt, dtype="float32", steps=4):
    model = worker.mlp(seed=0, dtype=dtype)
    X, y = worker.batch()
    worker.train(model, X, y, make_opt(model.parameters()), steps)
    return [p.numpy() for p in model.parameters()]


@needs_mpi
@pytest.mark.parametrize("name, make_opt, dtype, tol", [
    ("sgd", lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3), "float32", 2e-6),
    ("adam", lambda ps: ndl.optim.Adam(ps, lr=0.01, weight_decay=1e-3), "float32", 2e-6),
    ("adam64", lambda ps: ndl.optim.Adam(ps, lr=0.01), "float64", 1e-12),
    ("device_sgd", lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9), "float32", 2e-6),
])
def test_two_half_batches_train_like_one_whole_batch(ranks, name, make_opt, dtype, tol):
    """Each rank trains on half of a fixed batch from a different random start; after 4
    steps both hold the parameters of one process trained on the whole batch."""
    reference = _whole_batch_training(make_opt, dtype)
    for saved, notes in ranks:
        if name in ("sgd", "adam", "adam64"):
            assert notes[f"buckets_{name}"] > 1
        for i, want in enumerate(reference):
            np.testing.assert_allclose(saved[f"{name}_{i}"], want, rtol=tol, atol=tol)


def _local_grads(rank, micro):
    model = worker.mlp(seed=0)
    Xm, ym = worker.half_of(rank, *worker.batch(seed=20 + micro))
    nn.SoftmaxLoss()(model(ndl.Tensor(Xm)), ndl.Tensor(ym)).backward()
    return [p.grad.numpy() for p in model.parameters()]


@needs_mpi
def test_no_sync_accumulates_locally_then_averages(ranks):
    per = [[_local_grads(r, m) for m in range(3)] for r in range(2)]
    for r, (saved, _) in enumerate(ranks):
        for i in range(4):
            np.testing.assert_allclose(saved[f"nosync_local_{i}"], per[r][0][i] + per[r][1][i],
                                       rtol=1e-5, atol=1e-6)
            final = sum(per[q][m][i] for q in range(2) for m in range(3)) / 2
            np.testing.assert_allclose(saved[f"nosync_final_{i}"], final, rtol=1e-5, atol=1e-6)


@needs_mpi
def test_parameters_unused_on_some_ranks(ranks):
    x = [worker.rank_input(r, "float32", (4, 3)).astype(np.float32) for r in range(2)]
    grad = [np.repeat(xr.sum(axis=0)[:, None], 2, axis=1) for xr in x]  # d sum(x W + b) / dW
    for saved, notes in ranks:
        np.testing.assert_allclose(saved["head_a"], (grad[0] + grad[1]) / 2, rtol=1e-6)
        np.testing.assert_allclose(saved["head_b"], grad[1] / 2, rtol=1e-6)  # rank 0 adds zeros
        assert notes["unused_grad_is_none"]


@needs_mpi
def test_batchnorm_buffers_from_rank0_statistics_per_rank(ranks):
    for r, (saved, _) in enumerate(ranks):
        np.testing.assert_array_equal(saved["bn_wrapped"], np.full(3, 10.0))
        x = worker.rank_input(r, "float32", (8, 3)).astype(np.float32)
        np.testing.assert_allclose(saved["bn_after"], 0.9 * 10.0 + 0.1 * x.mean(axis=0), rtol=1e-5)


@needs_mpi
def test_sampler_shards_under_the_launcher(ranks):
    for epoch in (0, 1):
        shards = [saved[f"sampler_e{epoch}"] for saved, _ in ranks]
        assert len(shards[0]) == len(shards[1]) == 6
        assert sorted(set(shards[0]) | set(shards[1])) == list(range(11))
        for r in range(2):
            explicit = ndl.data.DistributedSampler(list(range(11)), num_replicas=2, rank=r, seed=3)
            explicit.set_epoch(epoch)
            np.testing.assert_array_equal(shards[r], explicit.indices())
    assert not np.array_equal(ranks[0][0]["sampler_e0"], ranks[0][0]["sampler_e1"])


def _gpu_count():
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus")) if ndl.cuda().enabled() else 0
    except OSError:
        return 0


@needs_mpi
@pytest.mark.skipif(_gpu_count() == 0, reason="no GPU visible")
def test_cuda_collectives_and_ddp(tmp_path):
    """NCCL where every rank has a GPU of its own and NCCL is installed, else MPI through
    host memory (two ranks may share one GPU)."""
    from needle.distributed import nccl
    backend = "nccl" if _gpu_count() >= 2 and nccl.unavailable_reason() is None else "mpi"
    proc, _ = launch([os.path.join(HERE, "distributed_worker.py"), str(tmp_path), "--cuda", backend])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in range(2):
        saved = dict(np.load(tmp_path / f"rank{r}.npz"))
        assert json.load(open(tmp_path / f"rank{r}.json"))["nccl"] == (backend == "nccl")
        for dtype in worker.DTYPES:
            inputs = [_as(worker.rank_input(q, dtype), dtype) for q in range(2)]
            for op in ("sum", "max", "min") + (("mean",) if dtype.startswith("float") else ()):
                got, want = saved[f"reduce_{dtype}_{op}"], _expected_reduce(dtype, op).astype(np.float64)
                if backend == "nccl" and dtype in ndt.HALF:  # NCCL reduces halves natively
                    np.testing.assert_allclose(got, want, rtol=1e-2)
                else:
                    np.testing.assert_array_equal(got, want, err_msg=f"{dtype} {op}")
            np.testing.assert_array_equal(saved[f"bcast_{dtype}"], inputs[1].astype(np.float64))
            np.testing.assert_array_equal(saved[f"gather_{dtype}"], np.stack(inputs).astype(np.float64))
        reference = _whole_batch_training(lambda ps: ndl.optim.SGD(ps, lr=0.1))
        for i, want in enumerate(reference):
            np.testing.assert_allclose(saved[f"sgd_{i}"], want, rtol=1e-4, atol=1e-5)


# ----- failures and the trainer -------------------------------------------------

FAILING = """
import needle as ndl, needle.distributed as dist
if dist.rank() == 1:
    raise ZeroDivisionError("rank one gives up")
dist.all_reduce(ndl.Tensor([1.0]))   # rank 0 waits here for a rank that is gone
dist.barrier()
print("rank 0 should never get here")
"""


@needs_mpi
def test_a_failing_rank_ends_the_job_with_its_traceback(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    proc, seconds = launch([str(script)], timeout=60)
    assert proc.returncode != 0
    assert "rank 1 failed" in proc.stderr
    assert "ZeroDivisionError: rank one gives up" in proc.stderr
    assert "should never get here" not in proc.stdout
    assert seconds < 30


@needs_mpi
def test_apps_train_data_parallel_rank0_writes(tmp_path):
    ckpt, plot = tmp_path / "digits.needle", tmp_path / "digits.png"
    proc, _ = launch(["-m", "apps.train", "digits", "--epochs", "2", "--limit", "512",
                      "--no-progress", "--checkpoint", str(ckpt), "--plot", str(plot)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("epoch ")]
    assert [l.split(":")[0] for l in lines] == ["epoch 1/2", "epoch 2/2"]  # rank 0 only
    acc = float(lines[-1].split("| test loss")[1].split("acc")[1].split("|")[0])
    assert acc > 0.8
    assert plot.read_bytes().startswith(b"\x89PNG")
    from apps.models import SmallConvNet
    ck = ndl.load(str(ckpt))
    assert ck["epoch"] == 1
    model = SmallConvNet(1, 10, 8)
    model.load_state_dict(ck["model"])  # the replica's names, no "module." prefix


# ----- world size 1: no launcher, no MPI -----------------------------------------

def test_alone_every_call_is_a_noop():
    assert not any(k in os.environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))
    assert (dist.world_size(), dist.rank(), dist.local_rank()) == (1, 0, 0)
    assert dist.is_initialized()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = ndl.Tensor(x)
    assert dist.all_reduce(t, "mean") is t
    np.testing.assert_array_equal(t.numpy(), x)
    dist.broadcast(t, src=0)
    np.testing.assert_array_equal(t.numpy(), x)
    gathered = dist.all_gather(NDArray(x))
    assert len(gathered) == 1 and isinstance(gathered[0], NDArray)
    np.testing.assert_array_equal(gathered[0].numpy(), x)
    dist.barrier()


def test_alone_argument_errors_match_the_launched_ones():
    t = ndl.Tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="all_reduce: op must be one of"):
        dist.all_reduce(t, "prod")
    with pytest.raises(TypeError, match="op='mean' needs a floating dtype, got int64"):
        dist.all_reduce(ndl.Tensor([1, 2]), "mean")
    with pytest.raises(ValueError, match=r"broadcast: src must be a rank in \[0, 1\), got 1"):
        dist.broadcast(t, src=1)
    with pytest.raises(TypeError, match="expected a needle Tensor, NDArray or numpy array, got list"):
        dist.all_reduce([1.0])
    with pytest.raises(ValueError, match="backend must be None, 'mpi' or 'nccl'"):
        dist.init("gloo")


def test_alone_ddp_is_the_module_and_no_sync_accumulates():
    X, y = worker.batch()
    plain = worker.mlp(seed=0)
    nn.SoftmaxLoss()(plain(ndl.Tensor(X[:8])), ndl.Tensor(y[:8])).backward()
    g1 = [p.grad.numpy() for p in plain.parameters()]
    nn.SoftmaxLoss()(plain(ndl.Tensor(X[8:])), ndl.Tensor(y[8:])).backward()
    g2 = [p.grad.numpy() for p in plain.parameters()]

    model = worker.mlp(seed=0)
    ddp = dist.DistributedDataParallel(model)
    with ddp.no_sync():
        nn.SoftmaxLoss()(ddp(ndl.Tensor(X[:8])), ndl.Tensor(y[:8])).backward()
    nn.SoftmaxLoss()(ddp(ndl.Tensor(X[8:])), ndl.Tensor(y[8:])).backward()
    for p, a, b in zip(model.parameters(), g1, g2):
        np.testing.assert_allclose(p.grad.numpy(), a + b, rtol=1e-6, atol=1e-7)
    ndl.optim.SGD(model.parameters(), lr=0.1).reset_grad()
    assert all(p.grad is None for p in model.parameters())
    nn.SoftmaxLoss()(ddp(ndl.Tensor(X[:8])), ndl.Tensor(y[:8])).backward()  # overwrites again
    for p, a in zip(model.parameters(), g1):
        np.testing.assert_allclose(p.grad.numpy(), a, rtol=1e-6, atol=1e-7)
    assert list(ddp.state_dict()) == ["module." + k for k in model.state_dict()]


def test_ddp_argument_errors():
    with pytest.raises(TypeError, match="expected an nn.Module, got list"):
        dist.DistributedDataParallel([1])
    with pytest.raises(ValueError, match="bucket_cap_mb must be > 0"):
        dist.DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=0)
    model = nn.Linear(2, 2)
    dist.DistributedDataParallel(model)
    with pytest.raises(ValueError, match="already wrapped"):
        dist.DistributedDataParallel(model)


def test_bucket_plan_reverse_order_and_cap():
    from needle.distributed.buckets import plan_buckets
    f, d = ("float32", "cpu"), ("float64", "cpu")
    entries = [(f, 400), (f, 400), (d, 800), (f, 400), (f, 2000)]
    assert plan_buckets(entries, cap_bytes=1000) == [[4], [3, 1], [2], [0]]
    assert plan_buckets(entries, cap_bytes=10 ** 6) == [[4, 3, 1, 0], [2]]


def _run_python(code, env=None):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=env or _env(), timeout=60)


def test_without_mpi4py_needle_imports_and_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import needle, needle.distributed as dist\n"
            "assert dist.world_size() == 1\n"
            "import os; os.environ.update(PMI_RANK='0', PMI_SIZE='2')\n"
            "import needle.distributed.group as g; g._GROUP = None\n"
            "try:\n    dist.init()\nexcept RuntimeError as e:\n    print(e)\n")
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "pip install mpi4py mpich" in proc.stdout


def test_alone_never_loads_mpi():
    proc = _run_python("import sys, needle as ndl, needle.distributed as dist\n"
                       "dist.all_reduce(ndl.Tensor([1.0])); dist.DistributedDataParallel(ndl.nn.Linear(2, 2))\n"
                       "assert 'mpi4py' not in sys.modules, 'mpi4py loaded'\n")
    assert proc.returncode == 0, proc.stderr


# ----- DistributedSampler and the DataLoader ---------------------------------------

@pytest.mark.parametrize("n, replicas", [(10, 2), (11, 3), (2, 3), (0, 2), (7, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_matches_pytorch_without_shuffle(n, replicas, drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    for r in range(replicas):
        ours = ndl.data.DistributedSampler(list(range(n)), num_replicas=replicas, rank=r,
                                           shuffle=False, drop_last=drop_last)
        theirs = torch_data.DistributedSampler(list(range(n)), num_replicas=replicas, rank=r,
                                               shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)


@pytest.mark.parametrize("n, replicas", [(10, 2), (11, 4), (3, 5)])
def test_sampler_shuffled_shards_disjoint_covering_equal(n, replicas):
    np.random.seed(0)
    shards = [ndl.data.DistributedSampler(range(n), replicas, r, seed=5).indices()
              for r in range(replicas)]
    assert len({len(s) for s in shards}) == 1
    everything = np.concatenate(shards)
    assert sorted(set(everything.tolist())) == list(range(n))
    assert len(everything) - n == (-n) % replicas  # only the padding repeats
    np.random.seed(123)  # the global RNG does not matter; the epoch does
    again = ndl.data.DistributedSampler(range(n), replicas, 0, seed=5)
    np.testing.assert_array_equal(again.indices(), shards[0])
    again.set_epoch(1)
    assert not np.array_equal(again.indices(), shards[0]) or n < 4


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        ndl.data.DistributedSampler(range(4), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be >= 1, got 0"):
        ndl.data.DistributedSampler(range(4), num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="rank must be an int"):
        ndl.data.DistributedSampler(range(4), num_replicas=2, rank=0.5)
    assert len(ndl.data.DistributedSampler(range(4))) == 4  # alone: one replica


def test_dataloader_batches_the_sampler_indices():
    X = np.arange(22, dtype=np.float32).reshape(11, 2)
    ds = ndl.data.NDArrayDataset(X, np.arange(11))
    sampler = ndl.data.DistributedSampler(ds, num_replicas=2, rank=1, seed=1)
    loader = ndl.data.DataLoader(ds, batch_size=4, sampler=sampler)
    assert len(loader) == 2
    state = np.random.get_state()
    got = np.concatenate([b[1].numpy() for b in loader])
    assert np.array_equal(np.random.get_state()[1], state[1])  # no global draw
    np.testing.assert_array_equal(got, sampler.indices())
    with pytest.raises(ValueError, match="sampler and shuffle=True exclude each other"):
        ndl.data.DataLoader(ds, batch_size=4, shuffle=True, sampler=sampler)


def test_launcher_command_line():
    from needle.distributed import run
    cmd = run.build_command("/x/mpiexec", 4, ["-m", "apps.train", "mnist"], "hosts", "mpich")
    assert cmd[:5] == ["/x/mpiexec", "-n", "4", "-f", "hosts"]
    assert cmd[5:] == [sys.executable, "-m", "needle.distributed.rank_main", "-m", "apps.train", "mnist"]
    assert "--hostfile" in run.build_command("mpirun", 2, ["a.py"], "h", "openmpi")
    with pytest.raises(SystemExit):
        run.parse_args(["-n", "2"])
    with pytest.raises(SystemExit):
        run.parse_args(["-n", "0", "a.py"])
