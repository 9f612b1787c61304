"""Checkpoints that are data: ``needle.save(obj, path)`` / ``needle.load(path, device=None)``.

Files are in the safetensors format (https://github.com/huggingface/safetensors): a
JSON header, then raw little-endian tensor bytes. Loading reads numbers and JSON
only, so a checkpoint from anywhere cannot run code (a pickle could: its
``__reduce__`` calls any function it names). ``obj`` may nest dicts, lists and
tuples of Tensors, NDArrays, numpy arrays, numbers, strings, bools and None:

- every array becomes one safetensors tensor named by its path (a state dict's own
  keys at the top level, ``"model/0.weight"`` below a key), on the host, in its dtype;
- the rest of ``obj`` is JSON in the header's ``__metadata__["needle"]``, with each
  array replaced by ``{"__tensor__": name, "type": "Tensor" | "NDArray" | "ndarray"}``.

Any other safetensors file (weights exported by PyTorch or Hugging Face) loads as a
dict of name -> Tensor. Writes go to a temporary file in the same folder, are
flushed to disk and renamed over the target, so a crash mid-save never corrupts the
previous checkpoint.
"""
import json
import numbers
import os
import tempfile

import numpy as np

_FORMAT = "needle-1"


def _looks_like_pickle(path):
    """A pickle of protocol >= 2 opens with the PROTO opcode 0x80 and the protocol number."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ImportError("needle.save/load need the safetensors package: pip install safetensors") from None
    return safetensors


# ---- save --------------------------------------------------------------------------
class _Encoder:
    """Splits ``obj`` into a JSON skeleton and a dict of host arrays."""

    def __init__(self):
        self.arrays = {}

    def _array_leaf(self, kind, array, path):
        name = path or "tensor"
        if name in self.arrays:  # a key that itself contains "/" met another path
            i = 1
            while f"{name}#{i}" in self.arrays:
                i += 1
            name = f"{name}#{i}"
        self.arrays[name] = np.asarray(array, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        return {"__tensor__": name, "type": kind}

    def encode(self, obj, path=""):
        from .autograd import Tensor
        from .backend_selection import NDArray

        child = (lambda key: f"{path}/{key}" if path else str(key))
        if isinstance(obj, Tensor):
            return self._array_leaf("Tensor", obj.numpy(), path)
        if NDArray is not np.ndarray and isinstance(obj, NDArray):
            return self._array_leaf("NDArray", obj.numpy(), path)
        if isinstance(obj, np.ndarray):
            return self._array_leaf("ndarray", obj, path)
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, numbers.Integral):
            return int(obj)
        if isinstance(obj, numbers.Real):
            return float(obj)
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, child(k)) for k, v in obj.items()}
            for k in obj:
                if not isinstance(k, (str, bool, numbers.Integral, type(None))):
                    raise TypeError(f"needle.save: dict key {k!r} at {path or 'the top'!r} is a "
                                    f"{type(k).__name__}; keys must be str, int, bool or None")
            return {"__dict__": [[self.encode(k), self.encode(v, child(k))] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, child(i)) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, child(i)) for i, v in enumerate(obj)]
        raise TypeError(
            f"needle.save: cannot store a {type(obj).__name__} at {path or 'the top'!r}; checkpoints "
            f"hold Tensors, NDArrays, numpy arrays, numbers, strings, bools, None, and dicts, lists "
            f"and tuples of them")


def save(obj, path):
    """Write ``obj`` (Tensors, NDArrays, numpy arrays, plain values, and dicts, lists and
    tuples of them) to ``path`` in the safetensors format, atomically."""
    st = _safetensors()
    path = os.fspath(path)
    encoder = _Encoder()
    skeleton = encoder.encode(obj)
    metadata = {"format": _FORMAT, "needle": json.dumps(skeleton)}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        os.close(fd)
        st.numpy.save_file(encoder.arrays, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- load --------------------------------------------------------------------------
def _not_a_checkpoint(path, why):
    return ValueError(f"needle.load: {path!r} is not a needle checkpoint ({why})")


def _read(path):
    """(metadata dict or None, {name: numpy array}) of a safetensors file; ValueError otherwise."""
    st = _safetensors()
    try:
        with st.safe_open(path, framework="numpy") as f:
            metadata = f.metadata()
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except (st.SafetensorError, OSError, ValueError, TypeError) as e:
        if _looks_like_pickle(path):
            raise _not_a_checkpoint(path, "it is a pickle; needle checkpoints are safetensors files, and "
                                          "pickles are never loaded because unpickling can run code") from None
        raise _not_a_checkpoint(path, f"{type(e).__name__}: {e}") from None
    return metadata, arrays


class _Decoder:
    def __init__(self, path, arrays, device):
        self.path, self.arrays, self.device = path, arrays, device
        self.used = set()

    def _leaf(self, node):
        from .autograd import Tensor
        from .backend_selection import NDArray, default_device

        name, kind = node.get("__tensor__"), node.get("type")
        if name not in self.arrays:
            raise _not_a_checkpoint(self.path, f"its header names a tensor {name!r} the file does not hold")
        self.used.add(name)
        array = self.arrays[name]
        if kind == "Tensor":
            return Tensor(array, device=self.device, dtype=array.dtype, requires_grad=False)
        if kind == "NDArray":
            if NDArray is np.ndarray:
                return array
            return NDArray(array, device=self.device or default_device())
        if kind == "ndarray":
            return array
        raise _not_a_checkpoint(self.path, f"unknown array kind {kind!r}")

    def decode(self, node):
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "__tensor__" in node:
            return self._leaf(node)
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            return {self.decode(k): self.decode(v) for k, v in node["__dict__"]}
        return {k: self.decode(v) for k, v in node.items()}


def load(path, device=None):
    """Read a file written by :func:`save` (or any safetensors file, as a dict of name ->
    Tensor); arrays land on ``device`` (the default device when None).

    Never unpickles: a pickle, a truncated file, a header that disagrees with the file's
    size or an unknown layout is a ValueError naming the file.
    """
    from .autograd import Tensor

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"needle.load: no such checkpoint {path!r}")
    metadata, arrays = _read(path)
    if not metadata or metadata.get("format") != _FORMAT:
        return {name: Tensor(a, device=device, dtype=a.dtype, requires_grad=False) for name, a in arrays.items()}
    try:
        skeleton = json.loads(metadata["needle"])
    except (KeyError, ValueError) as e:
        raise _not_a_checkpoint(path, f"its metadata is not valid JSON ({e})") from None
    return _Decoder(path, arrays, device).decode(skeleton)
