"""Fetch a missing dataset file, or explain exactly what to put where when offline.

Downloads use urllib with a short timeout and are written atomically. Set
``NEEDLE_NO_DOWNLOAD=1`` to never touch the network.
"""
import os
import shutil
import tempfile
import urllib.request

TIMEOUT_S = 10


class DatasetMissingError(FileNotFoundError):
    """A dataset file is absent and could not be downloaded."""


def _fetch(url, dest):
    folder = os.path.dirname(os.path.abspath(dest))
    # The response is closed on every path, including a failure to create the temp file.
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:   # fails fast when offline
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
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
