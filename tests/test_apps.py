"""Apps end to end in tiny configurations: models, course helpers, the CLI trainer
(checkpoint/resume/plot), the demo, and the filters against scipy."""
import gzip
import os
import struct

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("NEEDLE_NO_DOWNLOAD", "1")


def _nparams(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


# ----- models -------------------------------------------------------------

def test_resnet9_parameter_count_and_forward():
    from apps.models import ResNet9
    model = ResNet9()
    assert _nparams(model) == 431946
    x = ndl.Tensor(np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32))
    out = model(x)
    assert out.shape == (2, 10)
    assert np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "transformer"])
def test_language_model_shapes_and_grads(seq_model):
    from apps.models import LanguageModel
    np.random.seed(0)
    model = LanguageModel(8, 11, 6, num_layers=2, seq_model=seq_model, seq_len=5)
    x = ndl.Tensor(np.random.randint(0, 11, size=(5, 3)).astype(np.float32), requires_grad=False)
    out, h = model(x)
    assert out.shape == (15, 11)
    if seq_model == "lstm":
        assert h[0].shape == (2, 3, 6) and h[1].shape == (2, 3, 6)
    elif seq_model == "rnn":
        assert h.shape == (2, 3, 6)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="seq_model"):
        LanguageModel(8, 11, 6, seq_model="gru")


def test_mlp_resnet_structure_and_epoch_lowers_loss():
    from apps.mlp_resnet import MLPResNet, ResidualBlock, epoch
    block = ResidualBlock(8, 4)
    assert _nparams(block) == (8 * 4 + 4) + 2 * 4 + (4 * 8 + 8) + 2 * 8
    model = MLPResNet(12, hidden_dim=8, num_blocks=2, num_classes=3)
    blocks = model.modules[2:4]
    assert blocks[0] is not blocks[1]
    rs = np.random.RandomState(0)
    X = rs.randn(60, 12).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.uint8) + (X[:, 1] > 1).astype(np.uint8)
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), 20, shuffle=True)
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    _, loss0 = epoch(loader, model)
    for _ in range(4):
        epoch(loader, model, opt)
    err1, loss1 = epoch(loader, model)
    assert loss1 < loss0 * 0.8
    assert 0.0 <= err1 <= 1.0


# ----- simple_ml ----------------------------------------------------------

def _write_mnist(folder, prefix, n, seed):
    rs = np.random.RandomState(seed)
    labels = rs.randint(0, 10, size=n).astype(np.uint8)
    images = (rs.rand(n, 28, 28) * 40).astype(np.uint8)
    for k in range(n):                      # a bright band whose row encodes the label
        images[k, 2 * labels[k]:2 * labels[k] + 3, :] = 250
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return images, labels


def test_simple_ml_mnist_helpers(tmp_path):
    import apps.simple_ml as sm
    images, labels = _write_mnist(str(tmp_path), "t10k", 200, 0)
    X, y = sm.parse_mnist(str(tmp_path / "t10k-images-idx3-ubyte.gz"),
                          str(tmp_path / "t10k-labels-idx1-ubyte.gz"))
    assert X.shape == (200, 784) and X.dtype == np.float32 and y.dtype == np.uint8
    np.testing.assert_allclose(X[5], images[5].reshape(-1) / 255.0, rtol=1e-6)
    Z = np.random.RandomState(1).randn(4, 10).astype(np.float32)
    yy = np.array([1, 2, 3, 4])
    onehot = np.eye(10, dtype=np.float32)[yy]
    expect = np.mean(np.log(np.exp(Z).sum(1)) - Z[np.arange(4), yy])
    got = sm.softmax_loss(ndl.Tensor(Z), ndl.Tensor(onehot)).numpy()
    np.testing.assert_allclose(np.asarray(got).reshape(()), expect, rtol=1e-5)
    np.random.seed(0)
    W1 = ndl.Tensor(np.random.randn(784, 32).astype(np.float32) / np.sqrt(32))
    W2 = ndl.Tensor(np.random.randn(32, 10).astype(np.float32) / np.sqrt(10))
    loss0, _ = sm.loss_err(ndl.relu(ndl.Tensor(X) @ W1) @ W2, y)
    for _ in range(3):
        W1, W2 = sm.nn_epoch(X, y, W1, W2, lr=0.2, batch=50)
    loss1, err1 = sm.loss_err(ndl.relu(ndl.Tensor(X) @ W1) @ W2, y)
    assert float(np.asarray(loss1).reshape(())) < float(np.asarray(loss0).reshape(())) * 0.7


def test_simple_ml_cifar_and_ptb_training_lowers_loss(tmp_path):
    import apps.simple_ml as sm
    from apps.models import LanguageModel, SmallConvNet
    rs = np.random.RandomState(0)
    X = rs.rand(24, 3, 8, 8).astype(np.float32)
    y = rs.randint(0, 3, size=24).astype(np.uint8)
    X[np.arange(24), y, 2:6, 2:6] += 2.0     # the label's channel is bright
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), 8)
    np.random.seed(0)
    model = SmallConvNet(3, 3, 8, width=4)
    acc0, loss0 = sm.evaluate_cifar10(model, loader)
    sm.train_cifar10(model, loader, n_epochs=3, lr=0.02)
    acc1, loss1 = sm.evaluate_cifar10(model, loader)
    assert loss1 < loss0

    text = " ".join(["a b c d e"] * 30)
    (tmp_path / "train.txt").write_text(text + "\n")
    (tmp_path / "test.txt").write_text(text + "\n")
    corpus = ndl.data.Corpus(str(tmp_path))
    data = ndl.data.batchify(corpus.train, 4)
    np.random.seed(0)
    lm = LanguageModel(6, len(corpus.dictionary), 8, seq_model="lstm")
    _, before = sm.evaluate_ptb(lm, data, seq_len=6)
    sm.train_ptb(lm, data, seq_len=6, n_epochs=3, lr=1.0, clip=1.0)
    acc, after = sm.evaluate_ptb(lm, data, seq_len=6)
    assert after < before * 0.8


def test_course_epochs_share_the_training_loop():
    """The course wrappers return exactly what the shared loop computes after seed(4)."""
    import apps.simple_ml as sm
    from apps.mlp_resnet import MLPResNet, epoch
    from apps.models import LanguageModel
    from apps.training import classification_epoch, ptb_epoch
    rs = np.random.RandomState(0)
    X = rs.randn(30, 2, 3).astype(np.float32)
    y = rs.randint(0, 3, size=30).astype(np.uint8)
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), 8, shuffle=True)
    np.random.seed(0)
    model = MLPResNet(6, hidden_dim=8, num_blocks=1, num_classes=3)
    err, loss = epoch(loader, model)
    np.random.seed(4)
    r = classification_epoch(loader, model, progress=False, flatten=True)
    assert (err, loss) == (r["err"], r["loss"]) and r["err"] == pytest.approx(1 - r["acc"])
    data = ndl.data.batchify(rs.randint(0, 7, size=90), 3)
    np.random.seed(0)
    lm = LanguageModel(4, 7, 5, seq_model="rnn")
    acc, loss = sm.epoch_general_ptb(data, lm, seq_len=7)
    np.random.seed(4)
    r = ptb_epoch(data, lm, 7, progress=False)
    assert (acc, loss) == (r["acc"], r["loss"]) and r["count"] == 29 * 3   # every target once
    with pytest.raises(ValueError, match="seq_len"):
        ptb_epoch(data, lm, 0, progress=False)


def test_epoch_progress_bar_path():
    pytest.importorskip("tqdm")
    from apps.models import LanguageModel
    from apps.training import classification_epoch, ptb_epoch
    X = np.random.RandomState(0).rand(10, 4).astype(np.float32)
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, np.arange(10) % 2), 4)
    np.random.seed(0)
    model = nn.Linear(4, 2)
    quiet = classification_epoch(loader, model, progress=False)
    shown = classification_epoch(loader, model, desc="eval", progress=True)
    assert shown["loss"] == quiet["loss"] and shown["acc"] == quiet["acc"]
    lm = LanguageModel(4, 5, 3, seq_model="lstm")
    data = ndl.data.batchify(np.arange(40) % 5, 2)
    assert ptb_epoch(data, lm, 6, desc="eval")["count"] == 19 * 2


# ----- CLI trainer, checkpoints, plots --------------------------------------

def test_train_cli_digits_checkpoint_resume_plot(tmp_path):
    from apps import train
    ckpt, png = str(tmp_path / "d.ckpt"), str(tmp_path / "curves.png")
    common = ["digits", "--device", "cpu", "--limit", "160", "--batch-size", "32",
              "--checkpoint", ckpt, "--plot", png, "--no-progress"]
    model, hist = train.main(common + ["--epochs", "1"])
    assert len(hist["train_loss"]) == 1 and os.path.exists(ckpt)
    saved = ndl.load(ckpt)
    assert saved["epoch"] == 0 and "model" in saved and "optimizer" in saved
    model2, hist2 = train.main(common + ["--epochs", "2", "--resume"])
    assert len(hist2["train_loss"]) == 2
    assert hist2["train_loss"][0] == hist["train_loss"][0]
    assert ndl.load(ckpt)["epoch"] == 1
    with open(png, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_train_cli_mnist_split_and_ptb(tmp_path):
    from apps import train
    _write_mnist(str(tmp_path / "mnist"), "t10k", 120, 3)
    _, hist = train.main(["mnist", "--data", str(tmp_path / "mnist"), "--split", "100",
                          "--epochs", "2", "--batch-size", "20", "--lr", "0.01", "--no-progress",
                          "--scheduler", "cosine"])
    assert hist["train_loss"][1] < hist["train_loss"][0]
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "valid.txt").write_text(" ".join(["x y z w"] * 40) + "\n")
    (ptb / "test.txt").write_text(" ".join(["x y z w"] * 10) + "\n")
    _, hist = train.main(["ptb", "--data", str(ptb), "--train-file", "valid.txt", "--epochs", "2",
                          "--batch-size", "4", "--seq-len", "5", "--embedding-size", "6",
                          "--hidden-size", "6", "--lr", "1.0", "--no-progress",
                          "--checkpoint", str(tmp_path / "p.ckpt")])
    assert hist["train_loss"][1] < hist["train_loss"][0]
    assert hist["test_ppl"][1] == pytest.approx(np.exp(hist["test_loss"][1]))


def test_train_cli_bad_arguments(tmp_path):
    from apps import train
    with pytest.raises(SystemExit):
        train.main(["digits", "--epochs", "0"])
    with pytest.raises(SystemExit):
        train.main(["digits", "--resume"])
    with pytest.raises(SystemExit):
        train.main(["imagenet"])
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        train.main(["mnist", "--data", str(tmp_path / "none"), "--split", "10", "--no-progress"])
    for bad in (["--seq-len", "0"], ["--clip", "-1"], ["--limit", "0"]):
        with pytest.raises(SystemExit):
            train.main(["ptb"] + bad)


def test_train_cli_resume_refuses_other_task(tmp_path):
    from apps import train
    ckpt = str(tmp_path / "d.ckpt")
    train.main(["digits", "--limit", "64", "--epochs", "1", "--checkpoint", ckpt,
                "--no-progress"])
    _write_mnist(str(tmp_path / "mnist"), "t10k", 40, 0)
    with pytest.raises(ValueError, match="task='digits'"):
        train.main(["mnist", "--data", str(tmp_path / "mnist"), "--split", "30", "--epochs", "2",
                    "--checkpoint", ckpt, "--resume", "--no-progress"])


def test_checkpoint_round_trip(tmp_path):
    from apps.models import SmallConvNet
    from apps.training import load_checkpoint, save_checkpoint
    np.random.seed(0)
    a = SmallConvNet(1, 10, 8, width=4)
    oa = ndl.optim.Adam(a.parameters(), lr=0.01)
    x = ndl.Tensor(np.random.rand(5, 1, 8, 8).astype(np.float32))
    y = ndl.Tensor(np.array([1, 2, 3, 4, 5]))
    for _ in range(2):
        oa.reset_grad()
        nn.SoftmaxLoss()(a(x), y).backward()
        oa.step()
    path = str(tmp_path / "sub" / "c.ckpt")
    save_checkpoint(path, a, oa, 3, {"train_loss": [1.0]})
    b = SmallConvNet(1, 10, 8, width=4)
    ob = ndl.optim.Adam(b.parameters(), lr=0.5)
    start, hist, _ = load_checkpoint(path, b, ob)
    assert start == 4 and hist == {"train_loss": [1.0]} and ob.t == 2 and ob.lr == 0.01
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    with pytest.raises(FileNotFoundError):
        ndl.load(str(tmp_path / "missing.ckpt"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a needle checkpoint"):
        ndl.load(str(bad))


# ----- demo -----------------------------------------------------------------

def test_demo_tiny(tmp_path):
    from apps import demo
    png = str(tmp_path / "demo.png")
    r = demo.main(epochs=2, n_train=400, plot=png, progress=False, verbose=False)
    assert r["history"]["train_loss"][1] < r["history"]["train_loss"][0]
    assert r["test_acc"] > 0.6
    with open(png, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with pytest.raises(ValueError, match="epochs"):
        demo.main(epochs=0, plot=None)


@pytest.mark.slow
def test_demo_full_reaches_95(tmp_path):
    from apps import demo
    r = demo.main(plot=str(tmp_path / "demo.png"), progress=False, verbose=False)
    assert r["test_acc"] >= 0.95


# ----- filters --------------------------------------------------------------

def test_filters_against_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    from apps import filters
    img = np.random.RandomState(0).rand(9, 11, 3).astype(np.float32)
    blurred = filters.gaussian_blur(img, sigma=1.0)
    expect = ndimage.gaussian_filter(img.astype(np.float64), sigma=(1.0, 1.0, 0), mode="constant",
                                     truncate=3.0)
    np.testing.assert_allclose(blurred, expect, rtol=1e-5, atol=1e-6)
    wrapped = filters.gaussian_blur(img, sigma=0.8, padding_mode="circular")
    k = filters.gaussian_kernel(0.8)
    for c in range(3):
        np.testing.assert_allclose(wrapped[:, :, c], ndimage.correlate(img[:, :, c], k, mode="wrap"),
                                   rtol=1e-5, atol=1e-6)
    gray = img.mean(axis=2)
    mag = filters.sobel_magnitude(gray)
    expect = np.hypot(ndimage.sobel(gray.astype(np.float64), axis=0, mode="constant"),
                      ndimage.sobel(gray.astype(np.float64), axis=1, mode="constant"))
    np.testing.assert_allclose(mag, expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        filters.depthwise(img, np.ones((2, 2)))
    with pytest.raises(ValueError, match="sigma"):
        filters.gaussian_kernel(0)


def test_filters_main_writes_pngs(tmp_path):
    from apps import filters
    paths = filters.main(out=str(tmp_path), sigma=1.0, downscale=8)
    for p in paths.values():
        with open(p, "rb") as f:
            assert f.read(8) == PNG_MAGIC
