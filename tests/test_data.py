"""Datasets, loaders and transforms on small files written here in the real formats
(idx gz, CIFAR-10 pickle batches, PTB text), plus bad-file and missing-file errors."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

import needle as ndl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA = os.environ.get("NEEDLE_DATA") or os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("NEEDLE_NO_DOWNLOAD", "1")


# ----- DataLoader and transforms -------------------------------------------

def test_dataloader_sequential_batches():
    X = np.arange(14 * 2, dtype=np.float32).reshape(14, 2)
    y = np.arange(14) % 3
    ds = ndl.data.NDArrayDataset(X, y)
    loader = ndl.data.DataLoader(ds, batch_size=5)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(5, 2), (5, 2), (4, 2)]
    assert len(loader) == 3
    for (bx, by), idx in zip(batches, np.array_split(np.arange(14), [5, 10])):
        assert isinstance(bx, ndl.Tensor) and isinstance(by, ndl.Tensor)
        np.testing.assert_array_equal(bx.numpy(), X[idx])
        np.testing.assert_array_equal(by.numpy(), y[idx])


def test_dataloader_shuffle_rng_order():
    X = np.arange(10, dtype=np.float32).reshape(10, 1)
    ds = ndl.data.NDArrayDataset(X)
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    loader = ndl.data.DataLoader(ds, batch_size=4, shuffle=True)
    assert np.array_equal(np.random.get_state()[1], state), "no RNG draw in __init__"
    got1 = np.concatenate([b[0].numpy().ravel() for b in loader])
    got2 = np.concatenate([b[0].numpy().ravel() for b in loader])
    np.random.seed(0)
    p1 = np.random.permutation(10)
    p2 = np.random.permutation(10)
    np.testing.assert_array_equal(got1, p1)
    np.testing.assert_array_equal(got2, p2)


def test_dataloader_empty_dataset_has_no_batches():
    for shuffle in (False, True):
        loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(np.zeros((0, 2))), 4, shuffle)
        assert len(loader) == 0 and list(loader) == []


def test_dataloader_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        ndl.data.DataLoader(ndl.data.NDArrayDataset(np.zeros(3)), batch_size=0)


def test_ndarray_dataset_lengths():
    ds = ndl.data.NDArrayDataset(np.zeros((4, 2)), np.arange(4))
    assert len(ds) == 4
    x, y = ds[2]
    assert x.shape == (2,) and y == 2
    with pytest.raises(ValueError, match="length"):
        ndl.data.NDArrayDataset(np.zeros(3), np.zeros(4))


def test_random_flip_horizontal():
    img = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    t = ndl.data.RandomFlipHorizontal(p=0.5)
    np.random.seed(1)
    outs = [t(img) for _ in range(6)]
    np.random.seed(1)
    for out in outs:
        expect = img[:, ::-1, :] if np.random.rand() < 0.5 else img
        np.testing.assert_array_equal(out, expect)
    assert any(not np.array_equal(o, img) for o in outs) and any(np.array_equal(o, img) for o in outs)


def test_random_crop():
    img = np.random.RandomState(0).rand(5, 6, 2).astype(np.float32)
    t = ndl.data.RandomCrop(padding=2)
    np.random.seed(3)
    outs = [t(img) for _ in range(5)]
    np.random.seed(3)
    for out in outs:
        sx, sy = np.random.randint(low=-2, high=3, size=2)
        expect = np.zeros_like(img)
        # out[i, j] = img[i + sx, j + sy] where that is inside the image, else 0
        for i in range(5):
            for j in range(6):
                if 0 <= i + sx < 5 and 0 <= j + sy < 6:
                    expect[i, j] = img[i + sx, j + sy]
        np.testing.assert_array_equal(out, expect)
        assert out.shape == img.shape


# ----- MNIST (idx gz) -------------------------------------------------------

def write_idx_images(path, images, magic=2051, n=None):
    n = len(images) if n is None else n
    rows, cols = images.shape[1:]
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", magic, n, rows, cols))
        f.write(images.astype(np.uint8).tobytes())


def write_idx_labels(path, labels, magic=2049):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", magic, len(labels)))
        f.write(labels.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_files(tmp_path):
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, size=(7, 28, 28))
    labels = rs.randint(0, 10, size=7)
    img, lab = tmp_path / "imgs-idx3-ubyte.gz", tmp_path / "labs-idx1-ubyte.gz"
    write_idx_images(img, images)
    write_idx_labels(lab, labels)
    return str(img), str(lab), images, labels


def test_mnist_dataset_reads_idx(mnist_files):
    img, lab, images, labels = mnist_files
    ds = ndl.data.MNISTDataset(img, lab)
    assert len(ds) == 7
    x, y = ds[3]
    assert x.shape == (784,) and x.dtype == np.float32
    np.testing.assert_allclose(x, images[3].reshape(-1) / 255.0, rtol=1e-6)
    assert y == labels[3]
    X, Y = ds[np.array([0, 5])]
    assert X.shape == (2, 784) and Y.shape == (2,)
    batch = next(iter(ndl.data.DataLoader(ds, 4)))
    assert batch[0].shape == (4, 784) and batch[1].shape == (4,)


def test_mnist_transforms_see_hwc(mnist_files):
    img, lab, images, _ = mnist_files
    seen = []

    def record(x):
        seen.append(x.shape)
        return x[:, ::-1, :]
    ds = ndl.data.MNISTDataset(img, lab, transforms=[record])
    x, _ = ds[1]
    assert seen == [(28, 28, 1)]
    np.testing.assert_allclose(x, (images[1][:, ::-1] / 255.0).reshape(-1), rtol=1e-6)
    X, _ = ds[np.array([2, 4])]             # an index array: each image in order
    assert seen[1:] == [(28, 28, 1)] * 2 and X.shape == (2, 784)
    np.testing.assert_allclose(X[1], (images[4][:, ::-1] / 255.0).reshape(-1), rtol=1e-6)
    X, Y = ds[np.array([], dtype=int)]
    assert X.shape == (0, 784) and Y.shape == (0,)


def test_mnist_bad_files(tmp_path, mnist_files):
    img, lab, images, labels = mnist_files
    bad_magic = tmp_path / "bad-idx3-ubyte.gz"
    write_idx_images(bad_magic, images, magic=1234)
    with pytest.raises(ValueError, match="magic number 1234"):
        ndl.data.MNISTDataset(str(bad_magic), lab)
    wrong_count = tmp_path / "short-idx3-ubyte.gz"
    write_idx_images(wrong_count, images, n=9)
    with pytest.raises(ValueError, match="9 images"):
        ndl.data.MNISTDataset(str(wrong_count), lab)
    not_gz = tmp_path / "plain.gz"
    not_gz.write_bytes(b"definitely not gzip data")
    with pytest.raises(ValueError, match="gzip"):
        ndl.data.MNISTDataset(str(not_gz), lab)
    with pytest.raises(ValueError, match="magic"):
        ndl.data.MNISTDataset(lab, lab)   # labels file given as images
    few = tmp_path / "few-idx1-ubyte.gz"
    write_idx_labels(few, labels[:3])
    with pytest.raises(ValueError, match="7 images.*3 labels"):
        ndl.data.MNISTDataset(img, str(few))


def test_mnist_missing_file_names_file_and_folder(tmp_path):
    folder = tmp_path / "mnist"
    with pytest.raises(FileNotFoundError) as e:
        ndl.data.MNISTDataset(str(folder / "train-images-idx3-ubyte.gz"),
                              str(folder / "train-labels-idx1-ubyte.gz"))
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(folder) in msg


@pytest.mark.skipif(not os.path.exists(os.path.join(REAL_DATA, "mnist",
                                                    "t10k-images-idx3-ubyte.gz")),
                    reason="real MNIST t10k files not present")
def test_real_mnist_t10k():
    d = os.path.join(REAL_DATA, "mnist")
    ds = ndl.data.MNISTDataset(os.path.join(d, "t10k-images-idx3-ubyte.gz"),
                               os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    assert len(ds) == 10000 and ds.X.shape == (10000, 784)
    assert 0.0 <= ds.X.min() and ds.X.max() <= 1.0
    assert sorted(np.unique(ds.y)) == list(range(10))


# ----- CIFAR-10 (pickle batches) ------------------------------------------

def write_cifar_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"labels": list(labels), b"data": data,
                     b"filenames": [b"x.png"] * len(labels)}, f)


@pytest.fixture
def cifar_dir(tmp_path):
    rs = np.random.RandomState(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rs.randint(0, 256, size=(3, 3072)).astype(np.uint8)
        labels = rs.randint(0, 10, size=3)
        write_cifar_batch(tmp_path / name, data, labels)
        batches[name] = (data, labels)
    return tmp_path, batches


def test_cifar10_dataset(cifar_dir):
    folder, batches = cifar_dir
    train = ndl.data.CIFAR10Dataset(str(folder), train=True)
    test = ndl.data.CIFAR10Dataset(str(folder), train=False)
    assert len(train) == 15 and len(test) == 3
    x, y = train[4]                      # second image of data_batch_2
    data, labels = batches["data_batch_2"]
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x, data[1].reshape(3, 32, 32) / 255.0, rtol=1e-6)
    assert y == labels[1]
    X, Y = test[np.arange(3)]
    assert X.shape == (3, 3, 32, 32) and Y.shape == (3,)
    flipped = ndl.data.CIFAR10Dataset(str(folder), train=False,
                                      transforms=[ndl.data.RandomFlipHorizontal(p=1.0)])
    np.testing.assert_allclose(flipped[0][0], test[0][0][:, :, ::-1])
    Xf, _ = flipped[1:3]                 # a slice: every image transformed, CHW kept
    np.testing.assert_allclose(Xf, test[1:3][0][:, :, :, ::-1])


def test_cifar10_bad_and_missing(tmp_path, cifar_dir):
    folder, _ = cifar_dir
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR-10 pickle"):
        ndl.data.CIFAR10Dataset(str(folder), train=False)
    write_cifar_batch(folder / "test_batch", np.zeros((2, 100), dtype=np.uint8), [1, 2])
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        ndl.data.CIFAR10Dataset(str(folder), train=False)
    empty = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError) as e:
        ndl.data.CIFAR10Dataset(str(empty), train=True)
    assert "data_batch_1" in str(e.value) and str(empty) in str(e.value)


# ----- PTB ----------------------------------------------------------------

@pytest.fixture
def ptb_dir(tmp_path):
    (tmp_path / "train.txt").write_text(" the cat sat \n the dog ran far \n a cat \n")
    (tmp_path / "test.txt").write_text(" the bird sat \n")
    return tmp_path


def test_ptb_corpus(ptb_dir):
    corpus = ndl.data.Corpus(str(ptb_dir))
    d = corpus.dictionary
    assert d.idx2word[:4] == ["the", "cat", "sat", "<eos>"]
    assert corpus.train == [0, 1, 2, 3, 0, 4, 5, 6, 3, 7, 1, 3]
    assert corpus.test == [0, 8, 2, 3]
    assert len(d) == 9 and d.word2idx["bird"] == 8
    assert d.add_word("cat") == 1
    limited = ndl.data.Corpus(str(ptb_dir), max_lines=1)
    assert limited.train == [0, 1, 2, 3]


def test_batchify_and_get_batch():
    data = list(range(23))
    b = ndl.data.batchify(data, 4, device=None, dtype="float32")
    assert b.shape == (5, 4)
    np.testing.assert_array_equal(b[:, 1], np.arange(5, 10))
    x, y = ndl.data.get_batch(b, 1, 3)
    assert x.shape == (3, 4) and y.shape == (12,)
    np.testing.assert_array_equal(x.numpy(), b[1:4])
    np.testing.assert_array_equal(y.numpy(), b[2:5].reshape(-1))
    x, y = ndl.data.get_batch(b, 3, 3)        # only one row of targets left
    assert x.shape == (1, 4) and y.shape == (4,)
    assert ndl.data.ptb_dataset.get_batch is ndl.data.datasets.get_batch
    with pytest.raises(ValueError, match="fewer"):
        ndl.data.batchify([1, 2], 4)


def test_ptb_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        ndl.data.Corpus(str(tmp_path))
    assert "train.txt" in str(e.value) and str(tmp_path) in str(e.value)


def test_missing_file_is_downloaded_when_allowed(tmp_path, monkeypatch):
    """The download path runs (with the network replaced by a local writer)."""
    from needle.data.datasets import _download
    monkeypatch.delenv("NEEDLE_NO_DOWNLOAD")
    rs = np.random.RandomState(2)
    images, labels = rs.randint(0, 256, size=(3, 28, 28)), rs.randint(0, 10, size=3)
    fetched = []

    def fake_fetch(url, dest):
        fetched.append(url)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if "images" in dest:
            write_idx_images(dest, images)
        else:
            write_idx_labels(dest, labels)
    monkeypatch.setattr(_download, "_fetch", fake_fetch)
    folder = tmp_path / "mnist"
    ds = ndl.data.MNISTDataset(str(folder / "t10k-images-idx3-ubyte.gz"),
                               str(folder / "t10k-labels-idx1-ubyte.gz"))
    assert len(ds) == 3 and len(fetched) == 2
    assert fetched[0].endswith("/t10k-images-idx3-ubyte.gz")

    def offline(url, dest):
        raise OSError("network unreachable")
    monkeypatch.setattr(_download, "_fetch", offline)
    with pytest.raises(FileNotFoundError, match="download failed.*network unreachable"):
        ndl.data.Corpus(str(tmp_path / "ptb"))
