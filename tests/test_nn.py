"""nn modules against numpy / PyTorch references: forward, input and parameter gradients,
RNG order, running statistics, state_dict round trips and argument errors."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from devices import DEVICES

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-5, 1e-5


def T(a, device, requires_grad=True):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), device=device, requires_grad=requires_grad)


def tt(a, requires_grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=requires_grad)


def close(a, b, rtol=RTOL, atol=ATOL):
    a, b = (x.detach().numpy() if isinstance(x, torch.Tensor) else
            x.numpy() if isinstance(x, ndl.Tensor) else x for x in (a, b))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def backward_with(out, torch_out, seed=7):
    """Backprop the same random upstream gradient through both graphs."""
    g = np.random.RandomState(seed).randn(*out.shape).astype(np.float32)
    (out * T(g, out.device, False)).sum().backward()
    (torch_out * torch.tensor(g)).sum().backward()


# ----- Module machinery --------------------------------------------------

class _Nested(nn.Module):
    def __init__(self, device):
        super().__init__()
        self.a = nn.Linear(2, 3, device=device)
        self.blocks = [nn.Linear(3, 3, device=device), {"x": nn.BatchNorm1d(3, device=device)}]
        self.plain = ndl.init.ones(3, device=device)
        self.extra = (nn.Parameter(ndl.init.zeros(4, device=device)),)


@pytest.mark.parametrize("device", DEVICES)
def test_parameters_order_and_modes(device):
    m = _Nested(device)
    params = m.parameters()
    expected = [m.a.weight, m.a.bias, m.blocks[0].weight, m.blocks[0].bias,
                m.blocks[1]["x"].weight, m.blocks[1]["x"].bias, m.extra[0]]
    assert len(params) == len(expected) and all(p is q for p, q in zip(params, expected))
    assert all(isinstance(p, nn.Parameter) for p in params)
    m.eval()
    assert not m.training and not m.blocks[1]["x"].training and not m.a.training
    m.train()
    assert m.blocks[1]["x"].training and m.a.training
    names = [n for n, _ in m.named_parameters()]
    assert names == ["a.weight", "a.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.x.weight",
                     "blocks.1.x.bias", "extra.0"]


def test_linear_rng_order_matches_course():
    np.random.seed(3)
    lin = nn.Linear(4, 5)
    np.random.seed(3)
    bw = np.sqrt(2) * np.sqrt(3 / 4)
    w = np.random.rand(4, 5) * 2 * bw - bw
    bb = np.sqrt(2) * np.sqrt(3 / 5)
    b = np.random.rand(5, 1) * 2 * bb - bb
    close(lin.weight, w.astype(np.float32), 1e-6, 1e-6)
    close(lin.bias, b.reshape(1, 5).astype(np.float32), 1e-6, 1e-6)
    assert lin.bias.shape == (1, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_forward_backward_leading_dims(device):
    np.random.seed(0)
    lin = nn.Linear(4, 3, device=device)
    x = np.random.randn(2, 5, 4).astype(np.float32)
    X = T(x, device)
    out = lin(X)
    assert out.shape == (2, 5, 3)
    Xt = tt(x)
    Wt, bt = tt(lin.weight.numpy()), tt(lin.bias.numpy())
    ref = Xt @ Wt + bt
    close(out, ref)
    backward_with(out, ref)
    close(X.grad, Xt.grad)
    close(lin.weight.grad, Wt.grad)
    close(lin.bias.grad, bt.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_activations_flatten_sequential_residual(device):
    np.random.seed(1)
    x = np.random.randn(3, 2, 4).astype(np.float32) * 3
    for mod, ref in ((nn.ReLU(), torch.relu), (nn.Tanh(), torch.tanh),
                     (nn.Sigmoid(), torch.sigmoid), (nn.Identity(), lambda t: t * 1)):
        X, Xt = T(x, device), tt(x)
        out, r = mod(X), ref(Xt)
        close(out, r)
        backward_with(out, r)
        close(X.grad, Xt.grad)
    f = nn.Flatten()(T(x, device))
    assert f.shape == (3, 8)
    close(f, x.reshape(3, 8), 0, 0)
    seq = nn.Sequential(nn.Flatten(), nn.Residual(nn.Sequential(nn.ReLU(), nn.Tanh())))
    close(seq(T(x, device)), np.tanh(np.maximum(x.reshape(3, 8), 0)) + x.reshape(3, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_loss(device):
    np.random.seed(2)
    z = np.random.randn(6, 5).astype(np.float32) * 4
    y = np.array([0, 4, 2, 2, 1, 3])
    Z, Zt = T(z, device), tt(z)
    loss = nn.SoftmaxLoss()(Z, T(y, device, False))
    ref = F.cross_entropy(Zt, torch.tensor(y))
    close(loss.numpy().reshape(()), ref)
    loss.backward()
    ref.backward()
    close(Z.grad, Zt.grad)
    with pytest.raises(ValueError, match="labels"):
        nn.SoftmaxLoss()(Z, T(y[:4], device, False))


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm1d_train_eval_running_stats(device):
    np.random.seed(4)
    bn = nn.BatchNorm1d(3, momentum=0.2, device=device)
    ref = torch.nn.BatchNorm1d(3, momentum=0.2, eps=1e-5)
    bn.weight.data = T(np.random.rand(3) + 0.5, device, False)
    bn.bias.data = T(np.random.randn(3), device, False)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(bn.weight.numpy()))
        ref.bias.copy_(torch.tensor(bn.bias.numpy()))
    for step in range(2):
        x = (np.random.randn(5, 3) * 2 + 1).astype(np.float32)
        X, Xt = T(x, device), tt(x)
        ref.zero_grad()   # torch accumulates .grad, needle's backward overwrites it
        out, r = bn(X), ref(Xt)
        close(out, r)
        backward_with(out, r, seed=step)
        close(X.grad, Xt.grad, 1e-4, 1e-5)
        close(bn.weight.grad, ref.weight.grad, 1e-4, 1e-5)
        close(bn.bias.grad, ref.bias.grad, 1e-4, 1e-5)
    assert bn.running_mean.shape == (3,) and bn.running_var.shape == (3,)
    close(bn.running_mean, ref.running_mean)
    # needle keeps the BIASED batch variance in its running average (course contract)
    x_last = x
    assert not np.allclose(bn.running_var.numpy(), ref.running_var.numpy())
    assert bn.parameters() == [bn.weight, bn.bias]
    bn.eval()
    expect = (x_last - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + 1e-5) \
        * bn.weight.numpy() + bn.bias.numpy()
    close(bn(T(x_last, device)), expect)


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm1d_running_var_is_biased(device):
    bn = nn.BatchNorm1d(2, momentum=0.5, device=device)
    x = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    bn(T(x, device))
    close(bn.running_mean, 0.5 * 0 + 0.5 * x.mean(0))
    close(bn.running_var, 0.5 * 1 + 0.5 * x.var(0))


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm2d_matches_torch(device):
    np.random.seed(5)
    x = np.random.randn(2, 3, 4, 5).astype(np.float32)
    bn = nn.BatchNorm2d(3, device=device)
    ref = torch.nn.BatchNorm2d(3)
    X, Xt = T(x, device), tt(x)
    out, r = bn(X), ref(Xt)
    close(out, r, 1e-4, 1e-5)
    backward_with(out, r)
    close(X.grad, Xt.grad, 1e-4, 1e-5)
    close(bn.weight.grad, ref.weight.grad, 1e-4, 1e-4)
    close(bn.running_mean, ref.running_mean)


@pytest.mark.parametrize("device", DEVICES)
def test_layernorm_nd_input(device):
    np.random.seed(6)
    x = np.random.randn(2, 3, 4).astype(np.float32) * 3 + 2
    ln = nn.LayerNorm1d(4, device=device)
    ln.weight.data = T(np.random.rand(4) + 0.5, device, False)
    ln.bias.data = T(np.random.randn(4), device, False)
    X, Xt = T(x, device), tt(x)
    wt, bt = tt(ln.weight.numpy()), tt(ln.bias.numpy())
    out, r = ln(X), F.layer_norm(Xt, (4,), wt, bt, eps=1e-5)
    close(out, r, 1e-4, 1e-5)
    backward_with(out, r)
    close(X.grad, Xt.grad, 1e-4, 1e-4)
    close(ln.weight.grad, wt.grad, 1e-4, 1e-4)
    close(ln.bias.grad, bt.grad, 1e-4, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_mask_rng_and_eval(device):
    x = np.random.randn(4, 6).astype(np.float32)
    drop = nn.Dropout(0.3)
    np.random.seed(11)
    out = drop(T(x, device)).numpy()
    np.random.seed(11)
    mask = np.random.rand(4, 6) <= 0.7
    close(out, x * mask / 0.7)
    drop.eval()
    close(drop(T(x, device)), x, 0, 0)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


# ----- Conv and pooling ---------------------------------------------------

CONV_CASES = [
    # cin, cout, k, stride, padding, dilation, groups, bias, mode, H, W
    (3, 4, 3, 1, None, 1, 1, True, "zeros", 5, 5),
    (2, 3, 5, 2, None, 1, 1, True, "zeros", 7, 6),
    (3, 2, 1, 1, 0, 1, 1, False, "zeros", 4, 4),
    (2, 4, 3, 2, 0, 1, 1, True, "zeros", 8, 7),
    (2, 2, 3, 1, None, 2, 1, True, "zeros", 7, 7),
    (4, 6, 3, 1, 1, 1, 2, True, "zeros", 5, 5),
    (4, 4, 3, 2, 1, 1, 4, False, "zeros", 6, 6),
    (2, 3, 3, 1, None, 1, 1, True, "circular", 5, 4),
    (2, 2, 5, 1, None, 1, 1, False, "circular", 6, 6),
    (2, 3, 2, 1, None, 1, 1, True, "zeros", 5, 5),     # even K: course padding K//2
    (2, 3, 4, 2, None, 1, 1, True, "zeros", 9, 8),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("device", DEVICES)
def test_conv_matches_torch(device, case):
    cin, cout, k, s, pad, dil, groups, bias, mode, H, W = case
    np.random.seed(8)
    conv = nn.Conv(cin, cout, k, stride=s, padding=pad, dilation=dil, groups=groups, bias=bias,
                   padding_mode=mode, device=device)
    assert conv.weight.shape == (k, k, cin // groups, cout)
    x = np.random.randn(2, cin, H, W).astype(np.float32)
    X, Xt = T(x, device), tt(x)
    wt = tt(conv.weight.numpy().transpose(3, 2, 0, 1))
    bt = tt(conv.bias.numpy()) if bias else None
    p = (k // 2 if dil == 1 else dil * (k - 1) // 2) if pad is None else pad
    if mode == "circular":
        r = F.conv2d(F.pad(Xt, (p, p, p, p), mode="circular"), wt, bt, stride=s, dilation=dil,
                     groups=groups)
    else:
        r = F.conv2d(Xt, wt, bt, stride=s, padding=p, dilation=dil, groups=groups)
    out = conv(X)
    assert out.shape == tuple(r.shape)
    close(out, r, 1e-4, 1e-4)
    backward_with(out, r)
    close(X.grad, Xt.grad, 1e-4, 1e-4)
    close(conv.weight.grad, wt.grad.permute(2, 3, 1, 0), 1e-4, 1e-4)
    if bias:
        close(conv.bias.grad, bt.grad, 1e-4, 1e-4)


def test_conv_rng_order_and_course_positional_bias():
    np.random.seed(9)
    conv = nn.Conv(3, 5, 3, 1, False)
    assert conv.bias is None and conv.padding == 1
    np.random.seed(9)
    conv_b = nn.Conv(3, 5, 3)
    np.random.seed(9)
    bound = np.sqrt(2) * np.sqrt(3 / 27)
    w = np.random.rand(3, 3, 3, 5) * 2 * bound - bound
    b = np.random.rand(5) * 2 / np.sqrt(27) - 1 / np.sqrt(27)
    close(conv_b.weight, w.astype(np.float32), 1e-6, 1e-6)
    close(conv_b.bias, b.astype(np.float32), 1e-6, 1e-6)


def test_conv_bad_arguments():
    with pytest.raises(ValueError, match="groups"):
        nn.Conv(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv(2, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="positive"):
        nn.Conv(0, 2, 3)
    conv = nn.Conv(2, 2, 3)
    with pytest.raises(ValueError, match="NCHW"):
        conv(ndl.Tensor(np.zeros((1, 3, 4, 4), dtype=np.float32)))


POOL_CASES = [(2, None, 0, 4, 4), (3, 2, 1, 7, 6), (2, 1, 0, 5, 5), (3, 3, 1, 8, 8)]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("device", DEVICES)
def test_pools_match_torch(device, kind, case):
    k, s, p, H, W = case
    np.random.seed(10)
    x = np.random.randn(2, 3, H, W).astype(np.float32)
    X, Xt = T(x, device), tt(x)
    if kind == "max":
        out = nn.MaxPool2d(k, stride=s, padding=p)(X)
        r = F.max_pool2d(Xt, k, stride=s, padding=p)
    else:
        out = nn.AvgPool2d(k, stride=s, padding=p)(X)
        r = F.avg_pool2d(Xt, k, stride=s, padding=p)
    assert out.shape == tuple(r.shape)
    close(out, r)
    backward_with(out, r)
    close(X.grad, Xt.grad)


def test_pool_bad_arguments():
    with pytest.raises(ValueError, match="half"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="larger"):
        nn.AvgPool2d(5)(ndl.Tensor(np.zeros((1, 1, 3, 3), dtype=np.float32)))


# ----- sequence models ----------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_embedding(device):
    np.random.seed(12)
    emb = nn.Embedding(7, 3, device=device)
    idx = np.array([[0, 6], [3, 3], [1, 0]])
    X = T(idx, device, False)
    out = emb(X)
    w = emb.weight.numpy()
    close(out, w[idx], 1e-6, 1e-6)
    out.sum().backward()
    expect = np.zeros_like(w)
    np.add.at(expect, idx.reshape(-1), 1.0)
    close(emb.weight.grad, expect[:, :1].repeat(3, 1), 1e-6, 1e-6)
    with pytest.raises(ValueError, match="indices"):
        emb(T(np.array([[7]]), device, False))


def _torch_rnn_from(model, kind, num_layers, nonlinearity="tanh"):
    H = model.hidden_size
    if kind == "rnn":
        ref = torch.nn.RNN(model.input_size, H, num_layers, nonlinearity=nonlinearity)
        cells = model.rnn_cells
    else:
        ref = torch.nn.LSTM(model.input_size, H, num_layers)
        cells = model.lstm_cells
    with torch.no_grad():
        for k, c in enumerate(cells):
            getattr(ref, f"weight_ih_l{k}").copy_(torch.tensor(c.W_ih.numpy().T))
            getattr(ref, f"weight_hh_l{k}").copy_(torch.tensor(c.W_hh.numpy().T))
            getattr(ref, f"bias_ih_l{k}").copy_(torch.tensor(c.bias_ih.numpy()))
            getattr(ref, f"bias_hh_l{k}").copy_(torch.tensor(c.bias_hh.numpy()))
    return ref, cells


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("device", DEVICES)
def test_rnn_cell(device, nonlinearity):
    np.random.seed(13)
    cell = nn.RNNCell(3, 4, nonlinearity=nonlinearity, device=device)
    ref = torch.nn.RNNCell(3, 4, nonlinearity=nonlinearity)
    with torch.no_grad():
        ref.weight_ih.copy_(torch.tensor(cell.W_ih.numpy().T))
        ref.weight_hh.copy_(torch.tensor(cell.W_hh.numpy().T))
        ref.bias_ih.copy_(torch.tensor(cell.bias_ih.numpy()))
        ref.bias_hh.copy_(torch.tensor(cell.bias_hh.numpy()))
    x, h = np.random.randn(2, 3), np.random.randn(2, 4)
    out, r = cell(T(x, device), T(h, device)), ref(tt(x), tt(h))
    close(out, r)
    backward_with(out, r)
    close(cell.W_ih.grad, ref.weight_ih.grad.T)
    close(cell.W_hh.grad, ref.weight_hh.grad.T)
    close(cell.bias_hh.grad, ref.bias_hh.grad)
    close(cell(T(x, device)), ref(tt(x)))   # h=None means zeros


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("device", DEVICES)
def test_rnn_lstm_match_torch(device, kind, num_layers):
    np.random.seed(14)
    seq_len, bs, cin, H = 5, 3, 4, 6
    model = (nn.RNN if kind == "rnn" else nn.LSTM)(cin, H, num_layers, device=device)
    ref, cells = _torch_rnn_from(model, kind, num_layers)
    x = np.random.randn(seq_len, bs, cin)
    h0 = np.random.randn(num_layers, bs, H)
    c0 = np.random.randn(num_layers, bs, H)
    X, Xt = T(x, device), tt(x)
    if kind == "rnn":
        out, hn = model(X, T(h0, device))
        r, rhn = ref(Xt, tt(h0))
        close(hn, rhn)
    else:
        out, (hn, cn) = model(X, (T(h0, device), T(c0, device)))
        r, (rhn, rcn) = ref(Xt, (tt(h0), tt(c0)))
        close(hn, rhn)
        close(cn, rcn)
    close(out, r)
    backward_with(out, r)
    close(X.grad, Xt.grad)
    for k, c in enumerate(cells):
        close(c.W_ih.grad, getattr(ref, f"weight_ih_l{k}").grad.T)
        close(c.W_hh.grad, getattr(ref, f"weight_hh_l{k}").grad.T)
        close(c.bias_ih.grad, getattr(ref, f"bias_ih_l{k}").grad)
    # no initial state = zeros
    out0 = model(T(x, device))[0]
    r0 = ref(Xt)[0]
    close(out0, r0)


def test_rnn_bad_input():
    with pytest.raises(ValueError, match="input_size"):
        nn.LSTM(3, 4)(ndl.Tensor(np.zeros((2, 2, 5), dtype=np.float32)))


# ----- attention / transformer ---------------------------------------------

def _np_attention(q, k, v, causal):
    logits = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if causal:
        i, j = logits.shape[-2:]
        logits = logits + np.triu(np.full((i, j), -1e30), j - i + 1)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ v, p


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_multihead_attention(device, causal):
    np.random.seed(15)
    q, k, v = (np.random.randn(2, 3, 4, 5).astype(np.float32) for _ in range(3))
    mha = nn.MultiHeadAttention(causal=causal, device=device)
    res, probs = mha(T(q, device), T(k, device), T(v, device))
    eres, eprobs = _np_attention(q, k, v, causal)
    close(probs, eprobs)
    close(res, eres)
    # the course's broadcast-multiply-sum form agrees with the batched matmul
    a, b = T(q, device), T(k, device)
    close(mha.matmul(a, b), mha._bmm_t(a, b))


def _torch_transformer_layer(x, layer):
    """Pre-norm layer written with torch functions and needle's weights (dropout 0)."""
    at = layer.attn
    W = lambda lin: torch.tensor(lin.weight.numpy())
    ln = lambda t, m: F.layer_norm(t, (m.dim,), torch.tensor(m.weight.numpy()),
                                   torch.tensor(m.bias.numpy()), eps=m.eps)
    B, Tn, D = x.shape
    heads = lambda t: t.reshape(B, Tn, at.num_head, at.dim_head).transpose(1, 2)
    q = heads(ln(x, at.prenorm_q) @ W(at.q_projection))
    k = heads(ln(x, at.prenorm_k) @ W(at.k_projection))
    v = heads(ln(x, at.prenorm_v) @ W(at.v_projection))
    mask = torch.triu(torch.ones(Tn, Tn, dtype=torch.bool), 1)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    x = x + a.transpose(1, 2).reshape(B, Tn, -1) @ W(at.out_projection)
    h = torch.relu(ln(x, layer.layernorm) @ W(layer.linear1) + torch.tensor(layer.linear1.bias.numpy()))
    return x + h @ W(layer.linear2) + torch.tensor(layer.linear2.bias.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_transformer_matches_torch(device):
    np.random.seed(16)
    Tn, B, D = 5, 2, 8
    model = nn.Transformer(D, 12, 2, num_head=2, dim_head=4, sequence_len=7, device=device)
    x = np.random.randn(Tn, B, D).astype(np.float32)
    X = T(x, device)
    out, h = model(X)
    assert out.shape == (Tn, B, D) and h.shape == (Tn, B, D)
    xt = tt(x).transpose(0, 1) + torch.tensor(model.positional_embedding.weight.numpy()[:Tn])[None]
    for layer in model.layers:
        xt = _torch_transformer_layer(xt, layer)
    close(out, xt.transpose(0, 1), 1e-4, 1e-4)
    out.sum().backward()
    assert X.grad.shape == X.shape
    for p in model.parameters():
        assert p.grad is not None, "every transformer parameter receives a gradient"


# ----- state_dict ---------------------------------------------------------

class _Small(nn.Module):
    def __init__(self, device):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4, device=device), nn.BatchNorm1d(4, device=device),
                                  nn.ReLU())
        self.head = nn.Linear(4, 2, device=device)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip(device, tmp_path):
    np.random.seed(17)
    a = _Small(device)
    x = T(np.random.randn(6, 3), device, False)
    a(x)   # updates running stats
    sd = a.state_dict()
    # PyTorch's names: Sequential children by index, buffers included
    assert list(sd) == ["body.0.weight", "body.0.bias",
                        "body.1.weight", "body.1.bias",
                        "body.1.running_mean", "body.1.running_var",
                        "head.weight", "head.bias"]
    ndl.save(sd, tmp_path / "m.needle")
    b = _Small(device)
    a.eval(), b.eval()
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    params_before = b.parameters()
    b.load_state_dict(ndl.load(tmp_path / "m.needle"))
    assert all(p is q for p, q in zip(params_before, b.parameters()))
    close(b(x), a(x), 0, 0)
    close(b.body.modules[1].running_mean, a.body.modules[1].running_mean, 0, 0)
    # state_dict values are copies: training a does not change sd
    old = sd["head.weight"].numpy().copy()
    a.head.weight.data = a.head.weight.data * 2
    close(sd["head.weight"], old, 0, 0)


def test_load_state_dict_errors():
    m = _Small(None)
    sd = m.state_dict()
    before = {k: v.numpy().copy() for k, v in sd.items()}
    broken = dict(sd, bogus=np.zeros(2), extra2=np.zeros(1))
    del broken["head.bias"], broken["body.0.bias"]
    broken["head.weight"] = np.zeros((5, 2), dtype=np.float32)
    broken["body.1.running_mean"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(RuntimeError) as e:
        m.load_state_dict(broken)
    # every problem is named in one message, and nothing was changed
    for part in ("'head.bias'", "'body.0.bias'", "'bogus'", "'extra2'",
                 r"'head.weight'", "(5, 2)", "(4, 2)", "'body.1.running_mean'", "(3,)", "(4,)"):
        assert part in str(e.value), part
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])
    # strict=False skips missing/unexpected keys and reports them, as PyTorch
    partial = {k: v for k, v in sd.items() if k != "head.bias"}
    partial["bogus"] = np.zeros(2)
    result = m.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["head.bias"] and result.unexpected_keys == ["bogus"]
    # shape mismatches are errors even when not strict
    with pytest.raises(RuntimeError, match=r"head.weight.*\(5, 2\).*\(4, 2\)"):
        m.load_state_dict(dict(sd, **{"head.weight": np.zeros((5, 2), dtype=np.float32)}), strict=False)
    with pytest.raises(TypeError):
        m.load_state_dict([1, 2])


def test_linear_bad_input():
    with pytest.raises(ValueError, match="last dim"):
        nn.Linear(3, 2)(ndl.Tensor(np.zeros((2, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="positive"):
        nn.Linear(0, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_one_hot_equals_init_one_hot(device):
    idx = T(np.array([[3, 0], [4, 4]]), device, False)
    fast = nn.nn_basic.one_hot(5, idx, device, "float32")
    ref = ndl.init.one_hot(5, idx, device=device)
    assert fast.shape == (2, 2, 5)
    np.testing.assert_array_equal(fast.numpy(), ref.numpy())
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        nn.nn_basic.one_hot(5, np.array([5]), device, "float32")
