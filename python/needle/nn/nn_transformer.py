"""Multi-head attention and the pre-norm Transformer (course hw4_extra layout)."""
import numpy as np

import needle.init as init
from needle import ops
from needle.autograd import Tensor
from needle.ops import array_backend as B

from .nn_basic import Dropout, LayerNorm1d, Linear, Module, ReLU
from .nn_sequence import Embedding


class MultiHeadAttention(Module):
    """Scaled dot-product attention over (B, H, T, D) inputs; no parameters.

    ``use_batched_matmul`` selects a reshape-to-3-D ``ops.matmul``; when False the
    course's broadcast-multiply-sum form (``matmul``) is used, whose float32
    accumulation order the course's expected values came from.
    """

    use_batched_matmul = True

    def __init__(self, *, dropout=0.0, causal=False, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.causal = causal
        self.dropout = Dropout(dropout)

    def create_causal_mask(self, i, j, device):
        """(1, 1, i, j) array: -float32max above the diagonal offset ``j - i + 1``, else 0."""
        mask = -np.finfo(np.float32).max * np.triu(
            np.ones((1, 1, i, j), dtype=np.float32), j - i + 1)
        return B.array(mask, device)

    def matmul(self, a, b_transpose):
        """Batched ``a @ b_transpose^T`` over the last two axes via broadcast, multiply, sum."""
        a_shape = (*a.shape[:-1], 1, *a.shape[-1:])
        a = a.reshape(a_shape)
        b_transpose_shape = (*b_transpose.shape[:-2], 1, *b_transpose.shape[-2:])
        b_transpose = b_transpose.reshape(b_transpose_shape)
        broadcast_shape = list(a_shape)
        broadcast_shape[-2] = b_transpose_shape[-2]
        a = a.broadcast_to(broadcast_shape)
        broadcast_shape = list(b_transpose_shape)
        broadcast_shape[-3] = a_shape[-3]
        b_transpose = b_transpose.broadcast_to(broadcast_shape)
        return (a * b_transpose).sum(len(a.shape) - 1)

    def _bmm_t(self, a, b_transpose):
        """Same result as :meth:`matmul` through one 3-D batched ``ops.matmul``."""
        if not self.use_batched_matmul:
            return self.matmul(a, b_transpose)
        *lead, m, k = a.shape
        n = b_transpose.shape[-2]
        batch = int(np.prod(lead))
        a3 = a.reshape((batch, m, k))
        b3 = b_transpose.reshape((batch, n, k)).transpose((1, 2))
        return ops.matmul(a3, b3).reshape((*lead, m, n))

    def softmax(self, logit):
        """Softmax over the last axis; the max is taken on raw data (no gradient through it)."""
        last = len(logit.shape) - 1
        max_val = Tensor(logit.realize_cached_data().max(axis=last), device=logit.device,
                         dtype=logit.dtype, requires_grad=False)
        max_val = max_val.reshape((*logit.shape[:-1], 1)).broadcast_to(logit.shape)
        probs = ops.exp(logit - max_val)
        denom = probs.sum(axes=last).reshape((*logit.shape[:-1], 1)).broadcast_to(logit.shape)
        return probs / denom

    def forward(self, q, k, v):
        """q (B, H, Tq, D), k and v (B, H, Tk, D) -> (result (B, H, Tq, D), probs (B, H, Tq, Tk))."""
        batch_size, num_head, queries_len, q_dim = q.shape
        _, _, keys_values_len, k_dim = k.shape
        _, _, _, v_dim = v.shape
        if not q_dim == k_dim == v_dim:
            raise ValueError(f"MultiHeadAttention: q, k, v head dims differ: {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}")
        logits = self._bmm_t(q, k) / np.sqrt(q_dim)
        if self.causal:
            mask = self.create_causal_mask(queries_len, keys_values_len, q.device)
            logits = logits + Tensor(mask, device=q.device, dtype=logits.dtype,
                                     requires_grad=False).broadcast_to(logits.shape)
        probs = self.dropout(self.softmax(logits))
        result = self._bmm_t(probs, v.transpose((2, 3)))
        return result, probs

    def extra_repr(self):
        return f"causal={self.causal}"


class AttentionLayer(Module):
    """Pre-norm multi-head attention with bias-free q/k/v/out projections on (B, T, D)."""

    def __init__(self, q_features, num_head, dim_head, *, k_features=None, v_features=None,
                 out_features=None, dropout=0.0, causal=True, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        k_features = q_features if k_features is None else k_features
        v_features = q_features if v_features is None else v_features
        out_features = q_features if out_features is None else out_features
        self.q_features = q_features
        self.k_features = k_features
        self.v_features = v_features
        self.out_features = out_features
        self.num_head = num_head
        self.dim_head = dim_head
        self.prenorm_q = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.prenorm_k = LayerNorm1d(k_features, device=device, dtype=dtype)
        self.prenorm_v = LayerNorm1d(v_features, device=device, dtype=dtype)
        inner = num_head * dim_head
        self.q_projection = Linear(q_features, inner, bias=False, device=device, dtype=dtype)
        self.k_projection = Linear(k_features, inner, bias=False, device=device, dtype=dtype)
        self.v_projection = Linear(v_features, inner, bias=False, device=device, dtype=dtype)
        self.attn = MultiHeadAttention(dropout=dropout, causal=causal, device=device, dtype=dtype)
        self.out_projection = Linear(inner, out_features, bias=False, device=device, dtype=dtype)

    def _heads(self, x):
        b, t, _ = x.shape
        return x.reshape((b, t, self.num_head, self.dim_head)).transpose((1, 2))

    def forward(self, q, k=None, v=None):
        k = q if k is None else k
        v = q if v is None else v
        batch_size, queries_len, _ = q.shape
        q = self._heads(self.q_projection(self.prenorm_q(q)))
        k = self._heads(self.k_projection(self.prenorm_k(k)))
        v = self._heads(self.v_projection(self.prenorm_v(v)))
        result, _ = self.attn(q, k, v)
        result = result.transpose((1, 2)).reshape(
            (batch_size, queries_len, self.num_head * self.dim_head))
        return self.out_projection(result)

    def extra_repr(self):
        s = f"q_features={self.q_features}, num_head={self.num_head}, dim_head={self.dim_head}"
        for name in ("k_features", "v_features", "out_features"):
            if getattr(self, name) != self.q_features:
                s += f", {name}={getattr(self, name)}"
        return s


class TransformerLayer(Module):
    """``x + Dropout(Attn(x))`` then ``x + Dropout(Linear2(Dropout(ReLU(Linear1(LN(x))))))``."""

    def __init__(self, q_features, num_head, dim_head, hidden_size, *, dropout=0.0, causal=True,
                 device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.attn = AttentionLayer(q_features, num_head, dim_head, dropout=dropout,
                                   causal=causal, device=device, dtype=dtype)
        self.layernorm = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.linear1 = Linear(q_features, hidden_size, device=device, dtype=dtype)
        self.linear2 = Linear(hidden_size, q_features, device=device, dtype=dtype)
        self.relu = ReLU()
        self.dropout = Dropout(dropout)

    def forward(self, x):
        x = x + self.dropout(self.attn(x))
        y = self.linear2(self.dropout(self.relu(self.linear1(self.layernorm(x)))))
        return x + self.dropout(y)


class Transformer(Module):
    """Learned positional embedding + ``num_layers`` TransformerLayers.

    forward(x (T, B, D), h=None) -> (y (T, B, D), zeros_like(y)); ``batch_first``
    switches to (B, T, D).
    """

    def __init__(self, embedding_size, hidden_size, num_layers, *, num_head=8, dim_head=32,
                 dropout=0.0, causal=True, device=None, dtype="float32", batch_first=False,
                 sequence_len=2048):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.batch_first = batch_first
        self.sequence_len = sequence_len
        self.embedding_size = embedding_size
        self.positional_embedding = Embedding(sequence_len, embedding_size, device=device,
                                              dtype=dtype)
        self.layers = [TransformerLayer(embedding_size, num_head, dim_head, hidden_size,
                                        dropout=dropout, causal=causal, device=device,
                                        dtype=dtype) for _ in range(num_layers)]

    def forward(self, x, h=None):
        if not self.batch_first:
            x = x.transpose((0, 1))
        batch_size, seq_len, _ = x.shape
        if seq_len > self.sequence_len:
            raise ValueError(f"Transformer: sequence length {seq_len} exceeds sequence_len "
                             f"{self.sequence_len}")
        positions = np.tile(np.arange(seq_len, dtype=np.float32)[:, None], (1, batch_size))
        positions = Tensor(positions, device=x.device, dtype=x.dtype, requires_grad=False)
        pos = self.positional_embedding(positions).transpose((0, 1))   # (B, T, D)
        x = x + pos
        for layer in self.layers:
            x = layer(x)
        if not self.batch_first:
            x = x.transpose((0, 1))
        return x, init.zeros_like(x)

    def extra_repr(self):
        return (f"embedding_size={self.embedding_size}, num_layers={len(self.layers)}, "
                f"sequence_len={self.sequence_len}, batch_first={self.batch_first}")
