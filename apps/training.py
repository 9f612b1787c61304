"""Shared pieces of the course helpers, the command-line trainer and the demo: one epoch
loop (image batches or PTB chunks) with an optional tqdm bar, the epoch-by-epoch fit loop,
checkpoints, and a PNG of the training curves."""
import contextlib
import math
import os
import time

import numpy as np

import needle as ndl
import needle.nn as nn


def _progress(iterable, desc):
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def detach_state(h):
    """Cut the graph behind a recurrent state: None, a Tensor, or a tuple such as LSTM (h, c)."""
    if h is None:
        return None
    if isinstance(h, (tuple, list)):
        return tuple(t.detach() for t in h)
    return h.detach()


class MixedPrecision:
    """``--amp``: forward passes under ``needle.amp.autocast(dtype)``; float16 also scales
    the loss with a ``GradScaler`` (kept across epochs), bfloat16 needs none."""

    AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}

    def __init__(self, dtype):
        self.dtype = self.AMP_DTYPES.get(dtype, dtype)
        self.scaler = ndl.amp.GradScaler(enabled=self.dtype == "float16")

    def autocast(self):
        return ndl.amp.autocast(dtype=self.dtype)

    def backward_and_step(self, loss, opt, clip):
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        if clip is not None:
            opt.clip_grad_norm(clip)
        self.scaler.step(opt)
        self.scaler.update()


def run_epoch(batches, model, forward, opt=None, loss_fn=None, clip=None, desc="",
              progress=False, unit="samples", amp=None):
    """One pass over ``batches``; trains when ``opt`` is given, else evaluates.

    ``forward(batch) -> (logits (n, k), labels (n,))``. Each batch's mean loss is weighted
    by its n, so ``loss`` is the mean per sample (per target token for PTB). Gradients are
    clipped to global norm ``clip`` when it is not None. ``amp`` (a MixedPrecision) runs
    the forward in mixed precision. The bar (``progress``) shows the running loss,
    accuracy and ``unit``/s.
    Returns dict(loss, acc, err, count, seconds, per_s).
    """
    loss_fn = nn.SoftmaxLoss() if loss_fn is None else loss_fn
    model.train() if opt is not None else model.eval()
    correct, total_loss, count = 0.0, 0.0, 0
    start = time.perf_counter()
    bar = _progress(batches, desc) if progress else None
    for batch in batches if bar is None else bar:
        with amp.autocast() if amp is not None else contextlib.nullcontext():
            logits, y = forward(batch)
            loss = loss_fn(logits, y)
        if opt is not None:
            opt.reset_grad()
            if amp is not None:
                amp.backward_and_step(loss, opt, clip)
            else:
                loss.backward()
                if clip is not None:
                    opt.clip_grad_norm(clip)
                opt.step()
        n = y.shape[0]
        correct += float((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        total_loss += float(loss.numpy()) * n
        count += n
        if bar is not None:
            elapsed = time.perf_counter() - start
            bar.set_postfix({"loss": f"{total_loss / count:.4f}", "acc": f"{correct / count:.4f}",
                             f"{unit}/s": f"{count / max(elapsed, 1e-9):.0f}"}, refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    done = max(count, 1)
    return {"loss": total_loss / done, "acc": correct / done, "err": (count - correct) / done,
            "count": count, "seconds": seconds, "per_s": count / max(seconds, 1e-9)}


def classification_epoch(loader, model, opt=None, desc="", progress=True, flatten=False,
                         loss_fn=None, amp=None):
    """One pass over ``loader`` of (X, y) batches (trains when ``opt`` is given); ``flatten``
    reshapes X to (n, features) first.

    Returns a dict with mean ``loss``, ``acc``, ``err``, ``samples_per_s`` and ``seconds``.
    """
    def forward(batch):
        X, y = batch
        if flatten:
            X = X.reshape((X.shape[0], int(np.prod(X.shape[1:]))))
        return model(X), y

    r = run_epoch(loader, model, forward, opt, loss_fn, None, desc, progress, "samples", amp)
    r["samples_per_s"] = r.pop("per_s")
    return r


def ptb_epoch(data, model, seq_len, opt=None, clip=None, device=None, desc="", progress=True,
              dtype="float32", loss_fn=None, amp=None):
    """One pass over batchified PTB ``data`` (nbatch, bs) in chunks of ``seq_len`` rows.

    The hidden state is carried from chunk to chunk, detached, starting from None; the loss
    is the mean per target token. -> dict(loss, acc, err, ppl, seconds, tokens_per_s).
    """
    if seq_len <= 0:
        raise ValueError(f"ptb_epoch: seq_len must be > 0, got {seq_len}")
    state = [None]

    def forward(i):
        x, y = ndl.data.get_batch(data, i, seq_len, device=device, dtype=dtype)
        out, h = model(x, state[0])
        state[0] = detach_state(h)
        return out, y

    r = run_epoch(range(0, data.shape[0] - 1, seq_len), model, forward, opt, loss_fn, clip,
                  desc, progress, "tokens", amp)
    r["ppl"] = math.exp(min(r["loss"], 50))
    r["tokens_per_s"] = r.pop("per_s")
    return r


def empty_history(metric="acc"):
    """{train,test}_{loss,metric} -> [] (``metric`` is "acc" or "ppl")."""
    return {f"{split}_{key}": [] for split in ("train", "test") for key in ("loss", metric)}


def fit(train_epoch, test_epoch, epochs, sched=None, metric="acc", history=None, start=0,
        on_epoch=None):
    """Epochs ``start..epochs-1``: ``train_epoch(epoch)``, ``test_epoch(epoch)`` (each -> a
    result dict), one scheduler step, the loss and ``metric`` of both appended to
    ``history``, then ``on_epoch(epoch, train_result, test_result)``. -> history."""
    history = empty_history(metric) if history is None else history
    for epoch in range(start, epochs):
        tr = train_epoch(epoch)
        te = test_epoch(epoch)
        if sched is not None:
            sched.step()
        for split, r in (("train", tr), ("test", te)):
            history[f"{split}_loss"].append(r["loss"])
            history[f"{split}_{metric}"].append(r[metric])
        if on_epoch is not None:
            on_epoch(epoch, tr, te)
    return history


def save_checkpoint(path, model, opt, epoch, history, **extra):
    """Model state, optimizer state, finished epoch, curves and the numpy RNG state."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ndl.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
              "history": history, "rng": np.random.get_state(), **extra}, path)


def load_checkpoint(path, model, opt, expect=None):
    """Restore what :func:`save_checkpoint` wrote; -> (next epoch, history, checkpoint dict).

    ``expect`` maps extra keys to required values (e.g. ``{"task": "mnist"}``), so that a
    checkpoint of another run is refused before any state is loaded.
    """
    ckpt = ndl.load(path)
    for key in ("model", "optimizer", "epoch", "history"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {path!r} lacks {key!r} (keys: {sorted(ckpt)})")
    for key, value in (expect or {}).items():
        if key in ckpt and ckpt[key] != value:
            raise ValueError(f"checkpoint {path!r} was saved with {key}={ckpt[key]!r}, "
                             f"not {value!r}")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if "rng" in ckpt:
        np.random.set_state(ckpt["rng"])
    return ckpt["epoch"] + 1, ckpt["history"], ckpt


def plot_curves(history, path, title="training"):
    """Write a PNG with loss and accuracy (or perplexity) per epoch for train and test."""
    # A bare Figure: no pyplot state to leak and no change of the caller's backend.
    from matplotlib.figure import Figure

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    metric = "acc" if "train_acc" in history else "ppl"
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("test", "--s")):
        for ax, key in zip(axes, ("loss", metric)):
            values = history.get(f"{split}_{key}")
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style, label=split)
    axes[0].set_title("loss")
    axes[1].set_title("accuracy" if metric == "acc" else "perplexity")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
