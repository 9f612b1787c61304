"""Fused softmax cross-entropy with integer labels.

For logits z (n, k) and labels y (n,): loss = mean_i(lse(z_i) - z_i[y_i]) with
lse(z_i) = m_i + log(sum_j exp(z_ij - m_i)), m_i = max_j z_ij (the logsumexp
trick, see ops_logarithmic). Gradient: dloss/dz = (softmax(z) - onehot(y)) / n.

The composition (logsumexp, a gathered logit, a sum) makes ~4 passes over z
forward and ~6 backward, each a separate kernel and temporary; for a 320 x 10k
language-model output that was a third of a training step. Here the backend
does one pass per row forward (``softmax_xent``: max, then sum of exp) and one
backward (``softmax_xent_grad``), keeping only the (n,) row log-sum-exps. The
composition stays the test oracle (tests/test_loss.py), and the adjoint is
itself an op whose gradient is written with needle ops, so it stays
differentiable.
"""
import numpy

from ..autograd import Tensor, TensorOp
from . import array_backend as B
from .ops_logarithmic import logsoftmax
from .ops_mathematic import broadcast_to, exp, reshape, summation


def _label_array(labels, like):
    """Labels (a Tensor, array or list of class numbers: any integer dtype, or the
    course's float32-encoded ones) as the backend's (n,) index array on ``like``'s device."""
    if isinstance(labels, Tensor):
        labels = labels.realize_cached_data()
    return B.index_array(labels, like)


def _check(z, labels, op):
    if z.ndim != 2:
        raise ValueError(f"{op}: logits must be (n, k), got shape {tuple(z.shape)}")
    n = z.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{op}: {labels.shape[0]} labels for logits of shape {tuple(z.shape)}")


class SoftmaxCrossEntropy(TensorOp):
    """mean_i(logsumexp(z_i) - z_i[y_i]) for logits z (n, k) and integer labels y (n,).

    Output shape (). Gradient: (softmax(z) - onehot(y)) * g / n, by
    ``SoftmaxCrossEntropyGrad``. Example: ``softmax_cross_entropy(z, y)`` equals
    ``(logsumexp(z, (1,)) - (z * one_hot(y)).sum((1,))).sum() / n``.
    """

    def __init__(self, labels):
        self.labels = labels
        self.lse = None

    def compute(self, z):
        labels = _label_array(self.labels, z)
        _check(z, labels, "softmax_cross_entropy")
        self.labels = labels
        loss, self.lse = B.softmax_xent(z, labels)
        return loss

    def gradient(self, out_grad, node):
        return SoftmaxCrossEntropyGrad(self.labels, self.lse)(node.inputs[0], out_grad)


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy of ``logits`` (n, k) against integer ``labels`` (n,)
    (a Tensor, NDArray or numpy array of class numbers)."""
    return SoftmaxCrossEntropy(labels)(logits)


class SoftmaxCrossEntropyGrad(TensorOp):
    """The adjoint of SoftmaxCrossEntropy: (softmax(z) - onehot(y)) * g / n for z (n, k)
    and the scalar upstream gradient g. ``lse`` holds the forward's row log-sum-exps.

    Its own gradient (second order) is a composition: with s = softmax(z), h the
    upstream (n, k) gradient, dz = (s h - s sum_j(s h)) g / n and
    dg = sum((s - onehot) h) / n.
    """

    def __init__(self, labels, lse):
        self.labels = labels
        self.lse = lse

    def compute(self, z, g):
        return B.softmax_xent_grad(z, self.labels, self.lse, g)

    def gradient(self, out_grad, node):
        z, g = node.inputs
        n, k = z.shape
        s = exp(logsoftmax(z))
        sh = s * out_grad
        row = broadcast_to(reshape(summation(sh, (1,)), (n, 1)), (n, k))
        scale = broadcast_to(reshape(g, (1, 1)), (n, k)) / n
        dz = (sh - s * row) * scale
        onehot = Tensor.make_const(B.one_hot(self.labels, k, z.realize_cached_data()))
        dg = reshape(summation((s - onehot) * out_grad) / n, g.shape)
        return dz, dg


def softmax_cross_entropy_composition(logits, labels):
    """The same loss from primitive ops (the oracle the fused op is tested against):
    ``logsumexp(logits, (1,))`` minus the label's logit gathered from the (n*k, 1) view."""
    from .ops_logarithmic import logsumexp
    from .ops_mathematic import gather_rows

    n, k = logits.shape
    rows = numpy.asarray(labels.numpy() if hasattr(labels, "numpy") else labels).astype(numpy.int64).reshape(-1)
    true_logit = gather_rows(reshape(logits, (n * k, 1)), numpy.arange(n, dtype=numpy.int64) * k + rows)
    return summation(logsumexp(logits, axes=(1,)) - reshape(true_logit, (n,))) / n
