"""Sequence layers: Embedding, RNN and LSTM (cells and multi-layer). Inputs are
sequence-first, (seq_len, batch, features), and gate order matches PyTorch."""
import numpy as np

import needle.init as init
from needle import ops
from needle.autograd import Tensor, TensorOp

from .nn_basic import Module, Parameter, one_hot


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return _sigmoid(x)


def _sigmoid(x: Tensor) -> Tensor:
    op = getattr(ops, "sigmoid", None)
    if op is not None:
        return op(x)
    return (1 + ops.exp(-x)) ** -1


def _uniform(shape, bound, device, dtype):
    return Parameter(init.rand(*shape, low=-bound, high=bound, device=device, dtype=dtype,
                               requires_grad=True))


class _ZeroStateLink(TensorOp):
    """``gates + 0 @ W_hh`` without the product: the first step from an implicit zero state.

    The value is ``gates`` itself; ``W_hh`` gets the zero gradient that an explicit zero
    state gives it (PyTorch's behaviour), so every parameter has a ``.grad`` after
    backward even on a one-step sequence, for the cost of one zeros array in backward
    instead of a (batch, H) x (H, nH) matmul in each direction.
    """

    def compute(self, gates, w_hh):
        return gates

    def gradient(self, out_grad, node):
        return out_grad, init.zeros_like(node.inputs[1])


def _from_zero_state(gates, w_hh):
    return _ZeroStateLink()(gates, w_hh)


def _check_input(x, input_size, owner, ndim):
    if len(x.shape) != ndim or x.shape[-1] != input_size:
        want = "(batch, input_size)" if ndim == 2 else "(seq_len, batch, input_size)"
        raise ValueError(f"{owner}: expected {want} with input_size={input_size}, "
                         f"got {tuple(x.shape)}")


def _rnn_repr(m):
    """PyTorch's RNN/LSTM format: sizes, then the settings that differ from the defaults."""
    s = f"{m.input_size}, {m.hidden_size}"
    if getattr(m, "num_layers", 1) != 1:
        s += f", num_layers={m.num_layers}"
    cell = m if not hasattr(m, "num_layers") else (m.rnn_cells if hasattr(m, "rnn_cells")
                                                   else m.lstm_cells)[0]
    if cell.bias_ih is None:
        s += ", bias=False"
    if getattr(cell, "nonlinearity", "tanh") != "tanh":
        s += f", nonlinearity={cell.nonlinearity}"   # unquoted, as PyTorch prints it
    return s


class RNNCell(Module):
    """``h' = act(X @ W_ih + b_ih + h @ W_hh + b_hh)`` with act tanh or relu."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype="float32"):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        bound = 1.0 / np.sqrt(hidden_size)
        self.W_ih = _uniform((input_size, hidden_size), bound, device, dtype)
        self.W_hh = _uniform((hidden_size, hidden_size), bound, device, dtype)
        if bias:
            self.bias_ih = _uniform((hidden_size,), bound, device, dtype)
            self.bias_hh = _uniform((hidden_size,), bound, device, dtype)
        else:
            self.bias_ih = None
            self.bias_hh = None

    def forward(self, X, h=None):
        _check_input(X, self.input_size, "RNNCell", 2)
        bs = X.shape[0]
        out = X @ self.W_ih
        out = _from_zero_state(out, self.W_hh) if h is None else out + h @ self.W_hh
        if self.bias_ih is not None:
            shape = (1, self.hidden_size)
            out = out + self.bias_ih.reshape(shape).broadcast_to((bs, self.hidden_size))
            out = out + self.bias_hh.reshape(shape).broadcast_to((bs, self.hidden_size))
        return ops.tanh(out) if self.nonlinearity == "tanh" else ops.relu(out)

    def extra_repr(self):
        return _rnn_repr(self)


class RNN(Module):
    """Stacked RNN: forward(X (T, B, in), h0 (L, B, H)) -> (output (T, B, H), h_n (L, B, H))."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, nonlinearity="tanh",
                 device=None, dtype="float32"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"RNN: num_layers must be >= 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.rnn_cells = [RNNCell(input_size if k == 0 else hidden_size, hidden_size, bias,
                                  nonlinearity, device, dtype) for k in range(num_layers)]

    def forward(self, X, h0=None):
        _check_input(X, self.input_size, "RNN", 3)
        seq_len = X.shape[0]
        hs = [None] * self.num_layers if h0 is None else list(ops.split(h0, 0))
        inputs = list(ops.split(X, 0))
        for k, cell in enumerate(self.rnn_cells):
            h = hs[k]
            outputs = []
            for t in range(seq_len):
                h = cell(inputs[t], h)
                outputs.append(h)
            hs[k] = h
            inputs = outputs
        return ops.stack(inputs, 0), ops.stack(hs, 0)

    def extra_repr(self):
        return _rnn_repr(self)


class LSTMCell(Module):
    """Gates ``X@W_ih + b_ih + h@W_hh + b_hh`` split into i, f, g, o (PyTorch order)."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        bound = 1.0 / np.sqrt(hidden_size)
        self.W_ih = _uniform((input_size, 4 * hidden_size), bound, device, dtype)
        self.W_hh = _uniform((hidden_size, 4 * hidden_size), bound, device, dtype)
        if bias:
            self.bias_ih = _uniform((4 * hidden_size,), bound, device, dtype)
            self.bias_hh = _uniform((4 * hidden_size,), bound, device, dtype)
        else:
            self.bias_ih = None
            self.bias_hh = None

    def forward(self, X, h=None):
        _check_input(X, self.input_size, "LSTMCell", 2)
        return self._step(self._project(X), h)

    def _project(self, X):
        """``X @ W_ih + (b_ih + b_hh)`` for (rows, input_size) X: the part of the gates
        that does not depend on the state (one matmul for a whole sequence)."""
        gates = X @ self.W_ih
        if self.bias_ih is not None:
            row = (1, 4 * self.hidden_size)
            bias = self.bias_ih.reshape(row) + self.bias_hh.reshape(row)
            gates = gates + bias.broadcast_to(gates.shape)
        return gates

    def _step(self, gates, h):
        """One step from the projected input ``gates`` (bs, 4H) and the state (h, c) or None."""
        bs = gates.shape[0]
        H = self.hidden_size
        h0, c0 = (None, None) if h is None else h
        # No state: h0 = c0 = 0, so h0 @ W_hh and f * c0 vanish (W_hh still gets its zero grad).
        gates = _from_zero_state(gates, self.W_hh) if h0 is None else gates + h0 @ self.W_hh
        # (bs, 4H) -> (bs, 4, H) -> four (bs, H) blocks in i, f, g, o order.
        blocks = ops.split(gates.reshape((bs, 4, H)), 1)
        i, f, g, o = (_sigmoid(blocks[0]), _sigmoid(blocks[1]), ops.tanh(blocks[2]),
                      _sigmoid(blocks[3]))
        c = i * g if c0 is None else f * c0 + i * g
        return o * ops.tanh(c), c

    def extra_repr(self):
        return _rnn_repr(self)


class LSTM(Module):
    """Stacked LSTM: forward(X (T, B, in), (h0, c0) each (L, B, H)) ->
    (output (T, B, H), (h_n, c_n))."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, device=None,
                 dtype="float32"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LSTM: num_layers must be >= 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm_cells = [LSTMCell(input_size if k == 0 else hidden_size, hidden_size, bias,
                                    device, dtype) for k in range(num_layers)]

    def forward(self, X, h=None):
        _check_input(X, self.input_size, "LSTM", 3)
        seq_len = X.shape[0]
        if h is None:
            hs = [None] * self.num_layers
            cs = [None] * self.num_layers
        else:
            hs = list(ops.split(h[0], 0))
            cs = list(ops.split(h[1], 0))
        bs = X.shape[1]
        seq = X
        for k, cell in enumerate(self.lstm_cells):
            # The input half of every gate for all time steps in one matmul.
            xw = cell._project(seq.reshape((seq_len * bs, seq.shape[2])))
            xw = ops.split(xw.reshape((seq_len, bs, 4 * self.hidden_size)), 0)
            state = None if hs[k] is None else (hs[k], cs[k])
            outputs = []
            for t in range(seq_len):
                state = cell._step(xw[t], state)
                outputs.append(state[0])
            hs[k], cs[k] = state
            seq = ops.stack(outputs, 0)
        return seq, (ops.stack(hs, 0), ops.stack(cs, 0))

    def extra_repr(self):
        return _rnn_repr(self)


class Embedding(Module):
    """Lookup table: x (seq_len, bs) of indices -> (seq_len, bs, embedding_dim)."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype="float32"):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(init.randn(num_embeddings, embedding_dim, device=device,
                                           dtype=dtype, requires_grad=True))

    def forward(self, x: Tensor) -> Tensor:
        idx = np.asarray(x.numpy())
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"Embedding({self.num_embeddings}, {self.embedding_dim}): indices "
                             f"must be in [0, {self.num_embeddings}), got range "
                             f"[{idx.min()}, {idx.max()}]")
        # Same values as one_hot(x) @ weight, in O(len(x) * dim): a row gather whose
        # adjoint scatter-adds into the weight's rows.
        out = ops.gather_rows(self.weight, idx.reshape(-1))
        return out.reshape(tuple(x.shape) + (self.embedding_dim,))

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"
