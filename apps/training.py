"""Shared pieces of the command-line trainer and the demo: a classification epoch
with a tqdm progress bar, checkpoints, and a PNG of the training curves."""
import os
import time

import numpy as np

import needle as ndl
import needle.nn as nn


def _progress(iterable, total, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False,
                disable=not enabled, dynamic_ncols=True)


def classification_epoch(loader, model, opt=None, desc="", progress=True, flatten=False,
                         loss_fn=None):
    """One pass over ``loader`` (trains when ``opt`` is given).

    Returns a dict with mean ``loss``, ``acc``, ``samples_per_s`` and ``seconds``.
    The progress bar shows running loss, accuracy and throughput.
    """
    loss_fn = nn.SoftmaxLoss() if loss_fn is None else loss_fn
    model.train() if opt is not None else model.eval()
    correct, total_loss, count = 0.0, 0.0, 0
    start = time.perf_counter()
    bar = _progress(loader, len(loader), desc, progress)
    for X, y in bar:
        if flatten:
            X = X.reshape((X.shape[0], int(np.prod(X.shape[1:]))))
        logits = model(X)
        loss = loss_fn(logits, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            opt.step()
        n = y.shape[0]
        correct += float((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        total_loss += float(loss.numpy()) * n
        count += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{correct / count:.4f}",
                        samples_s=f"{count / max(elapsed, 1e-9):.0f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(count, 1), "acc": correct / max(count, 1),
            "samples_per_s": count / max(seconds, 1e-9), "seconds": seconds}


def save_checkpoint(path, model, opt, epoch, history, **extra):
    """Model state, optimizer state, finished epoch, curves and the numpy RNG state."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ndl.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
              "history": history, "rng": np.random.get_state(), **extra}, path)


def load_checkpoint(path, model, opt):
    """Restore what :func:`save_checkpoint` wrote; -> (next epoch, history, checkpoint dict)."""
    ckpt = ndl.load(path)
    for key in ("model", "optimizer", "epoch", "history"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {path!r} lacks {key!r} (keys: {sorted(ckpt)})")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if "rng" in ckpt:
        np.random.set_state(ckpt["rng"])
    return ckpt["epoch"] + 1, ckpt["history"], ckpt


def plot_curves(history, path, title="training"):
    """Write a PNG with loss and accuracy (or perplexity) per epoch for train and test."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    epochs = np.arange(1, len(history.get("train_loss", [])) + 1)
    metric = "acc" if "train_acc" in history else "ppl"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for split, style in (("train", "-o"), ("test", "--s")):
        if history.get(f"{split}_loss"):
            axes[0].plot(epochs[:len(history[f"{split}_loss"])], history[f"{split}_loss"], style,
                         label=split)
        if history.get(f"{split}_{metric}"):
            axes[1].plot(epochs[:len(history[f"{split}_{metric}"])], history[f"{split}_{metric}"],
                         style, label=split)
    axes[0].set_title("loss")
    axes[1].set_title("accuracy" if metric == "acc" else "perplexity")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
