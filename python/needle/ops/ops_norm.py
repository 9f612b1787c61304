"""Fused batch and layer normalisation.

Both normalise a 2-D view of the input: batch norm the (M, C) view that has the
channel axis last (x (N, C) as is; x (N, C, H, W) permuted to (N, H, W, C),
which is a free view of nn.Conv's NHWC output) over its rows, layer norm the
(R, D) view of x (..., D) along each row. With n the count normalised over,
mu the mean, var the BIASED variance, sigma = sqrt(var + eps), xhat =
(x - mu) / sigma:

    y  = w * xhat + b
    db = sum(g),  dw = sum(g * xhat)          (over the rows of the 2-D view)
    dx = (P(q) / sigma) * c,  P(t) = t - mean(t) - xhat * mean(t * xhat)

with q = g, c = w for batch norm (w is constant along the normalised axis)
and q = g * w, c = 1 for layer norm (means taken along the normalised axis).

The composition (sum, broadcast, power, divide nodes: about fifteen forward,
thirty backward) costs a graph node each, which dominated BatchNorm-heavy
training steps; here the forward is one node and the backward one
``*NormGrad`` node (plus the three ``tuple_get_item``s). The compositions stay
as test oracles (``batch_norm_composition``, ``layer_norm_composition``), and
the adjoint's own gradient is written with needle ops (``_norm_grad_grad``),
so gradient-of-gradient works.

In nd mode batch norm runs on the backend's ``bn_forward`` / ``bn_backward`` kernels
(``NDArray.batch_norm`` / ``batch_norm_grad``): statistics in two passes over x, the
output in a third, and the adjoint in two passes over (x, g), with no centred copy of
x kept between them. np mode and layer norm use the NDArray/numpy expressions below.
"""
from ..autograd import Tensor, TensorOp, TensorTupleOp
from . import array_backend as B
from .ops_mathematic import broadcast_to, negate, permute, reshape, summation
from .ops_tuple import tuple_get_item


def _to_last(ndim):
    """The permutation moving axis 1 last, and its inverse (None for 2-D)."""
    if ndim == 2:
        return None, None
    perm = (0,) + tuple(range(2, ndim)) + (1,)
    inv = [0] * ndim
    for i, ax in enumerate(perm):
        inv[ax] = i
    return perm, tuple(inv)


def _check(op, x, w, b):
    if op == "batch_norm":
        if x.ndim < 2:
            raise ValueError(f"batch_norm: input must be (N, C, ...), got shape {tuple(x.shape)}")
        c = x.shape[1]
    else:
        if x.ndim < 1:
            raise ValueError(f"layer_norm: input must be (..., D), got shape {tuple(x.shape)}")
        c = x.shape[-1]
    for name, p in (("weight", w), ("bias", b)):
        if p is not None and p.size != c:
            raise ValueError(f"{op}: {name} of shape {tuple(p.shape)} does not match {c} features of input "
                             f"{tuple(x.shape)}")


class _Norm(TensorOp):
    """Shared compute for BatchNorm (axis 0 of the 2-D view) and LayerNorm (axis 1)."""

    axis = 0
    name = ""

    def __init__(self, eps=1e-5):
        self.eps = float(eps)
        self.xc = self.inv = self.scale = self.mean = self.var = self.x2 = None

    # 2-D views of backend arrays and back
    def view2d(self, a):
        raise NotImplementedError(f"{type(self).__name__} must define view2d (abstract)")

    def unview(self, a2, shape):
        raise NotImplementedError(f"{type(self).__name__} must define unview (abstract)")

    def compute(self, x, w, b):
        _check(self.name, x, w, b)
        x2 = self.view2d(x)
        shape = tuple(x2.shape)
        ax, n = self.axis, shape[self.axis]
        cols = shape[1]
        if ax == 0 and B.fused_dtype(x2, w, b):  # the backend's fused kernel: statistics and output in one call
            out, self.mean, self.var = x2.batch_norm(_vec(w, cols), _vec(b, cols), self.eps)
            self.x2 = x2
            return self.unview(out, tuple(x.shape))
        neg_mean = x2.sum(axis=ax) * (-1.0 / n) if n else B.full(_stat_shape(shape, ax), 0.0, x2)
        xc = x2 + _bcast(neg_mean, ax, shape)
        var = (xc * xc).sum(axis=ax) * (1.0 / n) if n else B.full(_stat_shape(shape, ax), 0.0, x2)
        inv = (var + self.eps) ** -0.5
        wr, br = _vec(w, cols), _vec(b, cols)
        if ax == 0:  # one per-feature scale: two passes over x
            self.scale = inv * wr
            out = xc * _bcast(self.scale, 0, shape) + _bcast(br, 0, shape)
        else:
            out = (xc * _bcast(inv, 1, shape)) * _bcast(wr, 0, shape) + _bcast(br, 0, shape)
        self.xc, self.inv = xc, inv
        self.mean, self.var = -neg_mean, var
        return self.unview(out, tuple(x.shape))

    def gradient(self, out_grad, node):
        x, w, b = node.inputs
        t = self.grad_op(tuple(b.shape))(x, w, out_grad)
        return tuple_get_item(t, 0), tuple_get_item(t, 1), tuple_get_item(t, 2)


class _NormGrad(TensorTupleOp):
    """(dx, dw, db) of a ``_Norm`` given (x, w, g); reuses the forward's centred x and 1/sigma."""

    axis = 0

    def __init__(self, fwd, b_shape):
        self.fwd = fwd
        self.b_shape = b_shape

    def compute(self, x, w, g):
        fwd, ax = self.fwd, self.axis
        g2 = fwd.view2d(g)
        if fwd.x2 is not None:  # the forward ran the fused kernel: so does the adjoint
            cols = g2.shape[1]
            dx, dw, db = g2.batch_norm_grad(fwd.x2, _vec(w, cols), fwd.mean, fwd.var, fwd.eps)
            return (fwd.unview(dx, tuple(x.shape)), dw if tuple(w.shape) == (cols,) else dw.reshape(tuple(w.shape)),
                    db if self.b_shape == (cols,) else db.reshape(self.b_shape))
        xc, inv = fwd.xc, fwd.inv
        shape = tuple(g2.shape)
        n, cols = shape[ax], shape[1]
        db = g2.sum(axis=0)
        if ax == 0:
            # dx = w inv (g - mean(g) - xc inv^2 mean(g xc)) = k g + c_xc xc + c_0, k = w inv
            k = fwd.scale
            sgx = (g2 * xc).sum(axis=0)
            dw = sgx * inv
            scale = -1.0 / n if n else 0.0
            c_xc = (dw * k) * (inv * scale)
            c_0 = (db * k) * scale
            dx = g2 * _bcast(k, 0, shape) + xc * _bcast(c_xc, 0, shape) + _bcast(c_0, 0, shape)
        else:
            xhat = xc * _bcast(inv, 1, shape)
            dw = (g2 * xhat).sum(axis=0)
            q = g2 * _bcast(_vec(w, cols), 0, shape)
            scale = -1.0 / n if n else 0.0
            sq = q.sum(axis=1) * scale
            sqx = (q * xhat).sum(axis=1) * scale
            dx = (q + _bcast(sq, 1, shape) + xhat * _bcast(sqx, 1, shape)) * _bcast(inv, 1, shape)
        w_shape = tuple(w.shape)
        return (fwd.unview(dx, tuple(x.shape)), dw if w_shape == (cols,) else dw.reshape(w_shape),
                db if self.b_shape == (cols,) else db.reshape(self.b_shape))

    def gradient(self, out_grad, node):
        x, w, g = node.inputs
        return _norm_grad_grad(self.fwd, x, w, g, out_grad[0], out_grad[1], out_grad[2])


def _vec(p, cols):
    """A parameter as a (cols,) array (a view; no call when it already is one)."""
    return p if tuple(p.shape) == (cols,) else p.reshape((cols,))


def _stat_shape(shape, ax):
    return (shape[1 - ax],)


def _bcast(v, ax, shape):
    """A (K,) array broadcast over ``shape``: as a row (ax 0) or as a column (ax 1)."""
    if ax == 0:
        return B.broadcast_to(v, shape)
    return B.broadcast_to(v.reshape((shape[0], 1)), shape)


class BatchNorm(_Norm):
    """Training-mode batch norm of x (N, C, ...) over every axis but 1 with weight, bias (C,).

    After the call, ``mean`` and ``var`` (biased) hold the batch statistics (C,) as
    backend arrays, for the running-statistics update. Gradient: ``BatchNormGrad``.
    """

    axis = 0
    name = "batch_norm"

    def view2d(self, a):
        if a.ndim == 2:
            return a
        perm, _ = _to_last(a.ndim)
        return B.permute(a, perm).reshape((-1, a.shape[1]))

    def unview(self, a2, shape):
        if len(shape) == 2:
            return a2
        perm, inv = _to_last(len(shape))
        return B.permute(a2.reshape(tuple(shape[i] for i in perm)), inv)

    def grad_op(self, b_shape):
        return BatchNormGrad(self, b_shape)


class BatchNormGrad(_NormGrad):
    axis = 0


def batch_norm(x, weight, bias, eps=1e-5):
    """Batch norm of x (N, C) or (N, C, H, W) with batch statistics (training mode);
    ``BatchNorm(eps)`` directly exposes the statistics as ``.mean`` / ``.var``."""
    return BatchNorm(eps)(x, weight, bias)


class LayerNorm(_Norm):
    """Layer norm of x (..., D) over the last axis with weight, bias (D,). Gradient:
    ``LayerNormGrad``; ``mean``/``var`` hold the per-row statistics after the call."""

    axis = 1
    name = "layer_norm"

    def view2d(self, a):
        return a if a.ndim == 2 else a.reshape((-1, a.shape[-1]))

    def unview(self, a2, shape):
        return a2 if len(shape) == 2 else a2.reshape(shape)

    def grad_op(self, b_shape):
        return LayerNormGrad(self, b_shape)


class LayerNormGrad(_NormGrad):
    axis = 1


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer norm of x (..., D) over its last axis (biased variance)."""
    return LayerNorm(eps)(x, weight, bias)


# ---- second order ------------------------------------------------------------
def _norm_grad_grad(fwd, x, w, g, hx, hw, hb):
    """Adjoints of (x, w, g) for L = <hx, dx> + <hw, dw> + <hb, db>, in needle ops.

    With a the adjoint reaching P's output (hx * w for batch norm, hx for layer
    norm), q P's input (g, resp. g * w), s = 1/sigma and means along the
    normalised axis:
      adjoint of xhat: v = hw * g - s (mean(q xhat) a + mean(a xhat) q)
      adjoint of sigma: -s^2 sum(a P(q))
      dL/dx = s P(v) - s^2 sum(a P(q)) xhat / n
      dL/dq = s P(a);  dL/dg = dL/dq (* w) + hb + hw * xhat
      dL/dw = sum(hx P(g) s) (batch norm), sum(g dL/dq) (layer norm)
    """
    ax = fwd.axis
    is_bn = isinstance(fwd, BatchNorm)
    shape_in = tuple(x.shape)
    cols = shape_in[1] if is_bn else shape_in[-1]

    def view(t):
        if is_bn:
            if len(shape_in) == 2:
                return t
            perm, _ = _to_last(len(shape_in))
            return reshape(permute(t, perm), (-1, cols))
        return t if len(shape_in) == 2 else reshape(t, (-1, cols))

    def unview(t):
        if is_bn:
            if len(shape_in) == 2:
                return t
            perm, inv = _to_last(len(shape_in))
            return permute(reshape(t, tuple(shape_in[i] for i in perm)), inv)
        return t if len(shape_in) == 2 else reshape(t, shape_in)

    x2, g2, hx2 = view(x), view(g), view(hx)
    shape = tuple(x2.shape)
    n = shape[ax]

    def bc(v):  # (K,) statistic -> full shape
        return broadcast_to(reshape(v, (1, shape[1]) if ax == 0 else (shape[0], 1)), shape)

    def row(p):  # per-feature parameter -> full shape
        return broadcast_to(reshape(p, (1, cols)), shape)

    def mean_b(t):
        return bc(summation(t, (ax,)) / n)

    xc = x2 + negate(mean_b(x2))
    s = bc((summation(xc * xc, (ax,)) / n + fwd.eps) ** -0.5)
    xh = xc * s

    def proj(t):
        return t + negate(mean_b(t)) + negate(xh * mean_b(t * xh))

    wr = row(w)
    q, a = (g2, hx2 * wr) if is_bn else (g2 * wr, hx2)
    pq = proj(q)
    v = row(hw) * g2 + negate(s * (mean_b(q * xh) * a + mean_b(a * xh) * q))
    s_sigma = negate(bc(summation(a * pq, (ax,))) * s * s)
    dx = proj(v) * s + s_sigma * xh / n
    dq = proj(a) * s
    if is_bn:
        dg = dq + row(hb) + row(hw) * xh
        dw = summation(hx2 * pq * s, (0,))
    else:
        dg = dq * wr + row(hb) + row(hw) * xh
        dw = summation(g2 * dq, (0,))
    return unview(dx), reshape(dw, w.shape), unview(dg)


# ---- compositions (test oracles) ---------------------------------------------
def batch_norm_composition(x, weight, bias, eps=1e-5):
    """Training-mode batch norm from primitive ops: returns (y, mean, var) with the
    (C,) batch mean and biased variance as Tensors (the fused op's oracle)."""
    s = tuple(x.shape)
    if len(s) != 2:
        perm, inv = _to_last(len(s))
        y, mean, var = batch_norm_composition(reshape(permute(x, perm), (-1, s[1])), weight, bias, eps)
        return permute(reshape(y, tuple(s[i] for i in perm)), inv), mean, var
    n, c = s
    mean = summation(x, (0,)) / n
    xc = x + negate(broadcast_to(reshape(mean, (1, c)), s))
    var = summation(xc ** 2, (0,)) / n
    scale = reshape(weight, (c,)) * (var + eps) ** -0.5
    y = xc * broadcast_to(reshape(scale, (1, c)), s) + broadcast_to(reshape(bias, (1, c)), s)
    return y, mean, var


def layer_norm_composition(x, weight, bias, eps=1e-5):
    """Layer norm over the last axis from primitive ops (the fused op's oracle)."""
    shape = tuple(x.shape)
    last, dim = len(shape) - 1, shape[-1]
    keep = shape[:-1] + (1,)
    mean = broadcast_to(reshape(summation(x, (last,)) / dim, keep), shape)
    xc = x - mean
    var = broadcast_to(reshape(summation(xc ** 2, (last,)) / dim, keep), shape)
    xhat = xc / ((var + eps) ** 0.5)
    lead = (1,) * last + (dim,)
    return broadcast_to(reshape(weight, lead), shape) * xhat + broadcast_to(reshape(bias, lead), shape)
