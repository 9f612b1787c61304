"""Weights exchanged with PyTorch: the same input gives the same outputs in both
frameworks after moving the weights either way (needle.interop)."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle.interop import load_torch_state_dict, torch_state_dict

torch = pytest.importorskip("torch")
tnn = torch.nn


# ---- the same three architectures in both frameworks ----------------------------------
class NdlConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv(3, 8, 3, stride=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv(8, 4, 3, stride=2, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.head(self.features(x).reshape((x.shape[0], 64)))


class TorchConvNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(),
                                       tnn.Conv2d(8, 4, 3, stride=2, padding=1, bias=False),
                                       tnn.BatchNorm2d(4), tnn.ReLU())
        self.head = tnn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.features(x).reshape(x.shape[0], 64))


def ndl_mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 3))


def torch_mlp():
    return tnn.Sequential(tnn.Linear(6, 16), tnn.ReLU(), tnn.Linear(16, 16), tnn.LayerNorm(16), tnn.ReLU(),
                          tnn.Linear(16, 3))


class NdlLM(nn.Module):
    def __init__(self, vocab, emb, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.lstm(self.embedding(x))
        return self.decoder(out.reshape((out.shape[0] * out.shape[1], out.shape[2])))


class TorchLM(tnn.Module):
    def __init__(self, vocab, emb, hidden, layers):
        super().__init__()
        self.embedding = tnn.Embedding(vocab, emb)
        self.lstm = tnn.LSTM(emb, hidden, layers)
        self.decoder = tnn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.lstm(self.embedding(x))
        return self.decoder(out.reshape(out.shape[0] * out.shape[1], out.shape[2]))


def _pairs():
    rng = np.random.default_rng(3)
    yield ("convnet", NdlConvNet, TorchConvNet,
           lambda: rng.standard_normal((2, 3, 8, 8)).astype(np.float32), 2e-5)
    yield ("mlp", ndl_mlp, torch_mlp, lambda: rng.standard_normal((5, 6)).astype(np.float32), 1e-5)
    yield ("lstm_lm", lambda: NdlLM(11, 6, 7, 2), lambda: TorchLM(11, 6, 7, 2),
           lambda: rng.integers(0, 11, size=(4, 3)).astype(np.int64), 2e-5)


PAIRS = list(_pairs())
IDS = [p[0] for p in PAIRS]


def _run_ndl(model, x):
    t = ndl.Tensor(x, dtype=x.dtype, requires_grad=False)
    return model(t).numpy()


def _run_torch(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _scramble_running_stats(sd):
    """Non-trivial BatchNorm statistics so eval mode checks that they travelled."""
    rng = np.random.default_rng(5)
    for k in sd:
        if k.endswith("running_mean"):
            sd[k] = torch.from_numpy(rng.standard_normal(tuple(sd[k].shape)).astype(np.float32))
        elif k.endswith("running_var"):
            sd[k] = torch.from_numpy(rng.uniform(0.5, 2.0, tuple(sd[k].shape)).astype(np.float32))
    return sd


@pytest.mark.parametrize("name,make_ndl,make_torch,make_x,tol", PAIRS, ids=IDS)
def test_torch_weights_into_needle(name, make_ndl, make_torch, make_x, tol):
    torch.manual_seed(0)
    tm = make_torch()
    tm.load_state_dict(_scramble_running_stats(tm.state_dict()))
    nm = make_ndl()
    result = load_torch_state_dict(nm, tm.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    tm.eval(), nm.eval()
    x = make_x()
    np.testing.assert_allclose(_run_ndl(nm, x), _run_torch(tm, x), rtol=tol, atol=tol)


@pytest.mark.parametrize("name,make_ndl,make_torch,make_x,tol", PAIRS, ids=IDS)
def test_needle_weights_into_torch(name, make_ndl, make_torch, make_x, tol):
    np.random.seed(1)
    nm = make_ndl()
    if name == "convnet":  # train one step so BatchNorm's running statistics move off 0/1
        nm(ndl.Tensor(make_x() * 3 + 1, requires_grad=False))
    tm = make_torch()
    sd = torch_state_dict(nm)
    assert list(sd) == list(tm.state_dict())  # PyTorch's names, in PyTorch's order
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    tm.eval(), nm.eval()
    x = make_x()
    np.testing.assert_allclose(_run_torch(tm, x), _run_ndl(nm, x), rtol=tol, atol=tol)


def test_round_trip_is_exact_and_layouts_are_pytorchs():
    nm = NdlConvNet()
    sd = torch_state_dict(nm)
    conv = nm.features.modules[0] if hasattr(nm.features, "modules") else nm.features[0]
    assert sd["features.0.weight"].shape == (8, 3, 3, 3)
    np.testing.assert_array_equal(sd["features.0.weight"], conv.weight.numpy().transpose(3, 2, 0, 1))
    assert sd["head.weight"].shape == (5, 64) and sd["head.bias"].shape == (5,)
    assert sd["features.1.num_batches_tracked"].dtype == np.int64
    other = NdlConvNet()
    load_torch_state_dict(other, sd)
    for (k, a), (_, b) in zip(nm.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_rnn_and_cells_names():
    assert list(torch_state_dict(nn.RNN(3, 4, num_layers=2))) == list(tnn.RNN(3, 4, num_layers=2).state_dict())
    assert list(torch_state_dict(nn.LSTMCell(3, 4))) == list(tnn.LSTMCell(3, 4).state_dict())
    assert list(torch_state_dict(nn.Embedding(5, 2))) == ["weight"]


def test_errors_name_every_key_and_shape():
    nm = ndl_mlp()
    sd = torch_mlp().state_dict()
    del sd["0.bias"]
    sd["bogus"] = torch.zeros(1)
    sd["2.weight"] = torch.zeros(16, 7)
    with pytest.raises(RuntimeError) as e:
        load_torch_state_dict(nm, sd)
    for part in ("'0.bias'", "'bogus'", "'2.weight'", "(16, 7)", "(16, 16)"):
        assert part in str(e.value)
    with pytest.raises(TypeError, match="'0.weight'"):
        load_torch_state_dict(nm, {**torch_mlp().state_dict(), "0.weight": [[1.0]]})
