"""Real-data training targets (slow; not part of the timed tests).

    python benchmarks/train_targets.py [--data ../shared/data] [--device cpu] [--only mnist|ptb]

1. MLPResNet(784, 100), Adam(lr=1e-3, weight_decay=1e-3), batch 100, trained on the
   first 8,000 MNIST t10k images: target >= 94% accuracy on the last 2,000 within 5 epochs.
2. LSTM LanguageModel (embedding 64, hidden 64), batch 16, seq_len 20, SGD lr 4,
   clip 0.25, trained on ptb/valid.txt: target test perplexity <= 550 on ptb/test.txt
   after 2 epochs.

Prints accuracy / perplexity and time per epoch, and exits non-zero if a target is missed.
Data: ``--data``, else ``$NEEDLE_DATA``, else ``../shared/data`` beside the repository.
"""
import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "python"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np

import needle as ndl
from apps.mlp_resnet import MLPResNet, epoch
from apps.models import LanguageModel
from apps.train import get_device, ptb_epoch


def mnist_target(data_dir, device, epochs=5, progress=True):
    full = ndl.data.MNISTDataset(os.path.join(data_dir, "mnist", "t10k-images-idx3-ubyte.gz"),
                                 os.path.join(data_dir, "mnist", "t10k-labels-idx1-ubyte.gz"))
    train = ndl.data.NDArrayDataset(full.X[:8000], full.y[:8000])
    test = ndl.data.NDArrayDataset(full.X[8000:], full.y[8000:])
    np.random.seed(0)
    model = MLPResNet(784, 100).to(device)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    train_loader = ndl.data.DataLoader(train, 100, shuffle=True, device=device)
    test_loader = ndl.data.DataLoader(test, 100, device=device)
    best = 0.0
    for e in range(epochs):
        t0 = time.perf_counter()
        train_err, train_loss = epoch(train_loader, model, opt)
        seconds = time.perf_counter() - t0
        test_err, test_loss = epoch(test_loader, model)
        best = max(best, 1 - test_err)
        print(f"[mnist] epoch {e + 1}/{epochs}: train acc {1 - train_err:.4f} loss "
              f"{train_loss:.4f} | test acc {1 - test_err:.4f} loss {test_loss:.4f} | "
              f"{seconds:.1f}s/epoch", flush=True)
    ok = best >= 0.94
    print(f"[mnist] best test accuracy {best * 100:.2f}% (target >= 94%): "
          f"{'PASS' if ok else 'FAIL'}", flush=True)
    return ok, best


def ptb_target(data_dir, device, epochs=2, progress=True):
    corpus = ndl.data.Corpus(os.path.join(data_dir, "ptb"), train_file="valid.txt",
                             test_file="test.txt")
    bs, seq_len = 16, 20
    train = ndl.data.batchify(corpus.train, bs, device=device)
    test = ndl.data.batchify(corpus.test, bs, device=device)
    np.random.seed(0)
    model = LanguageModel(64, len(corpus.dictionary), 64, num_layers=1, seq_model="lstm",
                          seq_len=seq_len, device=device)
    opt = ndl.optim.SGD(model.parameters(), lr=4.0)
    ppl = float("inf")
    for e in range(epochs):
        tr = ptb_epoch(train, model, seq_len, opt, 0.25, device, f"ptb epoch {e + 1}", progress)
        te = ptb_epoch(test, model, seq_len, None, None, device, "ptb eval", progress)
        ppl = te["ppl"]
        print(f"[ptb] epoch {e + 1}/{epochs}: train ppl {tr['ppl']:.1f} | test ppl {ppl:.1f} "
              f"acc {te['acc']:.4f} | {tr['seconds']:.1f}s/epoch "
              f"({tr['tokens_per_s']:.0f} tokens/s)", flush=True)
    ok = ppl <= 550
    print(f"[ptb] vocabulary {len(corpus.dictionary)}, test perplexity {ppl:.1f} "
          f"(target <= 550): {'PASS' if ok else 'FAIL'}", flush=True)
    return ok, ppl


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("NEEDLE_DATA") or
                   os.path.join(os.path.dirname(ROOT), "shared", "data"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "cpu_numpy"))
    p.add_argument("--only", choices=("mnist", "ptb"), default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    device = get_device(args.device)
    results = []
    if args.only in (None, "mnist"):
        results.append(mnist_target(args.data, device, progress=not args.no_progress)[0])
    if args.only in (None, "ptb"):
        results.append(ptb_target(args.data, device, progress=not args.no_progress)[0])
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
