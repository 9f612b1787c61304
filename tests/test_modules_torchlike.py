"""Modules and optimizers the PyTorch way: names (against torch models of the same
architecture), module traversal, ``Module.to``, ``repr``, ``Optimizer.zero_grad``, and
RNN/LSTM without an initial state (every parameter gets a gradient, as in torch)."""
import inspect

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from devices import ND_DEVICES, nd_only

torch = pytest.importorskip("torch")
tnn = torch.nn


def _names(pairs):
    return [name for name, _ in pairs]


class TorchResidual(tnn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def torch_mlp_resnet(dim, hidden, num_blocks, classes):
    def block(d, h):
        return tnn.Sequential(TorchResidual(tnn.Sequential(
            tnn.Linear(d, h), tnn.BatchNorm1d(h), tnn.ReLU(), tnn.Dropout(0.1),
            tnn.Linear(h, d), tnn.BatchNorm1d(d))), tnn.ReLU())
    return tnn.Sequential(tnn.Linear(dim, hidden), tnn.ReLU(),
                          *[block(hidden, hidden // 2) for _ in range(num_blocks)],
                          tnn.Linear(hidden, classes))


class Net(nn.Module):
    """Attributes, a Sequential, a list of modules, a shared layer and a plain tensor."""

    def __init__(self, device=None):
        super().__init__()
        kw = dict(device=device)
        self.features = nn.Sequential(nn.Conv(3, 4, 3, **kw), nn.BatchNorm2d(4, **kw), nn.ReLU())
        self.blocks = [nn.Linear(4, 4, **kw), nn.Linear(4, 4, bias=False, **kw)]
        self.head = nn.Linear(4, 2, **kw)
        self.tied = self.head                          # shared: named once, as "head.*"
        self.scale = ndl.init.ones(2, **kw)   # plain Tensor: not a param or buffer (torch: not moved)

    def forward(self, x):
        x = self.features(x).sum(axes=(2, 3))
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class TorchNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.BatchNorm2d(4),
                                       tnn.ReLU())
        self.blocks = tnn.ModuleList([tnn.Linear(4, 4), tnn.Linear(4, 4, bias=False)])
        self.head = tnn.Linear(4, 2)
        self.tied = self.head


# ----- names -----------------------------------------------------------------

def test_named_parameters_match_torch_sequential():
    ours = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    ref = tnn.Sequential(tnn.Linear(5, 8), tnn.ReLU(), tnn.Linear(8, 3))
    assert _names(ours.named_parameters()) == _names(ref.named_parameters()) == \
        ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [int(np.prod(p.shape)) for _, p in ours.named_parameters()] == \
        [p.numel() for _, p in ref.named_parameters()]


def test_named_parameters_buffers_modules_match_torch_nested():
    ours, ref = Net(), TorchNet()
    assert _names(ours.named_parameters()) == _names(ref.named_parameters())
    assert _names(ours.named_buffers()) == \
        [n for n, _ in ref.named_buffers() if not n.endswith("num_batches_tracked")]
    # torch has one more node, the ModuleList itself ("blocks"); needle's list is plain
    assert _names(ours.named_modules()) == \
        [n for n, m in ref.named_modules() if not isinstance(m, tnn.ModuleList)]
    assert _names(ours.named_children()) == ["features", "blocks.0", "blocks.1", "head"]
    assert _names(ours.named_parameters(prefix="net"))[0] == "net.features.0.weight"
    assert _names(ours.head.named_parameters(recurse=False)) == ["weight", "bias"]
    assert _names(ours.named_parameters(recurse=False)) == []


def test_named_parameters_mlp_resnet_and_course_parameters_order():
    from apps.mlp_resnet import MLPResNet
    from apps.models import LanguageModel
    ours, ref = MLPResNet(6, hidden_dim=8, num_blocks=2, num_classes=3), \
        torch_mlp_resnet(6, 8, 2, 3)
    assert _names(ours.named_parameters()) == _names(ref.named_parameters())
    assert _names(ours.named_buffers()) == \
        [n for n, _ in ref.named_buffers() if not n.endswith("num_batches_tracked")]
    for model in (ours, Net(), LanguageModel(4, 7, 5, num_layers=2, seq_model="lstm"),
                  nn.Transformer(8, 16, 2, num_head=2, dim_head=4)):
        # named_parameters walks the same order as the course's parameters()
        assert [id(p) for _, p in model.named_parameters()] == [id(p) for p in model.parameters()]
    names = _names(LanguageModel(4, 7, 5, num_layers=2, seq_model="lstm").named_parameters())
    assert names[:3] == ["embedding.weight", "seq_model.lstm_cells.0.W_ih",
                         "seq_model.lstm_cells.0.W_hh"]


def test_shared_parameter_named_once():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    ref_lin = tnn.Linear(3, 3)
    ref = tnn.Sequential(ref_lin, tnn.ReLU(), ref_lin)
    assert _names(m.named_parameters()) == _names(ref.named_parameters()) == ["0.weight", "0.bias"]
    assert len(list(m.named_parameters(remove_duplicate=False))) == 4
    assert _names(m.named_modules()) == _names(ref.named_modules()) == ["", "0", "1"]


def test_sequential_modules_is_tuple_and_method():
    m = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    assert isinstance(m.modules, tuple) and len(m.modules) == 2   # the course's attribute
    assert m.modules[1].modules[1] is list(m.modules())[-1]
    assert [type(x).__name__ for x in m.modules()] == \
        ["Sequential", "Linear", "Sequential", "ReLU", "Linear"]
    assert list(m.children()) == list(m.modules)
    assert [type(x).__name__ for x in Net().modules()] == \
        ["Net", "Sequential", "Conv", "BatchNorm2d", "ReLU", "Linear", "Linear", "Linear"]
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


# ----- to --------------------------------------------------------------------

@nd_only
def test_to_device_and_back():
    np.random.seed(0)
    m = Net(device=ndl.cpu())
    x = np.random.randn(2, 3, 5, 5).astype(np.float32)
    want = m(ndl.Tensor(x, device=ndl.cpu())).numpy()
    params = m.parameters()
    m(ndl.Tensor(x, device=ndl.cpu())).sum().backward()
    assert m.to(ndl.cpu_numpy()) is m
    assert all(p is q for p, q in zip(params, m.parameters()))          # moved in place
    assert {str(t.device) for t in m.parameters() + list(m.buffers())} == {"cpu_numpy()"}
    assert all(str(p.grad.device) == "cpu_numpy()" for p in m.parameters())
    got = m(ndl.Tensor(x, device=ndl.cpu_numpy())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    m.to("cpu")                                                         # a device name, as torch
    assert {str(t.device) for t in m.parameters() + list(m.buffers())} == {"cpu()"}
    np.testing.assert_allclose(m(ndl.Tensor(x, device=ndl.cpu())).numpy(), want,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_to_float64_parameters_buffers_and_forward(device):
    np.random.seed(1)
    m = nn.Sequential(nn.Linear(4, 6, device=device), nn.BatchNorm1d(6, device=device),
                      nn.ReLU(), nn.Linear(6, 3, device=device))
    x = np.random.randn(5, 4)
    y32 = m(ndl.Tensor(x, device=device, dtype="float32")).numpy()
    assert m.to("float64") is m
    assert {p.dtype for p in m.parameters()} == {"float64"}
    bn = m.modules[1]
    assert bn.running_mean.dtype == bn.running_var.dtype == "float64"
    assert [n for n, _ in m.named_buffers()] == ["1.running_mean", "1.running_var"]
    m.eval()
    out = m(ndl.Tensor(x, device=device, dtype="float64"))
    assert out.dtype == "float64"
    m.train()
    out = m(ndl.Tensor(x, device=device, dtype="float64"))
    assert out.dtype == "float64" and bn.running_mean.dtype == "float64"
    np.testing.assert_allclose(out.numpy(), y32, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert all(p.grad.dtype == "float64" for p in m.parameters())
    opt = ndl.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    assert {p.dtype for p in m.parameters()} == {"float64"}
    m.to(dtype=np.float32)                                              # numpy dtypes too
    assert {p.dtype for p in m.parameters()} == {"float32"} and bn.running_var.dtype == "float32"
    assert all(p.grad.dtype == "float32" for p in m.parameters())
    with pytest.raises(TypeError, match="floating"):
        m.to("int64")


def test_to_updates_transformer_device_dtype_attributes():
    m = nn.Transformer(8, 16, 1, num_head=2, dim_head=4, device=ndl.cpu())
    m.to("float64")
    assert m.dtype == m.layers[0].attn.dtype == "float64"
    x = ndl.Tensor(np.random.randn(3, 2, 8), dtype="float64")
    out, _ = m(x)
    assert out.dtype == "float64" and out.shape == (3, 2, 8)


# ----- repr ------------------------------------------------------------------

def test_repr_matches_torch_where_layouts_agree():
    pairs = [
        (nn.Linear(784, 100), tnn.Linear(784, 100)),
        (nn.Linear(3, 2, bias=False), tnn.Linear(3, 2, bias=False)),
        (nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10)),
         tnn.Sequential(tnn.Linear(784, 100), tnn.ReLU(), tnn.Linear(100, 10))),
        (nn.Embedding(10000, 64), tnn.Embedding(10000, 64)),
        (nn.RNNCell(10, 20), tnn.RNNCell(10, 20)),
        (nn.RNNCell(10, 20, bias=False, nonlinearity="relu"),
         tnn.RNNCell(10, 20, bias=False, nonlinearity="relu")),
        (nn.LSTMCell(3, 4, bias=False), tnn.LSTMCell(3, 4, bias=False)),
        (nn.Identity(), tnn.Identity()),
        (nn.Tanh(), tnn.Tanh()),
        (nn.Sigmoid(), tnn.Sigmoid()),
    ]
    for ours, ref in pairs:
        assert repr(ours) == repr(ref)


def test_repr_strings():
    assert repr(nn.Conv(3, 16, kernel_size=7, stride=4)) == "Conv(3, 16, kernel_size=7, stride=4)"
    assert repr(nn.Conv(3, 16, 3, stride=2, bias=False)) == \
        "Conv(3, 16, kernel_size=3, stride=2, bias=False)"
    assert repr(nn.Conv(3, 8, 3, padding=0)) == "Conv(3, 8, kernel_size=3, stride=1, padding=0)"
    assert repr(nn.BatchNorm2d(16)) == "BatchNorm2d(16, eps=1e-05, momentum=0.1)"
    assert repr(nn.BatchNorm1d(4, eps=1e-3, momentum=0.2)) == \
        "BatchNorm1d(4, eps=0.001, momentum=0.2)"
    assert repr(nn.LayerNorm1d(8)) == "LayerNorm1d(8, eps=1e-05)"
    assert repr(nn.Dropout(0.25)) == "Dropout(p=0.25)"
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(nn.LSTM(10, 20, 2)) == (
        "LSTM(\n  10, 20, num_layers=2\n  (lstm_cells.0): LSTMCell(10, 20)\n"
        "  (lstm_cells.1): LSTMCell(20, 20)\n)")
    assert repr(nn.Residual(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))) == (
        "Residual(\n  (fn): Sequential(\n    (0): Linear(in_features=2, out_features=2, "
        "bias=True)\n    (1): ReLU()\n  )\n)")
    text = repr(Net())
    assert text.startswith("Net(\n  (features): Sequential(\n    (0): Conv(3, 4, kernel_size=3, "
                           "stride=1)\n    (1): BatchNorm2d(4, eps=1e-05, momentum=0.1)\n")
    assert "  (blocks.1): Linear(in_features=4, out_features=4, bias=False)\n" in text
    tr = repr(nn.Transformer(8, 16, 1, num_head=2, dim_head=4))
    assert tr.startswith("Transformer(\n  embedding_size=8, num_layers=1, sequence_len=2048, "
                         "batch_first=False\n  (positional_embedding): Embedding(2048, 8)\n"
                         "  (layers.0): TransformerLayer(\n    (attn): AttentionLayer(\n"
                         "      q_features=8, num_head=2, dim_head=4\n")
    assert "(attn): MultiHeadAttention(\n        causal=True\n        (dropout): Dropout(p=0.0)" in tr


def _example(cls):
    """One instance of every Module class in needle.nn (a new class must be added here)."""
    examples = {
        "Identity": (), "Flatten": (), "ReLU": (), "Tanh": (), "Sigmoid": (), "SoftmaxLoss": (),
        "Linear": (3, 2), "Sequential": (nn.ReLU(),), "BatchNorm1d": (3,), "BatchNorm2d": (3,),
        "LayerNorm1d": (3,), "Dropout": (0.1,), "Residual": (nn.ReLU(),), "Conv": (3, 4, 3),
        "MaxPool2d": (2,), "AvgPool2d": (2,), "RNNCell": (3, 4), "RNN": (3, 4), "LSTMCell": (3, 4),
        "LSTM": (3, 4), "Embedding": (5, 3), "AttentionLayer": (8, 2, 4),
        "TransformerLayer": (8, 2, 4, 16), "Transformer": (8, 16, 1),
    }
    if cls.__name__ == "MultiHeadAttention":
        return cls(causal=True)
    return cls(*examples[cls.__name__])


def test_every_nn_module_class_has_a_readable_repr():
    import needle.nn.nn_basic as b
    import needle.nn.nn_conv as c
    import needle.nn.nn_sequence as s
    import needle.nn.nn_transformer as t
    classes = {obj for mod in (b, c, s, t) for _, obj in inspect.getmembers(mod, inspect.isclass)
               if issubclass(obj, nn.Module) and obj is not nn.Module
               and not obj.__name__.startswith("_") and obj.__module__ == mod.__name__}
    assert len(classes) >= 24
    for cls in classes:
        text = repr(_example(cls))
        assert text.startswith(cls.__name__ + "(") and text.endswith(")"), text
        assert "object at 0x" not in text
        # a layer with sizes shows them
        if cls.__name__ not in ("Identity", "Flatten", "ReLU", "Tanh", "Sigmoid", "SoftmaxLoss",
                                "Sequential", "Residual", "TransformerLayer"):
            assert any(ch.isdigit() or ch == "=" for ch in text.split("\n")[0] + text), text


# ----- optimizer zero_grad ----------------------------------------------------

def test_zero_grad_both_ways():
    np.random.seed(2)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    extra = nn.Parameter(ndl.init.ones(2, requires_grad=True))      # never used: grad stays None
    opt = ndl.optim.SGD(m.parameters() + [extra], lr=0.1)
    x = ndl.Tensor(np.random.randn(5, 3).astype(np.float32))

    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in opt.params)

    m(x).sum().backward()
    grads = [p.grad for p in m.parameters()]
    opt.zero_grad(set_to_none=False)
    for p, old in zip(m.parameters(), grads):
        assert p.grad is not None and p.grad is not old
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
        assert not np.any(p.grad.numpy())
        assert np.any(old.numpy())          # new arrays: the old gradients are left alone
    assert extra.grad is None               # as torch: a missing gradient stays missing
    before = [p.numpy().copy() for p in m.parameters()]
    opt.step()                              # zero gradients: SGD without decay changes nothing
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)

    m(x).sum().backward()
    opt.reset_grad()                        # the course's name still works
    assert all(p.grad is None for p in opt.params)


# ----- RNN / LSTM without an initial state -------------------------------------

def _zero_state(kind, layers, bs, hidden, device, cell=False):
    shape = (bs, hidden) if cell else (layers, bs, hidden)
    z = lambda: ndl.Tensor(np.zeros(shape, np.float32), device=device, requires_grad=False)
    return (z(), z()) if kind == "lstm" else z()


def _torch_copy(m, kind, layers, cell):
    if cell:
        ref = (tnn.LSTMCell if kind == "lstm" else tnn.RNNCell)(m.input_size, m.hidden_size)
        names = [("weight_ih", m.W_ih, True), ("weight_hh", m.W_hh, True),
                 ("bias_ih", m.bias_ih, False), ("bias_hh", m.bias_hh, False)]
    else:
        ref = (tnn.LSTM if kind == "lstm" else tnn.RNN)(m.input_size, m.hidden_size, layers)
        cells = m.lstm_cells if kind == "lstm" else m.rnn_cells
        names = [(f"{n}_l{k}", getattr(c, a), t) for k, c in enumerate(cells)
                 for n, a, t in (("weight_ih", "W_ih", True), ("weight_hh", "W_hh", True),
                                 ("bias_ih", "bias_ih", False), ("bias_hh", "bias_hh", False))]
    with torch.no_grad():
        for name, p, transpose in names:
            w = p.numpy()
            getattr(ref, name).copy_(torch.tensor(w.T if transpose else w))
    return ref, names


def _run(m, kind, x, state, cell, upstream):
    """Forward, then backward of sum(out * upstream); returns (out, grads by parameter)."""
    for p in m.parameters():
        p.grad = None
    if cell:
        out = m(x, state)
        out = out[0] if kind == "lstm" else out
    else:
        out = m(x, state)[0]
    (out * ndl.Tensor(upstream, device=out.device)).sum().backward()
    return out.numpy(), [p.grad for p in m.parameters()]


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("cell,seq_len,layers", [(True, 1, 1), (False, 1, 1), (False, 1, 2),
                                                 (False, 4, 2)])
def test_recurrent_without_state_gives_every_parameter_a_gradient(device, kind, cell, seq_len,
                                                                  layers):
    np.random.seed(5)
    bs, inp, hid = 3, 5, 4
    if cell:
        m = (nn.LSTMCell if kind == "lstm" else nn.RNNCell)(inp, hid, device=device)
        x_np = np.random.randn(bs, inp).astype(np.float32)
        up = np.random.randn(bs, hid).astype(np.float32)
    else:
        m = (nn.LSTM if kind == "lstm" else nn.RNN)(inp, hid, layers, device=device)
        x_np = np.random.randn(seq_len, bs, inp).astype(np.float32)
        up = np.random.randn(seq_len, bs, hid).astype(np.float32)
    x = ndl.Tensor(x_np, device=device)

    out, grads = _run(m, kind, x, None, cell, up)
    assert all(g is not None for g in grads), [n for (n, _), g in zip(m.named_parameters(), grads)
                                               if g is None]
    out0, grads0 = _run(m, kind, x, _zero_state(kind, layers, bs, hid, device, cell), cell, up)
    np.testing.assert_array_equal(out, out0)
    for g, g0 in zip(grads, grads0):
        np.testing.assert_array_equal(g.numpy(), g0.numpy())

    ref, names = _torch_copy(m, kind, layers, cell)
    t_out = ref(torch.tensor(x_np))
    t_out = t_out[0] if (kind == "lstm" or not cell) else t_out
    (t_out * torch.tensor(up)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-5, atol=1e-5)
    by_id = {id(p): g for p, g in zip(m.parameters(), grads)}
    for name, p, transpose in names:
        want = getattr(ref, name).grad.numpy()
        got = by_id[id(p)].numpy()
        np.testing.assert_allclose(got.T if transpose else got, want, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    if seq_len == 1:   # h0 = 0: the recurrent weights' gradient exists and is zero
        for name, p, _ in names:
            if name.startswith("weight_hh"):
                assert not np.any(by_id[id(p)].numpy())


def test_lstm_loss_on_first_step_only_still_reaches_w_hh():
    np.random.seed(6)
    m = nn.LSTM(3, 4, 2)
    out, _ = m(ndl.Tensor(np.random.randn(5, 2, 3).astype(np.float32)))
    ndl.ops.split(out, 0)[0].sum().backward()
    for c in m.lstm_cells:
        assert c.W_hh.grad is not None and not np.any(c.W_hh.grad.numpy())
