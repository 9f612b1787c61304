"""2-D convolution (im2col + matmul, implicit or explicit) and pooling (strided views + reductions). NHWC."""
import functools
import os
from typing import NamedTuple

import numpy

from ..autograd import TensorOp
from . import array_backend as B
from .ops_indexing import pad
from .ops_mathematic import Dilate, amax, summation


# How Conv computes: "implicit" is the backend's conv2d (on the CPU an implicit GEMM whose packing
# reads the image, so no im2col matrix is ever allocated); "im2col" is the explicit strided im2col
# view, compacted and multiplied (the reference); "auto" picks implicit on the CPU for float32 and
# float64 and im2col elsewhere (the CUDA conv2d is a direct loop, slower than its tiled matmul).
CONV_ALGORITHMS = ("auto", "implicit", "im2col")
_IMPLICIT_DTYPES = ("float32", "float64")
_algorithm = os.environ.get("NEEDLE_CONV_ALGORITHM", "auto")
if _algorithm not in CONV_ALGORITHMS:
    raise ValueError(f"NEEDLE_CONV_ALGORITHM must be one of {CONV_ALGORITHMS}, got {_algorithm!r}")


def set_conv_algorithm(name):
    """Select how Conv computes ("auto", "implicit" or "im2col"); returns the previous choice."""
    global _algorithm
    if name not in CONV_ALGORITHMS:
        raise ValueError(f"conv algorithm must be one of {CONV_ALGORITHMS}, got {name!r}")
    previous, _algorithm = _algorithm, name
    return previous


def get_conv_algorithm():
    return _algorithm


def _use_implicit(X):
    if not B.has_backend_conv(X) or _algorithm == "im2col" or X.dtype not in _IMPLICIT_DTYPES:
        return False
    return _algorithm == "implicit" or X.device.name == "cpu"


def _pair(v, what):
    if isinstance(v, (int, numpy.integer)):
        return int(v), int(v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(x, (int, numpy.integer)) for x in v):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(v[0]), int(v[1])


def _padding(p):
    """int | (ph, pw) | ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if isinstance(p, (int, numpy.integer)):
        return (int(p), int(p)), (int(p), int(p))
    p = tuple(p)
    if len(p) == 2 and all(isinstance(x, (int, numpy.integer)) for x in p):
        return (int(p[0]), int(p[0])), (int(p[1]), int(p[1]))
    if len(p) == 2:
        return _pair(p[0], "padding"), _pair(p[1], "padding")
    raise ValueError(f"padding must be an int, (ph, pw) or ((top, bottom), (left, right)), got {p!r}")


def _pad_or_crop(x, pads):
    """Pad H and W of NHWC ``x`` by ``pads`` ((top, bottom), (left, right)); negative widths crop."""
    (pt, pb), (pl, pr) = pads
    if max(pt, pb, pl, pr) > 0:
        x = B.pad(x, ((0, 0), (max(pt, 0), max(pb, 0)), (max(pl, 0), max(pr, 0)), (0, 0)))
    if min(pt, pb, pl, pr) < 0:
        H, W = x.shape[1], x.shape[2]
        x = x[:, -min(pt, 0) : H + min(pb, 0), -min(pl, 0) : W + min(pr, 0), :]
    return B.compact(x)


def _out_size(n, k, stride, dilation):
    return (n - dilation * (k - 1) - 1) // stride + 1


def _windows(x, kernel, stride, dilation, group_split=1):
    """im2col as a VIEW: compact NHWC ``x`` -> (N, Ho, Wo, kh, kw, C); stride and dilation are strides.

    With ``group_split`` = g > 1 the channel axis is split: (N, Ho, Wo, kh, kw, g, C/g).
    """
    N, H, W, C = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    Ho, Wo = _out_size(H, kh, sh, dh), _out_size(W, kw, sw, dw)
    sN, sH, sW, sC = B.strides(x)
    shape = (N, Ho, Wo, kh, kw, C)
    strides = (sN, sH * sh, sW * sw, sH * dh, sW * dw, sC)
    if group_split > 1:
        shape = shape[:-1] + (group_split, C // group_split)
        strides = strides[:-1] + (sC * (C // group_split), sC)
    return B.as_strided(x, shape, strides)


def _live(n, k, s, d, p, n_out):
    """One axis of a conv on ``n`` input rows with top padding ``p`` (negative crops) and ``n_out``
    outputs: (first, last) tap and (first, last) output that touch a real input row
    (tap j of output o reads padded row o s + j d, real when p <= o s + j d < p + n);
    None when no tap does. The bounds are exact; a dead tap or output strictly between
    them (only possible when n < s) is kept and just multiplies zeros."""
    taps, outs = [], []
    for j in range(k):
        lo = max(0, -((j * d - p) // s))  # ceil((p - j d) / s)
        hi = min(n_out - 1, (p + n - 1 - j * d) // s)
        if lo <= hi:
            taps.append(j)
            outs.append((lo, hi))
    if not taps:
        return None
    return taps[0], taps[-1], min(o[0] for o in outs), max(o[1] for o in outs)


def _dx_axis(n, n_out, k, s, d, p):
    """One spatial axis of the dX convolution (see Conv): (taps L, left and right zero padding
    of the kernel before it is split into s phases, (pad_lo, pad_hi) of G), or None when
    stride and kernel dilation are both > 1 (the caller then dilates G instead).

    Input row t = a s + r (phase r) of X sits at o s + k = t + p of the padded input, so
    with lp = (-p) mod s and Wp = W shifted right by lp: dX_r[a] = sum_m G[a + E - m] Wp[m s + r],
    E = (p + lp) / s. Reshaping Wp to (L, s) and flipping the L axis makes that a stride-1
    cross-correlation of G padded by L - 1 - E on the left; the output has ceil(n / s) rows per phase.
    """
    if s == 1:
        keff = d * (k - 1) + 1
        return k, 0, 0, (keff - 1 - p, n - n_out + p)
    if d != 1:
        return None
    lp = (-p) % s
    L = -(-(k + lp) // s)
    E = (p + lp) // s
    A = -(-n // s)
    lo = L - 1 - E
    return L, lp, L * s - k - lp, (lo, A + L - 1 - lo - n_out)


class _ConvArgs(NamedTuple):
    """The options of one convolution, validated once (_conv_args) and shared by Conv and its
    adjoints; hashable, so the shape arithmetic below is cached per layer."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


def _conv_args(stride=1, padding=0, dilation=1, groups=1):
    a = _ConvArgs(_pair(stride, "conv stride"), _padding(padding), _pair(dilation, "conv dilation"), int(groups))
    if min(a.stride) < 1 or min(a.dilation) < 1 or a.groups < 1:
        raise ValueError(f"conv: stride {a.stride}, dilation {a.dilation} and groups {a.groups} must be >= 1")
    return a


@functools.lru_cache(maxsize=1024)
def _check_conv(x_shape, w_shape, a):
    """ValueError naming the shapes unless X (N, H, W, C) and W (kh, kw, C/groups, Cout) fit."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"conv: X must be NHWC and W (kh, kw, C_in/groups, C_out), got {x_shape} and {w_shape}")
    g, C, Cout = a.groups, x_shape[3], w_shape[3]
    if C != w_shape[2] * g or Cout % g:
        raise ValueError(
            f"conv: X {tuple(x_shape)} and W {tuple(w_shape)} with groups={g}: need C_in = W.shape[2] * groups "
            f"and C_out divisible by groups"
        )
    (pt, pb), (pl, pr) = a.padding
    Ho = _out_size(x_shape[1] + pt + pb, w_shape[0], a.stride[0], a.dilation[0])
    Wo = _out_size(x_shape[2] + pl + pr, w_shape[1], a.stride[1], a.dilation[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"conv: kernel {tuple(w_shape[:2])} with dilation {a.dilation} does not fit in X {tuple(x_shape)} "
            f"padded by {a.padding}"
        )
    return Ho, Wo


@functools.lru_cache(maxsize=1024)
def _live_block(H, Wd, kh, kw, Ho, Wo, a):
    """The live part of a conv of an (H, Wd) image with a (kh, kw) kernel and (Ho, Wo) outputs:
    ((ka, kb), (la, lb)) live taps, ((oa, ob), (qa, qb)) live outputs and the padding
    ((top, bottom), (left, right)) under which the live taps make exactly the live outputs;
    None when every tap reads padding only."""
    (sh, sw), (dh, dw) = a.stride, a.dilation
    (pt, _), (pl, _) = a.padding
    live_h, live_w = _live(H, kh, sh, dh, pt, Ho), _live(Wd, kw, sw, dw, pl, Wo)
    if live_h is None or live_w is None:
        return None
    (ka, kb, oa, ob), (la, lb, qa, qb) = live_h, live_w
    top, left = pt - ka * dh - oa * sh, pl - la * dw - qa * sw
    bottom = dh * (kb - ka) + 1 + sh * (ob - oa) - H - top
    right = dw * (lb - la) + 1 + sw * (qb - qa) - Wd - left
    return ((ka, kb), (la, lb)), ((oa, ob), (qa, qb)), ((top, bottom), (left, right))


def _with_padding(a, padding, stride=None, dilation=None):
    """``a`` with other padding (and optionally stride and dilation)."""
    return _ConvArgs(a.stride if stride is None else stride, padding, a.dilation if dilation is None else dilation,
                     a.groups)


def _conv_forward(X, W, a):
    """The convolution of arrays: NHWC X (N, H, W, C) with W (kh, kw, C/groups, Cout) -> (N, Ho, Wo, Cout),
    computed on its live block only."""
    Ho, Wo = _check_conv(tuple(X.shape), tuple(W.shape), a)
    N, H, Wd, _ = X.shape
    kh, kw, _, Cout = W.shape
    block = _live_block(H, Wd, kh, kw, Ho, Wo, a)
    if block is None:  # every tap reads padding only
        return B.full((N, Ho, Wo, Cout), 0.0, X)
    ((ka, kb), (la, lb)), ((oa, ob), (qa, qb)), pads = block
    if (ka, kb, la, lb) != (0, kh - 1, 0, kw - 1):
        W = W[ka : kb + 1, la : lb + 1]
    out = _conv_live(X, W, _with_padding(a, pads))
    if (oa, ob, qa, qb) != (0, Ho - 1, 0, Wo - 1):
        out = B.pad(out, ((0, 0), (oa, Ho - 1 - ob), (qa, Wo - 1 - qb), (0, 0)))
    return out


def _conv_live(X, W, a):
    """im2col + matmul: implicit (the backend's conv2d) or explicit (the strided im2col view)."""
    if _use_implicit(X):
        return X.conv2d(W, a.stride, a.padding, a.dilation, a.groups)
    kh, kw, Cg, Cout = W.shape
    g = a.groups
    X = _pad_or_crop(X, a.padding)
    view = _windows(X, (kh, kw), a.stride, a.dilation, group_split=g)
    N, Ho, Wo = view.shape[:3]
    M, K = N * Ho * Wo, kh * kw * Cg
    if g == 1:
        out = B.compact(view).reshape((M, K)) @ B.compact(W).reshape((K, Cout))
        return out.reshape((N, Ho, Wo, Cout))
    cols = B.compact(B.permute(view, (5, 0, 1, 2, 3, 4, 6))).reshape((g, M, K))
    w = B.compact(B.permute(B.compact(W).reshape((kh, kw, Cg, g, Cout // g)), (3, 0, 1, 2, 4)))
    out = cols @ w.reshape((g, K, Cout // g))  # (g, M, Cout/g)
    out = B.compact(B.permute(out.reshape((g, N, Ho, Wo, Cout // g)), (1, 2, 3, 0, 4)))
    return out.reshape((N, Ho, Wo, Cout))


def _conv_input_grad(G, W, x_shape, a):
    """dX (x_shape) of the conv of an X of ``x_shape`` with W, given the output gradient G:
    a convolution of G with the flipped filter (see Conv), on the live block."""
    N, H, Wd, C = x_shape
    kh, kw, Cg, Cout = W.shape
    block = _live_block(H, Wd, kh, kw, G.shape[1], G.shape[2], a)
    if block is None:
        return B.full(tuple(x_shape), 0.0, G)
    ((ka, kb), (la, lb)), ((oa, ob), (qa, qb)), ((pt, _), (pl, _)) = block
    if (ka, kb, la, lb) != (0, kh - 1, 0, kw - 1):
        W = W[ka : kb + 1, la : lb + 1]
        kh, kw = W.shape[:2]
    if (oa, ob, qa, qb) != (0, G.shape[1] - 1, 0, G.shape[2] - 1):
        G = G[:, oa : ob + 1, qa : qb + 1]
    g = a.groups
    (sh, sw), (dh, dw) = a.stride, a.dilation
    Ho, Wo = G.shape[1:3]
    axes = (_dx_axis(H, Ho, kh, sh, dh, pt), _dx_axis(Wd, Wo, kw, sw, dw, pl))
    if None in axes:
        # Stride and kernel dilation both > 1 on an axis: dilate G by (stride - 1).
        if sh > 1:
            G = Dilate((1,), sh - 1).compute(G)
        if sw > 1:
            G = Dilate((2,), sw - 1).compute(G)
        axes = (_dx_axis(H, Ho * sh, kh, 1, dh, pt), _dx_axis(Wd, Wo * sw, kw, 1, dw, pl))
        sh = sw = 1
    (Lh, lh, rh, pad_h), (Lw, lw, rw, pad_w) = axes
    # Polyphase filter: phase (r, q) of dX is a stride-1 conv of the UNdilated G with the
    # flipped sub-kernel W[r'::s, q'::s]; all s*s phases are the output channels of one conv.
    Wp = B.pad(W, ((lh, rh), (lw, rw), (0, 0), (0, 0))) if lh or rh or lw or rw else B.compact(W)
    # Permute first (a view), then flip: the flip's one copy lands in the final layout.
    Wp = B.permute(Wp.reshape((Lh, sh, Lw, sw, Cg, g, Cout // g)), (0, 2, 6, 5, 1, 3, 4))
    Wp = B.flip(Wp, (0, 1)).reshape((Lh, Lw, Cout // g, g * sh * sw * Cg))
    dil = (dh if sh == 1 else 1, dw if sw == 1 else 1)
    Y = _conv_forward(G, Wp, _with_padding(a, (pad_h, pad_w), stride=(1, 1), dilation=dil))
    if sh == sw == 1:
        return Y
    Ah, Aw = Y.shape[1:3]
    Y = B.compact(B.permute(Y.reshape((N, Ah, Aw, g, sh, sw, Cg)), (0, 1, 4, 2, 5, 3, 6)))
    Y = Y.reshape((N, Ah * sh, Aw * sw, C))
    if Ah * sh != H or Aw * sw != Wd:
        Y = Y[:, :H, :Wd]
    return Y


def _conv_weight_grad(X, G, w_shape, a):
    """dW (w_shape) of the conv of X with a W of ``w_shape``, given the output gradient G:
    a convolution of X (channels and batch swapped) with G as the filter (see Conv)."""
    N, H, Wd, C = X.shape
    kh, kw, Cg, Cout = w_shape
    block = _live_block(H, Wd, kh, kw, G.shape[1], G.shape[2], a)
    if block is None:
        return B.full(tuple(w_shape), 0.0, X)
    ((ka, kb), (la, lb)), ((oa, ob), (qa, qb)), ((pt, _), (pl, _)) = block
    if (oa, ob, qa, qb) != (0, G.shape[1] - 1, 0, G.shape[2] - 1):
        G = G[:, oa : ob + 1, qa : qb + 1]
    g = a.groups
    (sh, sw), (dh, dw) = a.stride, a.dilation
    Ho, Wo = G.shape[1:3]
    keh, kew = dh * (kb - ka) + 1, dw * (lb - la) + 1
    if g == 1:  # a view: the kernel reads it through its strides
        Xt = B.permute(X, (3, 1, 2, 0))
    else:
        Xt = B.permute(X.reshape((N, H, Wd, g, Cg)), (4, 1, 2, 3, 0)).reshape((Cg, H, Wd, g * N))
    Gt = B.permute(G, (1, 2, 0, 3))
    pads = ((pt, keh + sh * (Ho - 1) - H - pt), (pl, kew + sw * (Wo - 1) - Wd - pl))
    dWt = _conv_forward(Xt, Gt, _with_padding(a, pads, stride=(dh, dw), dilation=(sh, sw)))
    dW = B.permute(dWt, (1, 2, 0, 3))
    if (ka, kb, la, lb) != (0, kh - 1, 0, kw - 1):
        dW = B.pad(dW, ((ka, kh - 1 - kb), (la, kw - 1 - lb), (0, 0), (0, 0)))
    return dW


class _ConvOp(TensorOp):
    """The options of Conv and its adjoints (``stride``, ``padding``, ``dilation``, ``groups``)."""

    @classmethod
    def _make(cls, args, shape=None):
        op = cls.__new__(cls)
        op.args, op.shape = args, shape
        return op

    @property
    def stride(self):
        return self.args.stride

    @property
    def padding(self):
        return self.args.padding

    @property
    def dilation(self):
        return self.args.dilation

    @property
    def groups(self):
        return self.args.groups


class Conv(_ConvOp):
    r"""Cross-correlation of NHWC ``X`` (N, H, W, C) with ``W`` (kh, kw, C/groups, Cout).

    Output (N, Ho, Wo, Cout), Ho = (H + pt + pb - dh (kh - 1) - 1) // sh + 1.
    ``padding`` is int, (ph, pw) or ((top, bottom), (left, right)); a negative
    width crops (the adjoints below use that).

    Forward, one spatial axis (channels and groups aside), Xp = padded X:
        out[o] = sum_k Xp[o s + k d] W[k]
    im2col is the strided view V[n, o, p, i, j, c] = Xp[n, o sh + i dh, p sw + j dw, c];
    it is compacted to (N Ho Wo, kh kw Cg) and multiplied by W as (kh kw Cg, Cout_g),
    one matmul per group (a batched matmul over groups).

    dX. dXp[t] = sum_{o s + k d = t} G[o] W[k]. Let Gd = G dilated by s - 1
    (Gd[o s] = G[o]): dXp[t] = sum_j Gd[j] Wd[t - j], a FULL convolution of Gd
    with the d-dilated kernel, i.e. a cross-correlation with the flipped kernel
    after padding Gd by keff - 1 = d (k - 1) on each side. Cropping Xp's
    padding (dX[t] = dXp[t + pt]) just shifts that padding, so
        dX = conv(Gd, flip(W) with in/out channels swapped per group,
                  stride 1, dilation d, padding (keff - 1 - pt, H - Ho s + pt)).
    The second width makes the output exactly H rows: it drops Gd's trailing
    s - 1 zeros and, when (H + pt + pb - keff) % s != 0, gives the last rows
    (never read by the forward) their zero gradient. The kernel dilation is
    passed as the conv's ``dilation`` (a strided view) instead of materialising
    a zero-filled kernel: same result, no wasted multiply-adds.

    For stride s > 1 (kernel dilation 1) most of Gd is zeros: s*s - 1 of every
    s*s im2col rows. So dX is computed polyphase instead: input row t = a s + r
    only meets the taps k = r + p (mod s), so phase r of dX is a stride-1
    cross-correlation of the UNdilated G with the flipped sub-kernel W[r'::s].
    The s_h * s_w flipped sub-kernels are stacked as the output channels of ONE
    stride-1 conv (the filter is W padded to a multiple of s, reshaped to
    (L, s) per axis and flipped along L; see _dx_axis), whose output
    (N, ceil(H/s), ceil(W/s), s_h, s_w, C) interleaves back into (N, H, W, C).
    Stride and dilation both > 1 on an axis falls back to dilating G.

    dW. dW[k, c, co] = sum_{n, o} Xp[n, o s + k d, c] G[n, o, co]: a conv of X
    with its channels moved to the batch axis (and the batch to the channel
    axis) by the output gradient as filter, whose dilation is the forward
    stride and whose stride is the forward dilation:
        dW = conv(X as (Cg, H, W, g N), G as (Ho, Wo, N, Cout),
                  stride d, dilation s, padding (pt, d (k-1) + s (Ho-1) + 1 - H - pt), groups g)
    (the bottom width makes the output exactly kh rows), permuted back to (kh, kw, Cg, Cout).
    Both adjoints are convolutions computed by the same function as the forward
    (_conv_forward), so any speed-up of the forward speeds up training. Each is
    one graph node (ConvGradInput, ConvGradWeight) whose own gradient is again
    one of the three ops, so they differentiate again.

    Taps that only ever read padding, and output rows or columns whose whole
    window is padding (ResNet9's 3x3 filters on 2x2 and 1x1 maps), contribute
    exact zeros: every one of the three convolutions runs on the live block only.
    """

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        self.args = _conv_args(stride, padding, dilation, groups)
        self.shape = None

    def compute(self, X, W):
        return _conv_forward(X, W, self.args)

    def gradient(self, out_grad, node):
        X, W = node.inputs
        # An input that needs no gradient (the image batch of a first layer) gets None.
        dX = ConvGradInput._make(self.args, X.shape)(out_grad, W) if X.requires_grad else None
        dW = ConvGradWeight._make(self.args, W.shape)(X, out_grad) if W.requires_grad else None
        return dX, dW


class ConvGradInput(_ConvOp):
    """dX of Conv (``shape`` is X's) from the output gradient G and the filter W: a convolution
    of G with the flipped filter. Linear in both: for the adjoint V of dX,
    dG = conv(V, W) and dW = ConvGradWeight(V, G)."""

    def compute(self, G, W):
        return _conv_input_grad(G, W, self.shape, self.args)

    def gradient(self, out_grad, node):
        G, W = node.inputs
        dG = Conv._make(self.args)(out_grad, W) if G.requires_grad else None
        dW = ConvGradWeight._make(self.args, W.shape)(out_grad, G) if W.requires_grad else None
        return dG, dW


class ConvGradWeight(_ConvOp):
    """dW of Conv (``shape`` is W's) from the image X and the output gradient G: a convolution
    of X with G as the filter. Linear in both: for the adjoint U of dW,
    dX = ConvGradInput(G, U) and dG = conv(X, U)."""

    def compute(self, X, G):
        return _conv_weight_grad(X, G, self.shape, self.args)

    def gradient(self, out_grad, node):
        X, G = node.inputs
        dX = ConvGradInput._make(self.args, X.shape)(G, out_grad) if X.requires_grad else None
        dG = Conv._make(self.args)(X, out_grad) if G.requires_grad else None
        return dX, dG


def conv(a, b, stride=1, padding=1, dilation=1, groups=1):
    """NHWC convolution (see Conv). Note: the helper's default padding is 1, the class's is 0."""
    return Conv(stride, padding, dilation, groups)(a, b)


# ---- pooling -----------------------------------------------------------------
class Unfold(TensorOp):
    """(N, H, W, C) -> (N, Ho, Wo, kh, kw, C): every sliding window, compacted (no padding here)."""

    def __init__(self, kernel, stride, dilation=1):
        self.kernel = _pair(kernel, "unfold kernel")
        self.stride = _pair(stride, "unfold stride")
        self.dilation = _pair(dilation, "unfold dilation")

    def compute(self, x):
        if x.ndim != 4:
            raise ValueError(f"unfold: input must be NHWC, got shape {tuple(x.shape)}")
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        if dh * (kh - 1) + 1 > x.shape[1] or dw * (kw - 1) + 1 > x.shape[2]:
            raise ValueError(f"unfold: window {self.kernel} (dilation {self.dilation}) is larger than {tuple(x.shape)}")
        return B.compact(_windows(B.compact(x), self.kernel, self.stride, self.dilation))

    def gradient(self, out_grad, node):
        return Fold(node.inputs[0].shape, self.kernel, self.stride, self.dilation)(out_grad)


def unfold(x, kernel, stride, dilation=1):
    return Unfold(kernel, stride, dilation)(x)


class Fold(TensorOp):
    """The adjoint of Unfold: add every window back at its place in a (N, H, W, C) array of zeros."""

    def __init__(self, shape, kernel, stride, dilation=1):
        self.shape = tuple(shape)
        self.kernel = _pair(kernel, "fold kernel")
        self.stride = _pair(stride, "fold stride")
        self.dilation = _pair(dilation, "fold dilation")

    def compute(self, cols):
        N, Ho, Wo, kh, kw, C = cols.shape
        (sh, sw), (dh, dw) = self.stride, self.dilation
        out = B.full(self.shape, 0.0, cols)
        for i in range(kh):
            for j in range(kw):
                sl = (
                    slice(None),
                    slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh),
                    slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw),
                    slice(None),
                )
                piece = cols[:, :, :, i : i + 1, j : j + 1, :].reshape((N, Ho, Wo, C))
                out[sl] = out[sl] + piece
        return out

    def gradient(self, out_grad, node):
        return Unfold(self.kernel, self.stride, self.dilation)(out_grad)


def _pool_args(x, kernel_size, stride, padding, what):
    if len(x.shape) != 4:
        raise ValueError(f"{what}: input must be NHWC, got shape {x.shape}")
    kernel = _pair(kernel_size, f"{what} kernel_size")
    stride = kernel if stride is None else _pair(stride, f"{what} stride")
    ph, pw = _pair(padding, f"{what} padding")
    if ph > kernel[0] // 2 or pw > kernel[1] // 2 or min(ph, pw) < 0:
        raise ValueError(f"{what}: padding {(ph, pw)} must be >= 0 and at most half the kernel {kernel}")
    return kernel, stride, ((0, 0), (ph, ph), (pw, pw), (0, 0))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over each kh x kw window of NHWC ``x`` (padding counts as -inf; stride defaults to the kernel).

    Gradient goes to the window's maximum; if several elements tie for it the
    gradient is SPLIT evenly among them (PyTorch gives it all to one).
    """
    kernel, stride, pads = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    if any(p for pair in pads for p in pair):
        x = pad(x, pads, value=-numpy.inf)
    return amax(unfold(x, kernel, stride), axes=(3, 4))


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each kh x kw window of NHWC ``x``; zero padding is counted (PyTorch's count_include_pad=True)."""
    kernel, stride, pads = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    if any(p for pair in pads for p in pair):
        x = pad(x, pads)
    return summation(unfold(x, kernel, stride), axes=(3, 4)) / (kernel[0] * kernel[1])
