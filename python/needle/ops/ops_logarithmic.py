"""log-sum-exp and log-softmax, numerically stable.

The trick: lse(z) = m + log(sum(exp(z - m))) with m = max(z). Every exponent
is <= 0, so nothing overflows and the largest term is exactly 1; the result
is exact even for |z| ~ 1e10 (where exp(z) itself is inf or 0).
Gradient: d lse / dz = exp(z - lse(z)) = softmax(z), written with the output
node so that it is differentiable again.
"""
from ..autograd import TensorOp
from . import array_backend as B
from .ops_mathematic import _norm_axes, broadcast_to, exp, reshape, summation


class LogSumExp(TensorOp):
    """log(sum(exp(z), axes)), reduced axes removed (all axes -> shape ())."""

    def __init__(self, axes=None):
        self.axes = axes

    def compute(self, Z):
        axes = _norm_axes(self.axes, Z.ndim, "logsumexp")
        if not axes:
            return Z
        m = B.reduce_max(Z, axes, keepdims=True)
        s = B.reduce_sum(B.exp(Z - B.broadcast_to(m, Z.shape)), axes)
        return B.log(s) + m.reshape(s.shape)

    def gradient(self, out_grad, node):
        z = node.inputs[0]
        axes = _norm_axes(self.axes, len(z.shape), "logsumexp")
        keep = tuple(1 if i in axes else n for i, n in enumerate(z.shape))
        # z + broadcast(-lse): the negation runs on the reduced tensor, not on (n, k).
        softmax = exp(z + broadcast_to(reshape(-node, keep), z.shape))
        return broadcast_to(reshape(out_grad, keep), z.shape) * softmax


def logsumexp(a, axes=None):
    return LogSumExp(axes=axes)(a)


class LogSoftmax(TensorOp):
    """z - logsumexp(z) over the last axis (axis 1 of the course's 2-D inputs).

    Gradient: g - softmax(z) * sum(g, last axis).
    """

    def compute(self, Z):
        if Z.ndim < 1:
            raise ValueError("logsoftmax: need at least a 1-D tensor")
        axes = (Z.ndim - 1,)
        m = B.broadcast_to(B.reduce_max(Z, axes, keepdims=True), Z.shape)
        shifted = Z - m
        lse = B.log(B.reduce_sum(B.exp(shifted), axes, keepdims=True))
        return shifted - B.broadcast_to(lse, Z.shape)

    def gradient(self, out_grad, node):
        shape = node.shape
        keep = shape[:-1] + (1,)
        total = broadcast_to(reshape(summation(out_grad, (len(shape) - 1,)), keep), shape)
        return out_grad - exp(node) * total


def logsoftmax(a):
    return LogSoftmax()(a)
