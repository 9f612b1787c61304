"""needle.save / needle.load: the safetensors format, round trips, and files that must
never run code or load silently wrong (pickles, truncated files, lying headers)."""
import json
import os
import pickle
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import needle as ndl
import needle.nn as nn
from devices import DEVICES


def _small_model(device):
    return nn.Sequential(nn.Linear(3, 5, device=device), nn.BatchNorm1d(5, device=device), nn.ReLU(),
                         nn.Linear(5, 2, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_model_and_optimizer_round_trip(device, tmp_path):
    np.random.seed(0)
    a = _small_model(device)
    opt = ndl.optim.Adam(a.parameters(), lr=0.01)
    x = ndl.Tensor(np.random.randn(8, 3).astype(np.float32), device=device)
    for _ in range(2):
        opt.reset_grad()
        a(x).sum().backward()
        opt.step()
    ckpt = {"model": a.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
            "history": {"loss": [1.5, float("inf")], "note": None}, "shape": (2, 3)}
    path = tmp_path / "ckpt.safetensors"
    ndl.save(ckpt, path)
    got = ndl.load(path, device=device)
    assert got["epoch"] == 7 and got["shape"] == (2, 3) and got["history"]["note"] is None
    assert got["history"]["loss"] == [1.5, float("inf")]
    b = _small_model(device)
    ob = ndl.optim.Adam(b.parameters(), lr=0.5)
    b.load_state_dict(got["model"])
    ob.load_state_dict(got["optimizer"])
    assert ob.t == opt.t == 2 and ob.lr == 0.01
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    # one more identical step on both keeps them identical (moments were restored)
    for m, o in ((a, opt), (b, ob)):
        m.train()
        o.reset_grad()
        m(x).sum().backward()
        o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_state_dict_is_a_plain_safetensors_file(tmp_path):
    """A saved state dict keeps its own names, so other safetensors readers see them."""
    m = _small_model(None)
    path = tmp_path / "weights.safetensors"
    ndl.save(m.state_dict(), path)
    raw = safetensors.numpy.load_file(str(path))
    assert set(raw) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "3.weight", "3.bias"}
    np.testing.assert_array_equal(raw["3.weight"], m[3].weight.numpy() if hasattr(m, "__getitem__")
                                  else m.modules[3].weight.numpy())


def test_foreign_safetensors_file_loads_as_tensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    safetensors.numpy.save_file({"encoder.weight": w, "step": np.array(3, dtype=np.int64)}, str(path))
    got = ndl.load(path)
    assert set(got) == {"encoder.weight", "step"}
    assert isinstance(got["encoder.weight"], ndl.Tensor)
    np.testing.assert_array_equal(got["encoder.weight"].numpy(), w)
    assert got["step"].dtype == "int64" and got["step"].item() == 3


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64",
                                   "uint8", "bool"])
def test_every_dtype_and_odd_shape_round_trips(dtype, tmp_path):
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(1)
    arrays = [(rng.standard_normal((3, 1, 4)) * 5).astype(np_dtype), np.zeros((0, 3), dtype=np_dtype),
              np.asarray(rng.standard_normal(()) * 5).astype(np_dtype)]
    obj = {"t": [ndl.Tensor(a, dtype=dtype) for a in arrays], "raw": arrays[0]}
    ndl.save(obj, tmp_path / "x")
    got = ndl.load(tmp_path / "x")
    for a, t in zip(arrays, got["t"]):
        assert t.dtype == dtype and t.shape == a.shape
        np.testing.assert_array_equal(t.numpy(), a)
    assert isinstance(got["raw"], np.ndarray) and got["raw"].dtype == np_dtype
    np.testing.assert_array_equal(got["raw"], arrays[0])


def test_views_non_str_keys_and_ndarrays(tmp_path):
    base = ndl.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = base.transpose()  # a strided view is stored by value
    nd = ndl.NDArray(np.ones((2, 2), dtype=np.float32)) if ndl.backend_selection.BACKEND == "nd" else \
        np.ones((2, 2), dtype=np.float32)
    obj = {"view": view, "by_index": {0: base, 1: "x", True: 2.5}, "nd": nd, "__weird": 1}
    ndl.save(obj, tmp_path / "x")
    got = ndl.load(tmp_path / "x")
    np.testing.assert_array_equal(got["view"].numpy(), base.numpy().T)
    assert set(got["by_index"]) == {0, 1, True} or set(got["by_index"]) == {0, 1}  # True == 1 in Python
    np.testing.assert_array_equal(got["by_index"][0].numpy(), base.numpy())
    assert type(got["nd"]) is type(nd) and got["__weird"] == 1


def test_unstorable_value_names_the_path_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "c"
    ndl.save({"a": 1}, path)
    with pytest.raises(TypeError, match=r"set.*'opt/hyper'"):
        ndl.save({"opt": {"hyper": {1, 2}}}, path)
    assert ndl.load(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["c"]  # no temporary file left behind


class _Exploit:
    """A pickle that runs code when loaded: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"model": _Exploit(str(marker))}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.ckpt.*pickle"):
        ndl.load(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=0))  # text protocol, no opcode 0x80
    with pytest.raises(ValueError, match="not a needle checkpoint"):
        ndl.load(path)
    assert not marker.exists()


def test_truncated_file_is_a_value_error(tmp_path):
    path = tmp_path / "full"
    ndl.save({"w": ndl.Tensor(np.ones((64, 64), dtype=np.float32))}, path)
    data = path.read_bytes()
    for cut in (0, 4, 8, 20, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}"):
            ndl.load(bad)


def _write_raw(path, header, payload):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)


@pytest.mark.parametrize("case", ["offsets_past_end", "shape_disagrees", "overlap", "huge_header"])
def test_header_that_lies_is_a_value_error(case, tmp_path):
    payload = np.arange(4, dtype=np.float32).tobytes()
    tensors = {
        "offsets_past_end": {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}},
        "shape_disagrees": {"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 16]}},
        "overlap": {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
    }
    path = tmp_path / f"{case}.safetensors"
    if case == "huge_header":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    else:
        _write_raw(path, tensors[case], payload)
    with pytest.raises(ValueError, match=case):
        ndl.load(path)


def test_header_naming_a_missing_tensor(tmp_path):
    path = tmp_path / "dangling.safetensors"
    safetensors.numpy.save_file(
        {"a": np.zeros(2, np.float32)}, str(path),
        metadata={"format": "needle-1", "needle": json.dumps({"w": {"__tensor__": "nope", "type": "Tensor"}})})
    with pytest.raises(ValueError, match="dangling.*'nope'"):
        ndl.load(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        ndl.load("/nonexistent/dir/x.safetensors")
