"""Command-line trainer.

    python -m apps.train {mnist,cifar10,ptb,digits} --device cpu --epochs 5 \
        --data ../shared/data/mnist --batch-size 100 --lr 1e-3 --optimizer adam \
        --checkpoint out/mnist.ckpt [--resume] --plot out/mnist.png

Shows a tqdm bar (loss, accuracy, samples/s), evaluates after every epoch,
saves model + optimizer state + epoch to ``--checkpoint`` after every epoch,
continues from it with ``--resume``, and writes the curves to ``--plot``.
Data: ``--data DIR``, else ``$NEEDLE_DATA/<task>``, else ``../shared/data/<task>``
relative to the repository root.

Data-parallel: ``python -m needle.distributed.run -n 2 -m apps.train mnist ...`` runs one
replica per rank (``--batch-size`` is per rank), each on its shard of the training data;
gradients, the training metrics and the evaluation (each rank scores its share of the
test set) are combined over ranks, and only rank 0 prints, plots and writes checkpoints.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import numpy as np

import needle as ndl
import needle.distributed as dist

from apps.training import (MixedPrecision, classification_epoch, empty_history, fit, load_checkpoint,
                           plot_curves, ptb_epoch, save_checkpoint)

TASKS = ("mnist", "cifar10", "ptb", "digits")
DATA_SUBDIR = {"mnist": "mnist", "cifar10": "cifar10", "ptb": "ptb", "digits": ""}


def default_data_dir(task):
    base = os.environ.get("NEEDLE_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "data")
    return os.path.join(base, DATA_SUBDIR[task])


def get_device(name):
    if name == "cpu":
        return ndl.cpu()
    if name == "cpu_numpy":
        return ndl.cpu_numpy()
    if name == "cuda":
        dev = ndl.cuda()
        if not dev.enabled():
            raise SystemExit("--device cuda: no CUDA backend/GPU available "
                             f"({getattr(dev, 'reason', 'not built or no GPU')})")
        return dev
    raise SystemExit(f"--device must be cpu, cuda or cpu_numpy, got {name!r}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m apps.train", description=__doc__.split("\n")[0])
    p.add_argument("task", choices=TASKS)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "cpu_numpy"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data", default=None, help="dataset folder (default: ../shared/data/<task>)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--scheduler", choices=("none", "cosine", "step"), default="none")
    p.add_argument("--step-size", type=int, default=1, help="StepLR epochs per decay")
    p.add_argument("--gamma", type=float, default=0.5, help="StepLR decay factor")
    p.add_argument("--checkpoint", default=None, help="save after every epoch to this file")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--plot", default=None, help="write training curves to this PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="mixed precision: autocast to bfloat16, or float16 with loss scaling")
    g = p.add_argument_group("mnist")
    g.add_argument("--split", type=int, default=None,
                   help="train on the first N t10k images and test on the rest "
                        "(when only the t10k files are available)")
    g.add_argument("--hidden", type=int, default=100, help="MLPResNet hidden size")
    g = p.add_argument_group("cifar10")
    g.add_argument("--augment", action="store_true", help="random crop + flip")
    g = p.add_argument_group("ptb")
    g.add_argument("--seq-model", choices=("rnn", "lstm", "transformer"), default="lstm")
    g.add_argument("--seq-len", type=int, default=20)
    g.add_argument("--embedding-size", type=int, default=64)
    g.add_argument("--hidden-size", type=int, default=64)
    g.add_argument("--num-layers", type=int, default=1)
    g.add_argument("--clip", type=float, default=0.25, help="gradient-norm clip (0: none)")
    g.add_argument("--max-lines", type=int, default=None)
    g.add_argument("--train-file", default="train.txt")
    g.add_argument("--test-file", default="test.txt")
    return p


DEFAULTS = {  # task -> (batch size, lr, optimizer, weight decay)
    "mnist": (100, 1e-3, "adam", 1e-3),
    "cifar10": (128, 1e-3, "adam", 1e-3),
    "digits": (32, 1e-2, "adam", 1e-4),
    "ptb": (16, 4.0, "sgd", 0.0),
}


def fill_defaults(args):
    bs, lr, opt, wd = DEFAULTS[args.task]
    args.batch_size = bs if args.batch_size is None else args.batch_size
    args.lr = lr if args.lr is None else args.lr
    args.optimizer = opt if args.optimizer is None else args.optimizer
    args.weight_decay = wd if args.weight_decay is None else args.weight_decay
    if args.data is None:
        args.data = default_data_dir(args.task)
    for name in ("epochs", "batch_size", "seq_len", "lr", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.clip < 0:
        raise SystemExit(f"--clip must be >= 0 (0 disables clipping), got {args.clip}")
    if args.resume and not args.checkpoint:
        raise SystemExit("--resume needs --checkpoint PATH")
    return args


def make_optimizer(args, params):
    if args.optimizer == "sgd":
        return ndl.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                             weight_decay=args.weight_decay)
    cls = ndl.optim.Adam if args.optimizer == "adam" else ndl.optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args, opt):
    if args.scheduler == "cosine":
        return ndl.optim.CosineAnnealingLR(opt, T_max=args.epochs)
    if args.scheduler == "step":
        return ndl.optim.StepLR(opt, step_size=args.step_size, gamma=args.gamma)
    return None


# ----- datasets and models per task ---------------------------------------

def digits_arrays(test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 digits as float32 NCHW in [0, 1], split train/test."""
    from sklearn.datasets import load_digits
    d = load_digits()
    X = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.uint8)
    order = np.random.RandomState(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def classification_data(args):
    """-> (train dataset, test dataset, model factory, flatten flag)."""
    from apps.mlp_resnet import MLPResNet, mnist_dataset
    from apps.models import ResNet9, SmallConvNet
    if args.task == "digits":
        Xtr, ytr, Xte, yte = digits_arrays()
        train = ndl.data.NDArrayDataset(Xtr, ytr)
        test = ndl.data.NDArrayDataset(Xte, yte)
        return train, test, lambda dev: SmallConvNet(1, 10, 8, device=dev), False
    if args.task == "mnist":
        if args.split is not None:
            full = mnist_dataset(args.data, "t10k")
            if not 0 < args.split < len(full):
                raise SystemExit(f"--split must be in 1..{len(full) - 1}, got {args.split}")
            train = ndl.data.NDArrayDataset(full.X[:args.split], full.y[:args.split])
            test = ndl.data.NDArrayDataset(full.X[args.split:], full.y[args.split:])
        else:
            train = mnist_dataset(args.data, "train")
            test = mnist_dataset(args.data, "t10k")
        hidden = args.hidden
        return train, test, lambda dev: MLPResNet(784, hidden), True
    # cifar10
    tf = [ndl.data.RandomCrop(4), ndl.data.RandomFlipHorizontal()] if args.augment else None
    train = ndl.data.CIFAR10Dataset(args.data, train=True, transforms=tf)
    test = ndl.data.CIFAR10Dataset(args.data, train=False)
    return train, test, lambda dev: ResNet9(device=dev), False


class _Shard(ndl.data.Dataset):
    """Every ``world``-th sample from ``rank`` on: a rank's share of an evaluation set
    (no padding, unlike DistributedSampler, so that every sample is scored once)."""

    def __init__(self, dataset, rank, world):
        super().__init__()
        self.dataset = dataset
        self.index = np.arange(rank, len(dataset), world)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.dataset[self.index[i]]


def combine_ranks(result):
    """One epoch's result over all ranks: loss and accuracy weighted by each rank's count,
    the counts summed, the time of the slowest rank (a no-op when running alone)."""
    if dist.world_size() == 1:
        return result
    n = result["count"]
    sums = dist.all_reduce(np.array([result["loss"] * n, result["acc"] * n, n], np.float64))
    seconds = float(dist.all_reduce(np.array([result["seconds"]]), "max")[0])
    count = max(sums[2], 1.0)
    out = dict(result, loss=sums[0] / count, acc=sums[1] / count, err=1 - sums[1] / count,
               count=int(sums[2]), seconds=seconds)
    for key in ("samples_per_s", "tokens_per_s"):
        if key in out:
            out[key] = sums[2] / max(seconds, 1e-9)
    if "ppl" in out:
        out["ppl"] = float(np.exp(min(out["loss"], 50)))
    return out


class _Subset(ndl.data.Dataset):
    def __init__(self, dataset, n):
        super().__init__()
        self.dataset = dataset
        self.n = min(n, len(dataset))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        idx = np.arange(self.n)[i]
        return self.dataset[idx]


def fit_task(args, model, opt, train_epoch, test_epoch, metric, report, title):
    """The epoch loop of both tasks: resume from ``--checkpoint``, train and evaluate each
    epoch (``train_epoch(desc)``, ``test_epoch(desc)``), print ``report(tr, te)``, save a
    checkpoint after every epoch, and plot the curves at the end. -> (model, history)."""
    sched = make_scheduler(args, opt)
    history, start = empty_history(metric), 0
    lead = dist.rank() == 0  # the rank that prints, plots and writes checkpoints
    if args.resume and os.path.exists(args.checkpoint):
        # Every rank reads the checkpoint (it must be on a filesystem all ranks see).
        start, history, ckpt = load_checkpoint(args.checkpoint, model, opt,
                                               expect={"task": args.task})
        if sched is not None and "scheduler" in ckpt:
            sched.load_state_dict(ckpt["scheduler"])
        if lead:
            print(f"resumed from {args.checkpoint} after epoch {start}")

    def on_epoch(epoch, tr, te):
        if not lead:
            return
        print(f"epoch {epoch + 1}/{args.epochs}: {report(tr, te)}", flush=True)
        if args.checkpoint:
            extra = {"scheduler": sched.state_dict()} if sched is not None else {}
            save_checkpoint(args.checkpoint, model, opt, epoch, history, task=args.task, **extra)

    history = fit(lambda e: combine_ranks(train_epoch(e, f"epoch {e + 1}/{args.epochs}")),
                  lambda e: combine_ranks(test_epoch("eval")), args.epochs, sched, metric,
                  history, start, on_epoch)
    if args.plot and lead:
        plot_curves(history, args.plot, title)
    return model, history


def run_classification(args, device):
    train_set, test_set, make_model, flatten = classification_data(args)
    if args.limit is not None:
        train_set = _Subset(train_set, args.limit)
    np.random.seed(args.seed)
    model = make_model(device).to(device)
    opt = make_optimizer(args, model.parameters())
    rank, world = dist.rank(), dist.world_size()
    # Data-parallel: the replica trains through the wrapper; checkpoints hold `model`.
    net = dist.DistributedDataParallel(model) if world > 1 else model
    sampler = ndl.data.DistributedSampler(train_set, seed=args.seed) if world > 1 else None
    train_loader = ndl.data.DataLoader(train_set, args.batch_size, shuffle=sampler is None,
                                       sampler=sampler, device=device)
    test_loader = ndl.data.DataLoader(_Shard(test_set, rank, world) if world > 1 else test_set,
                                      args.batch_size, device=device)
    progress = not args.no_progress and rank == 0
    amp = MixedPrecision(args.amp) if args.amp else None

    def train_epoch(epoch, desc):
        if sampler is not None:
            sampler.set_epoch(epoch)
        return classification_epoch(train_loader, net, opt, desc, progress, flatten, amp=amp)

    def report(tr, te):
        return (f"train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | test loss {te['loss']:.4f} "
                f"acc {te['acc']:.4f} | {tr['seconds']:.1f}s {tr['samples_per_s']:.0f} samples/s")

    return fit_task(
        args, model, opt,
        train_epoch,
        lambda desc: classification_epoch(test_loader, model, None, desc, progress, flatten, amp=amp),
        "acc", report, f"needle {args.task}")


def _part(ids, rank, world):
    """Rank ``rank``'s contiguous part of a token stream; all parts have one length."""
    n = len(ids) // world
    return ids[rank * n:(rank + 1) * n]


def run_ptb(args, device):
    from apps.models import LanguageModel
    corpus = ndl.data.Corpus(args.data, max_lines=args.max_lines, train_file=args.train_file,
                             test_file=args.test_file)
    train_ids = corpus.train if args.limit is None else corpus.train[:args.limit]
    rank, world = dist.rank(), dist.world_size()
    # Data-parallel: each rank reads an equal contiguous part of each token stream.
    train = ndl.data.batchify(_part(train_ids, rank, world), args.batch_size, device=device)
    test = ndl.data.batchify(_part(corpus.test, rank, world), args.batch_size, device=device)
    np.random.seed(args.seed)
    model = LanguageModel(args.embedding_size, len(corpus.dictionary), args.hidden_size,
                          args.num_layers, args.seq_model, args.seq_len, device=device)
    net = dist.DistributedDataParallel(model) if world > 1 else model
    opt = make_optimizer(args, model.parameters())
    progress, clip = not args.no_progress and rank == 0, args.clip or None
    amp = MixedPrecision(args.amp) if args.amp else None

    def report(tr, te):
        return (f"train loss {tr['loss']:.3f} ppl {tr['ppl']:.1f} | test loss {te['loss']:.3f} "
                f"ppl {te['ppl']:.1f} | {tr['seconds']:.1f}s {tr['tokens_per_s']:.0f} tokens/s")

    return fit_task(
        args, model, opt,
        lambda epoch, desc: ptb_epoch(train, net, args.seq_len, opt, clip, device, desc, progress,
                                      amp=amp),
        lambda desc: ptb_epoch(test, model, args.seq_len, None, None, device, desc, progress, amp=amp),
        "ppl", report, f"needle ptb ({args.seq_model})")


def main(argv=None):
    args = fill_defaults(build_parser().parse_args(argv))
    device = get_device(args.device)
    if args.task == "ptb":
        return run_ptb(args, device)
    return run_classification(args, device)


if __name__ == "__main__":
    main()
