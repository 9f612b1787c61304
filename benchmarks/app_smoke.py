"""Each app's tiny configuration trained one short epoch on a device, its losses compared
with the same run on a reference device.

    python benchmarks/app_smoke.py --device cuda --reference cpu --out apps.json [--budget 60]

The apps are `python -m apps.train`'s tasks and the demo, on data that needs no download:
digits (scikit-learn's bundled 8x8 digits, SmallConvNet), mnist (a synthetic idx file,
MLPResNet), cifar10 (synthetic pickle batches, ResNet9 with augmentation), ptb with the
rnn, lstm and transformer models (a synthetic corpus), and apps.demo. Both runs start from
the same seed, so they draw the same weights, batches and dropout masks: the first epoch's
training and test losses must be finite and agree within RTOL (the reference backend is
itself checked against numpy by the test suite). The JSON is rewritten after every app, so
a run stopped at its time limit keeps the apps that finished.
"""
import argparse
import gzip
import json
import math
import os
import pickle
import struct
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (os.path.join(ROOT, "python"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

# Relative tolerance between the device's and the reference's first-epoch losses: float32
# sums in another order, over a few optimizer steps, stay far inside it; a wrong kernel does not.
RTOL = 1e-3


# ---- synthetic data in the formats the readers expect -------------------------------
def write_mnist_t10k(folder, n, seed=0):
    """idx files of n 28x28 images whose bright band's row encodes the label (learnable)."""
    rs = np.random.RandomState(seed)
    labels = rs.randint(0, 10, size=n).astype(np.uint8)
    images = (rs.rand(n, 28, 28) * 40).astype(np.uint8)
    for k in range(n):
        images[k, 2 * labels[k]:2 * labels[k] + 3, :] = 250
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(folder, "t10k-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    with gzip.open(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.tobytes())


def write_cifar10(folder, per_batch, seed=0):
    """The five training batches and the test batch, per_batch random images each."""
    rs = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rs.randint(0, 10, size=per_batch)
        data = rs.randint(0, 256, size=(per_batch, 3 * 32 * 32)).astype(np.uint8)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data}, f)


def write_ptb(folder, words, seed=0):
    """train.txt and test.txt drawn from a 30-word vocabulary, a few words per line."""
    rs = np.random.RandomState(seed)
    vocab = [f"w{i}" for i in range(30)]
    os.makedirs(folder, exist_ok=True)
    for name, n in (("train.txt", words), ("test.txt", words // 4)):
        tokens = rs.choice(vocab, size=n)
        lines = [" ".join(tokens[i:i + 12]) for i in range(0, n, 12)]
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(lines) + "\n")


# ---- the apps -------------------------------------------------------------------------
def app_configs(data, tiny):
    """{name: argv for apps.train without --device} (the demo: its keyword arguments)."""
    n = 64 if tiny else 256  # training samples: 2 or 8 steps of 32
    common = ["--epochs", "1", "--no-progress", "--seed", "0"]
    ptb = ["ptb", "--data", os.path.join(data, "ptb"), "--batch-size", "4", "--seq-len", "8",
           "--embedding-size", "16", "--hidden-size", "16", "--lr", "1.0"] + common
    return {
        "digits": ["digits", "--limit", str(n), "--batch-size", "32"] + common,
        "mnist": ["mnist", "--data", os.path.join(data, "mnist"), "--split", str(n), "--batch-size", "32",
                  "--hidden", "32"] + common,
        "cifar10": ["cifar10", "--data", os.path.join(data, "cifar10"), "--batch-size", "32", "--limit", str(n),
                    "--augment"] + common,
        "ptb_rnn": ptb + ["--seq-model", "rnn"],
        "ptb_lstm": ptb + ["--seq-model", "lstm"],
        "ptb_transformer": ptb + ["--seq-model", "transformer"],
        "demo": {"epochs": 1, "n_train": n, "plot": None, "progress": False, "verbose": False},
    }


def write_data(data, tiny):
    n = 64 if tiny else 256
    write_mnist_t10k(os.path.join(data, "mnist"), n + 32)
    write_cifar10(os.path.join(data, "cifar10"), max(n // 5, 8) + 1)
    write_ptb(os.path.join(data, "ptb"), 400 if tiny else 1600)


def train_once(name, config, device_name):
    """One run of an app -> its first epoch's losses and the wall time."""
    from apps import demo, train
    start = time.perf_counter()
    if name == "demo":
        hist = demo.main(device=train.get_device(device_name), **config)["history"]
    else:
        _, hist = train.main(config + ["--device", device_name])
    return {"train_loss": float(hist["train_loss"][0]), "test_loss": float(hist["test_loss"][0]),
            "seconds": round(time.perf_counter() - start, 3)}


def compare(run, ref):
    """'ok' when both losses are finite and agree within RTOL, else what is wrong."""
    problems = []
    for key in ("train_loss", "test_loss"):
        a, b = run[key], ref[key]
        if not (math.isfinite(a) and math.isfinite(b)):
            problems.append(f"{key} not finite ({a} vs {b})")
        elif abs(a - b) > RTOL * max(abs(b), 1e-12):
            problems.append(f"{key} {a:.6g} vs reference {b:.6g} (rel {abs(a - b) / max(abs(b), 1e-12):.2e})")
    return "ok" if not problems else "; ".join(problems)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="device under test (cuda, cpu, cpu_numpy)")
    ap.add_argument("--reference", default="cpu", help="device whose losses the runs must match")
    ap.add_argument("--out", required=True, help="JSON file, rewritten after every app")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds; apps not started by then are cut")
    ap.add_argument("--tiny", action="store_true", help="fewer samples (the CPU dry run)")
    ap.add_argument("--only", default=None, help="comma-separated app names")
    args = ap.parse_args(argv)
    os.environ.setdefault("NEEDLE_NO_DOWNLOAD", "1")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="needle-apps-") as data:
        write_data(data, args.tiny)
        return run_apps(args, app_configs(data, args.tiny), start)


def run_apps(args, configs, start):
    """Each app on both devices, in turn; one not started when the longest app so far would
    overrun the budget is cut. -> exit status (0: every app ok)."""
    if args.only:
        unknown = set(args.only.split(",")) - set(configs)
        if unknown:
            raise SystemExit(f"app_smoke: unknown apps {sorted(unknown)}; choose from {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    out = {"device": args.device, "reference": args.reference, "rtol": RTOL, "apps": {}}
    longest = 0.0
    for name, config in configs.items():
        began = time.perf_counter()
        if began - start + longest > args.budget:
            out["apps"][name] = {"status": f"cut: the {args.budget:.0f} s budget would be overrun"}
        else:
            entry = {}
            try:
                entry["device"] = train_once(name, config, args.device)
                entry["reference"] = train_once(name, config, args.reference)
                entry["status"] = compare(entry["device"], entry["reference"])
            except Exception as e:  # one app's failure must not hide the others
                entry["status"] = f"error: {type(e).__name__}: {e}"
                entry["traceback"] = traceback.format_exc()[-2000:]
            out["apps"][name] = entry
            longest = max(longest, time.perf_counter() - began)
            print(f"app {name}: {entry['status']} {json.dumps({k: entry.get(k) for k in ('device', 'reference')})}",
                  flush=True)
        out["seconds"] = round(time.perf_counter() - start, 2)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0 if all(e["status"] == "ok" for e in out["apps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
