"""The needle demo: a small ConvNet on scikit-learn's bundled 8x8 handwritten digits.

    python -m apps.demo [--epochs 8] [--device cpu] [--plot out/demo_curves.png]

Needs no dataset download and no network. Trains Conv + BatchNorm + ReLU +
MaxPool (twice) + Linear on NCHW 1x8x8 images with needle's convolution,
shows a progress bar, prints the test accuracy, and writes the curves as a PNG.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import numpy as np

import needle as ndl

from apps.models import SmallConvNet
from apps.train import digits_arrays
from apps.training import classification_epoch, fit, plot_curves


def main(epochs=8, batch_size=32, lr=0.01, device=None, plot=os.path.join("out",
         "demo_curves.png"), n_train=None, seed=0, progress=True, verbose=True):
    """Train and evaluate; -> dict(test_acc, test_loss, seconds, history, plot)."""
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"demo: epochs and batch_size must be > 0, got {epochs}, {batch_size}")
    device = ndl.cpu() if device is None else device
    Xtr, ytr, Xte, yte = digits_arrays()
    if n_train is not None:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    np.random.seed(seed)
    model = SmallConvNet(1, 10, 8, width=16, device=device)
    opt = ndl.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = ndl.optim.CosineAnnealingLR(opt, T_max=epochs)
    train_loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(Xtr, ytr), batch_size,
                                       shuffle=True, device=device)
    test_loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(Xte, yte), 256, device=device)
    if verbose:
        print(f"needle demo: SmallConvNet on sklearn digits, {len(ytr)} train / {len(yte)} test "
              f"images (1x8x8), device {device}", flush=True)

    def report(epoch, tr, te):
        print(f"epoch {epoch + 1}/{epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.4f}"
              f" | test acc {te['acc']:.4f} | {tr['samples_per_s']:.0f} samples/s", flush=True)

    start = time.perf_counter()
    history = fit(lambda e: classification_epoch(train_loader, model, opt,
                                                 f"epoch {e + 1}/{epochs}", progress),
                  lambda e: classification_epoch(test_loader, model, None, "eval", progress),
                  epochs, sched, on_epoch=report if verbose else None)
    seconds = time.perf_counter() - start
    if plot:
        plot_curves(history, plot, "needle demo: ConvNet on 8x8 digits")
    result = {"test_acc": history["test_acc"][-1], "test_loss": history["test_loss"][-1],
              "seconds": seconds, "history": history, "plot": plot}
    if verbose:
        print(f"final test accuracy {result['test_acc'] * 100:.2f}% after {epochs} epochs in "
              f"{seconds:.1f}s" + (f"; curves written to {plot}" if plot else ""), flush=True)
    return result


def _cli(argv=None):
    p = argparse.ArgumentParser(prog="python -m apps.demo", description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "cpu_numpy"))
    p.add_argument("--plot", default=os.path.join("out", "demo_curves.png"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from apps.train import get_device
    main(args.epochs, args.batch_size, args.lr, get_device(args.device), args.plot,
         progress=not args.no_progress)


if __name__ == "__main__":
    _cli()
