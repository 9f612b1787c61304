"""PyTorch's ``torch.nn.functional`` on needle Tensors (``import needle.nn.functional as F``).

Signatures, argument orders and layouts are PyTorch's: conv and pooling take NCHW
input and a (C_out, C_in/groups, kh, kw) weight (they permute to needle's NHWC ops
and back, views only), ``linear`` takes an (out_features, in_features) weight,
``pad`` takes the pad tuple last dim first. Everything is a composition of needle
ops, so every function is differentiable in its tensor arguments (except integer
targets and indices, and the ``weight`` of the losses, which PyTorch does not
differentiate either).

Differences from PyTorch, on purpose: max pooling splits the gradient evenly
between tied maxima (PyTorch picks one); ``pad`` in the reflect/replicate/circular
modes accepts any number of padded trailing dims; ``dropout`` draws its mask from
the global numpy RNG (one ``np.random.rand(*x.shape)``, as ``nn.Dropout``).
"""
import math
import numbers

import numpy as np

from needle import init, ops
from needle.autograd import NDArray, Tensor, no_grad
from needle.ops import array_backend as B
from needle.ops.ops_functions import cat, erf, where
from needle.ops.ops_indexing import GetItem

_REDUCTIONS = ("mean", "sum", "none")


# ---- helpers -------------------------------------------------------------------
def _check_tensor(x, fn, name="input"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a Tensor, got {type(x).__name__}")


def _dim(dim, ndim, fn):
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{fn}: dim must be an int, got {dim!r}")
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{fn}: dim {dim} is out of range for a tensor of {ndim} dims")
    return int(dim) % max(ndim, 1)


def _move_last(x, dim):
    """(x with ``dim`` moved last, the inverse permutation or None)."""
    n = len(x.shape)
    if dim == n - 1:
        return x, None
    perm = tuple(i for i in range(n) if i != dim) + (dim,)
    inv = [0] * n
    for i, ax in enumerate(perm):
        inv[ax] = i
    return ops.permute(x, perm), tuple(inv)


def _const_like(array, x):
    """A constant Tensor of numpy ``array`` with ``x``'s dtype and device."""
    return Tensor(np.asarray(array), device=x.device, dtype=x.dtype, requires_grad=False)


def _reduction(size_average, reduce, reduction, fn):
    """PyTorch's legacy ``size_average``/``reduce`` mapping, then a check of ``reduction``."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = "none" if not reduce else ("mean" if size_average else "sum")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _pair(v, fn, what):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2 or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in v):
            raise ValueError(f"{fn}: {what} must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{fn}: {what} must be an int or a pair of ints, got {v!r}")
    return int(v), int(v)


def _host(value):
    """A numpy copy of a Tensor / NDArray / array-like."""
    if isinstance(value, Tensor):
        return np.asarray(value.numpy())
    if isinstance(value, NDArray):  # a backend array (numpy's own in np mode)
        return B.to_numpy(value)
    return np.asarray(value)


# ---- activations ---------------------------------------------------------------
def relu(input, inplace=False):
    """max(x, 0)."""
    _check_tensor(input, "relu")
    return ops.relu(input)


def sigmoid(input):
    """1 / (1 + exp(-x))."""
    _check_tensor(input, "sigmoid")
    return ops.sigmoid(input)


def tanh(input):
    _check_tensor(input, "tanh")
    return ops.tanh(input)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input, approximate="none"):
    """x * Phi(x): ``approximate='none'`` is 0.5 x (1 + erf(x / sqrt 2)) (exact),
    ``'tanh'`` is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as PyTorch."""
    _check_tensor(input, "gelu")
    if approximate == "none":
        return input * (erf(input * (1.0 / math.sqrt(2.0))) + 1.0) * 0.5
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * _SQRT_2_OVER_PI
        return input * (ops.tanh(inner) + 1.0) * 0.5
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _implicit_dim(ndim):
    return 0 if ndim in (0, 1, 3) else 1  # PyTorch's legacy rule for dim=None


def log_softmax(input, dim=None, dtype=None):
    """x - logsumexp(x, dim), numerically stable (max-shifted), along any ``dim``."""
    _check_tensor(input, "log_softmax")
    if dtype is not None:
        input = ops.cast(input, dtype)
    shape = tuple(input.shape)
    if not shape:
        return ops.reshape(ops.logsoftmax(ops.reshape(input, (1,))), ())
    dim = _dim(_implicit_dim(len(shape)) if dim is None else dim, len(shape), "log_softmax")
    x, inv = _move_last(input, dim)
    out = ops.logsoftmax(x)
    return out if inv is None else ops.permute(out, inv)


def softmax(input, dim=None, dtype=None):
    """exp(log_softmax(x, dim)): numerically stable along any ``dim``."""
    _check_tensor(input, "softmax")
    return ops.exp(log_softmax(input, dim, dtype))


# ---- losses --------------------------------------------------------------------
def _class_layout(input, target, fn):
    """Input (C,), (N, C) or (N, C, d1, ...) -> (2-D (M, C) view of the scores, C,
    the target's expected shape)."""
    shape = tuple(input.shape)
    if len(shape) == 0:
        raise ValueError(f"{fn}: input must be (C,), (N, C) or (N, C, d1, ...), got shape ()")
    if len(shape) == 1:
        return ops.reshape(input, (1, shape[0])), shape[0], ()
    C = shape[1]
    expected = (shape[0],) + shape[2:]
    if len(shape) == 2:
        return input, C, expected
    x, _ = _move_last(input, 1)
    return ops.reshape(x, (-1, C)), C, expected


def _labels(target, fn, expected, input_shape):
    """Class numbers as int64 numpy (integer dtypes, or the course's integer-valued floats)."""
    labels = _host(target)
    if tuple(labels.shape) != tuple(expected):
        raise ValueError(
            f"{fn}: target shape {tuple(labels.shape)} does not match input shape {tuple(input_shape)} "
            f"(expected target shape {tuple(expected)})"
        )
    if labels.dtype == np.bool_ or labels.dtype.kind not in "iuf":
        raise TypeError(f"{fn}: target must hold integer class numbers, got dtype {labels.dtype}")
    if labels.dtype.kind == "f":
        ints = labels.astype(np.int64)
        if not np.array_equal(ints, labels):
            raise ValueError(f"{fn}: float target must hold integer class numbers (or pass class "
                             f"probabilities with the input's shape)")
        labels = ints
    return labels.astype(np.int64).reshape(-1)


def _check_labels(labels, C, ignore_index, fn):
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= C))
    if bad.any():
        raise IndexError(f"{fn}: target {int(labels[bad][0])} is out of bounds for {C} classes")
    return valid


def _class_weight(weight, C, fn):
    if weight is None:
        return None
    w = _host(weight).astype(np.float64)
    if w.shape != (C,):
        raise ValueError(f"{fn}: weight of shape {w.shape} does not match {C} classes (expected ({C},))")
    return w


def _nll(logp, labels, valid, w, reduction, label_smoothing, out_shape):
    """The weighted negative log-likelihood of (M, C) log-probabilities at integer labels,
    with PyTorch's label smoothing and reductions (mean divides by the total weight of
    the non-ignored targets, for the smoothing term too)."""
    M, C = logp.shape
    safe = np.where(valid, labels, 0)
    wv = (w[safe] if w is not None else np.ones(M)) * valid
    if M:
        rows = np.arange(M, dtype=np.int64) * C + safe
        picked = ops.reshape(ops.gather_rows(ops.reshape(logp, (M * C, 1)), rows), (M,))
        loss = -(picked * _const_like(wv, logp))
    else:
        loss = ops.reshape(ops.summation(logp, (1,)), (0,))
    if label_smoothing:
        scored = logp
        if w is not None:
            scored = logp * ops.broadcast_to(_const_like(w.reshape(1, C), logp), (M, C))
        smooth = -ops.summation(scored, (1,)) * _const_like(valid.astype(np.float64), logp)
        loss = loss * (1.0 - label_smoothing) + smooth * (label_smoothing / C)
    if reduction == "none":
        return ops.reshape(loss, out_shape)
    total = ops.summation(loss)
    if reduction == "sum":
        return total
    denom = float(wv.sum())
    return total * float("nan") if denom == 0 else total / denom


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (C,), (N, C) or (N, C, d1, ...)
    at int64 class targets () / (N,) / (N, d1, ...): -w[y] input[y], reduced as PyTorch
    ('mean' divides by the summed weights of non-ignored targets). A target equal to
    ``ignore_index`` contributes nothing; any other outside [0, C) is an IndexError."""
    _check_tensor(input, "nll_loss")
    reduction = _reduction(size_average, reduce, reduction, "nll_loss")
    logp, C, expected = _class_layout(input, target, "nll_loss")
    labels = _labels(target, "nll_loss", expected, input.shape)
    valid = _check_labels(labels, C, ignore_index, "nll_loss")
    return _nll(logp, labels, valid, _class_weight(weight, C, "nll_loss"), reduction, 0.0, expected)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits ``input`` (C,), (N, C) or (N, C, d1, ...) against class
    targets (int64, or the course's float-encoded labels) of shape () / (N,) / (N, d1, ...),
    or against class probabilities of the input's shape (floating target).

    = nll_loss(log_softmax(input, 1), target, ...) with PyTorch's ``label_smoothing``:
    (1 - eps) nll + eps / C * sum_c(-w_c log p_c). With no weight, no ignored target, no
    smoothing and a 'mean'/'sum' reduction it is ONE fused ``softmax_cross_entropy`` node.
    """
    fn = "cross_entropy"
    _check_tensor(input, fn)
    reduction = _reduction(size_average, reduce, reduction, fn)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing}")
    logits, C, expected = _class_layout(input, target, fn)
    if isinstance(target, Tensor) and tuple(target.shape) == tuple(input.shape) and \
            str(target.dtype) in ("float32", "float64", "float16", "bfloat16"):
        return _soft_cross_entropy(input, target, weight, reduction, label_smoothing, C, expected)
    labels = _labels(target, fn, expected, input.shape)
    valid = _check_labels(labels, C, ignore_index, fn)
    M = labels.size
    if weight is None and not label_smoothing and reduction != "none" and M and valid.all():
        # a label Tensor already on the device is read there (no upload of the host copy)
        fused_labels = target if isinstance(target, Tensor) and target.device == input.device else labels
        loss = ops.softmax_cross_entropy(logits, fused_labels)
        return loss * M if reduction == "sum" else loss
    logp = log_softmax(logits, 1)
    return _nll(logp, labels, valid, _class_weight(weight, C, fn), reduction, label_smoothing, expected)


def _soft_cross_entropy(input, target, weight, reduction, label_smoothing, C, expected):
    """Cross-entropy against class probabilities: -sum_c w_c t_c log p_c per sample;
    'mean' divides by the number of samples (PyTorch)."""
    fn = "cross_entropy"
    w = _class_weight(weight, C, fn)
    logp, _, _ = _class_layout(log_softmax(input, 1 if len(input.shape) > 1 else 0), target, fn)
    t, _, _ = _class_layout(target, target, fn)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + label_smoothing / C
    M = logp.shape[0]
    prod = logp * t
    if w is not None:
        prod = prod * ops.broadcast_to(_const_like(w.reshape(1, C), logp), (M, C))
    loss = -ops.summation(prod, (1,))
    if reduction == "none":
        return ops.reshape(loss, expected)
    total = ops.summation(loss)
    return total if reduction == "sum" else total / M


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """(input - target)^2, reduced ('mean' over all elements). Shapes are broadcast
    (explicitly) as PyTorch does; shapes that do not broadcast are a ValueError."""
    fn = "mse_loss"
    _check_tensor(input, fn)
    _check_tensor(target, fn, "target")
    reduction = _reduction(size_average, reduce, reduction, fn)
    a, b = tuple(input.shape), tuple(target.shape)
    if a != b:
        try:
            shape = tuple(np.broadcast_shapes(a, b))
        except ValueError:
            raise ValueError(f"{fn}: input shape {a} and target shape {b} cannot be broadcast together") from None
        input = input if a == shape else ops.broadcast_to(input, shape)
        target = target if b == shape else ops.broadcast_to(target, shape)
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    total = ops.summation(sq)
    if reduction == "sum":
        return total
    n = math.prod(input.shape)
    return total / n if n else total * float("nan")


# ---- linear / conv / pooling ---------------------------------------------------
def linear(input, weight, bias=None):
    """x @ weight^T + bias with PyTorch's weight layout (out_features, in_features); x is
    (..., in_features). The transpose is a strided view (MatMul(trans_b=True))."""
    fn = "linear"
    _check_tensor(input, fn)
    _check_tensor(weight, fn, "weight")
    xs, ws = tuple(input.shape), tuple(weight.shape)
    if len(ws) != 2 or not xs or xs[-1] != ws[1]:
        raise ValueError(f"{fn}: input {xs} and weight {ws} do not fit: need input (..., in) and weight (out, in)")
    out_f, in_f = ws
    lead = xs[:-1]
    x2 = input if len(xs) == 2 else ops.reshape(input, (math.prod(lead), in_f))
    out = ops.MatMul(False, True)(x2, weight)
    if bias is not None:
        _check_tensor(bias, fn, "bias")
        if tuple(bias.shape) != (out_f,):
            raise ValueError(f"{fn}: bias of shape {tuple(bias.shape)} does not match weight {ws} (expected ({out_f},))")
        out = out + ops.broadcast_to(ops.reshape(bias, (1, out_f)), tuple(out.shape))
    return out if len(xs) == 2 else ops.reshape(out, lead + (out_f,))


def _unbatched(input, fn, what="(N, C, H, W) or (C, H, W)"):
    shape = tuple(input.shape)
    if len(shape) == 3:
        return ops.reshape(input, (1,) + shape), True
    if len(shape) != 4:
        raise ValueError(f"{fn}: input must be {what}, got shape {shape}")
    return input, False


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation of NCHW ``input`` with ``weight`` (C_out, C_in/groups, kh, kw).

    padding: int, (ph, pw), 'valid' (0) or 'same' (stride 1 only; an odd total puts the
    extra row/column at the bottom/right, as PyTorch). Runs needle's NHWC ``ops.conv``
    on permuted views and permutes the result back to (N, C_out, Ho, Wo).
    """
    fn = "conv2d"
    _check_tensor(input, fn)
    _check_tensor(weight, fn, "weight")
    x, unbatched = _unbatched(input, fn)
    ws = tuple(weight.shape)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")
    if len(ws) != 4 or x.shape[1] != ws[1] * groups or ws[0] % groups:
        raise ValueError(
            f"{fn}: input {tuple(input.shape)} and weight {ws} with groups={groups} do not fit: need weight "
            f"(C_out, C_in/groups, kh, kw) with C_in = {x.shape[1]} and C_out divisible by groups"
        )
    stride, dilation = _pair(stride, fn, "stride"), _pair(dilation, fn, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"{fn}: stride {stride} and dilation {dilation} must be >= 1")
    kh, kw = ws[2], ws[3]
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{fn}: padding='same' needs stride 1, got stride {stride}")
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
        else:
            raise ValueError(f"{fn}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = _pair(padding, fn, "padding")
        if min(ph, pw) < 0:
            raise ValueError(f"{fn}: padding {(ph, pw)} must be >= 0")
        pads = ((ph, ph), (pw, pw))
    H, W = x.shape[2] + sum(pads[0]), x.shape[3] + sum(pads[1])
    if H < dilation[0] * (kh - 1) + 1 or W < dilation[1] * (kw - 1) + 1:
        raise ValueError(f"{fn}: kernel ({kh}, {kw}) with dilation {dilation} is larger than the padded input "
                         f"({H}, {W}) (input {tuple(input.shape)})")
    xh = ops.permute(x, (0, 2, 3, 1))
    wh = ops.permute(weight, (2, 3, 1, 0))
    out = ops.conv(xh, wh, stride=stride, padding=pads, dilation=dilation, groups=groups)
    if bias is not None:
        _check_tensor(bias, fn, "bias")
        if tuple(bias.shape) != (ws[0],):
            raise ValueError(f"{fn}: bias of shape {tuple(bias.shape)} does not match weight {ws}")
        out = out + ops.broadcast_to(bias, tuple(out.shape))
    out = ops.permute(out, (0, 3, 1, 2))
    return ops.reshape(out, tuple(out.shape[1:])) if unbatched else out


def _pool_geometry(shape, kernel, stride, padding, dilation, ceil_mode, fn):
    """Output size per spatial axis and the extra bottom/right padding ceil_mode needs."""
    outs, extra = [], []
    for n, k, s, p, d in zip(shape, kernel, stride, padding, dilation):
        span = d * (k - 1) + 1
        if n + 2 * p < span:
            raise ValueError(f"{fn}: kernel {tuple(kernel)} (dilation {tuple(dilation)}) is larger than the "
                             f"padded input of spatial shape {tuple(shape)} with padding {tuple(padding)}")
        num = n + 2 * p - span
        o = (-(-num // s) if ceil_mode else num // s) + 1
        if ceil_mode and (o - 1) * s >= n + p:  # the last window must start inside the input or left padding
            o -= 1
        outs.append(o)
        extra.append(max(0, (o - 1) * s + span - (n + 2 * p)))
    return outs, extra


def _pool_args(kernel_size, stride, padding, dilation, fn):
    kernel = _pair(kernel_size, fn, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else \
        _pair(stride, fn, "stride")
    padding, dilation = _pair(padding, fn, "padding"), _pair(dilation, fn, "dilation")
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"{fn}: kernel_size {kernel}, stride {stride}, dilation {dilation} must be >= 1")
    if min(padding) < 0 or padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{fn}: padding {padding} must be >= 0 and at most half the kernel {kernel}")
    return kernel, stride, padding, dilation


def _pool(input, kernel_size, stride, padding, dilation, ceil_mode, fn, fill):
    """NCHW input -> (NHWC windows (N, Ho, Wo, kh, kw, C) of the padded input, geometry, unbatched)."""
    _check_tensor(input, fn)
    x, unbatched = _unbatched(input, fn)
    kernel, stride, padding, dilation = _pool_args(kernel_size, stride, padding, dilation, fn)
    (Ho, Wo), (eh, ew) = _pool_geometry(tuple(x.shape[2:]), kernel, stride, padding, dilation, ceil_mode, fn)
    xh = ops.permute(x, (0, 2, 3, 1))
    pads = ((0, 0), (padding[0], padding[0] + eh), (padding[1], padding[1] + ew), (0, 0))
    if any(p for pair in pads for p in pair):
        xh = ops.pad(xh, pads, value=fill)
    cols = ops.unfold(xh, kernel, stride, dilation)
    if tuple(cols.shape[1:3]) != (Ho, Wo):  # ceil_mode padding can admit one window too many
        cols = GetItem(tuple(slice(0, n, 1) for n in (cols.shape[0], Ho, Wo) + tuple(cols.shape[3:])))(cols)
    return cols, (kernel, stride, padding, (eh, ew)), unbatched


def _to_nchw(out, unbatched):
    out = ops.permute(out, (0, 3, 1, 2))
    return ops.reshape(out, tuple(out.shape[1:])) if unbatched else out


def _pool_indices(cols, kernel, stride, padding, dilation, width, unbatched, device):
    """Input-plane positions of the first maximum of each window of cols (N, Ho, Wo, kh, kw, C)."""
    N, Ho, Wo, kh, kw, C = cols.shape
    data = B.compact(cols.realize_cached_data()).reshape((N, Ho, Wo, kh * kw, C))
    k = B.to_numpy(B.argmax(data, 3))
    ho = np.arange(Ho).reshape(1, Ho, 1, 1)
    wo = np.arange(Wo).reshape(1, 1, Wo, 1)
    h = ho * stride[0] - padding[0] + (k // kw) * dilation[0]
    w = wo * stride[1] - padding[1] + (k % kw) * dilation[1]
    index = (h * width + w).transpose(0, 3, 1, 2)
    return Tensor(index[0] if unbatched else index, device=device, dtype="int64", requires_grad=False)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over kh x kw windows of NCHW ``input`` (padding counts as -inf; stride defaults
    to the kernel). Tied maxima share the gradient evenly (PyTorch gives it to one).
    With ``return_indices``, also the int64 position (h * W + w in the input plane) of each
    window's first maximum, as PyTorch returns it."""
    cols, (kernel, stride, padding, _), unbatched = _pool(input, kernel_size, stride, padding, dilation, ceil_mode,
                                                          "max_pool2d", -math.inf)
    out = _to_nchw(ops.amax(cols, axes=(3, 4)), unbatched)
    if not return_indices:
        return out
    return out, _pool_indices(cols, kernel, stride, padding, _pair(dilation, "max_pool2d", "dilation"),
                              input.shape[-1], unbatched, out.device)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over kh x kw windows of NCHW ``input``, with PyTorch's divisors: the window
    clipped to the padded input (``count_include_pad=True``) or to the input itself, or
    ``divisor_override``."""
    fn = "avg_pool2d"
    cols, (kernel, stride, padding, _), unbatched = _pool(input, kernel_size, stride, padding, 1, ceil_mode, fn, 0.0)
    total = ops.summation(cols, axes=(3, 4))  # (N, Ho, Wo, C)
    if divisor_override is not None:
        if divisor_override == 0:
            raise ValueError(f"{fn}: divisor_override must be nonzero")
        return _to_nchw(total / divisor_override, unbatched)
    N, Ho, Wo, C = total.shape
    H, W = (input.shape[-2], input.shape[-1])
    div = np.empty((Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            h0, w0 = i * stride[0] - padding[0], j * stride[1] - padding[1]
            h1, w1 = min(h0 + kernel[0], H + padding[0]), min(w0 + kernel[1], W + padding[1])
            if not count_include_pad:
                h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
            div[i, j] = (h1 - h0) * (w1 - w0)
    if np.all(div == div.flat[0]):
        return _to_nchw(total / float(div.flat[0]), unbatched)
    scale = ops.broadcast_to(_const_like((1.0 / div).reshape(1, Ho, Wo, 1), total), (N, Ho, Wo, C))
    return _to_nchw(total * scale, unbatched)


# ---- dropout / normalisation / embedding ---------------------------------------
def dropout(input, p=0.5, training=True, inplace=False):
    """Training: zero each element with probability p and scale the rest by 1/(1-p); the
    mask is ONE ``np.random.rand(*x.shape)`` draw (kept where <= 1-p), as nn.Dropout."""
    _check_tensor(input, "dropout")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return input
    mask = init.randb(*input.shape, p=1 - p, device=input.device, dtype=input.dtype)
    if p == 1:
        return input * mask
    return input * Tensor.make_const(mask.realize_cached_data() * (1.0 / (1 - p)))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing ``normalized_shape`` dims (biased variance), then
    ``* weight + bias`` (both of ``normalized_shape``, optional). One fused node."""
    fn = "layer_norm"
    _check_tensor(input, fn)
    ns = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
    shape = tuple(input.shape)
    if not ns or len(ns) > len(shape) or shape[len(shape) - len(ns):] != ns:
        raise ValueError(f"{fn}: input of shape {shape} does not end with normalized_shape {ns}")
    D = math.prod(ns)
    lead = shape[: len(shape) - len(ns)]
    x = input if len(ns) == 1 else ops.reshape(input, lead + (D,))

    def param(p, name, fill):
        if p is None:
            return _const_like(np.full((D,), fill), input)
        _check_tensor(p, fn, name)
        if tuple(p.shape) != ns:
            raise ValueError(f"{fn}: {name} of shape {tuple(p.shape)} does not match normalized_shape {ns}")
        return p if len(ns) == 1 else ops.reshape(p, (D,))

    out = ops.layer_norm(x, param(weight, "weight", 1.0), param(bias, "bias", 0.0), eps)
    return out if len(ns) == 1 else ops.reshape(out, shape)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """Rows of ``weight`` (num_embeddings, dim) at integer ``input`` indices: shape
    input.shape + (dim,). Gradient scatter-adds into the rows; the row ``padding_idx``
    gets no gradient. An index outside [0, num_embeddings) is an IndexError.
    ``max_norm`` renormalises (in place, without a gradient) the looked-up rows whose
    ``norm_type``-norm exceeds it, as PyTorch does; ``scale_grad_by_freq`` divides each
    row's gradient by the row's count in ``input``. ``sparse`` is accepted: the gradient
    has the same values, stored dense (needle has no sparse tensors)."""
    fn = "embedding"
    _check_tensor(weight, fn, "weight")
    if len(weight.shape) != 2:
        raise ValueError(f"{fn}: weight must be (num_embeddings, dim), got shape {tuple(weight.shape)}")
    n, dim = weight.shape
    idx = _host(input)
    if idx.dtype == np.bool_ or idx.dtype.kind not in "iuf":
        raise TypeError(f"{fn}: indices must be integers, got dtype {idx.dtype}")
    flat = idx.reshape(-1)
    ints = flat.astype(np.int64)
    if idx.dtype.kind == "f" and not np.array_equal(ints, flat):
        raise TypeError(f"{fn}: indices must be integers, got non-integral values")
    bad = (ints < 0) | (ints >= n)
    if bad.any():
        raise IndexError(f"{fn}: index {int(ints[bad][0])} is out of range for weight of shape {tuple(weight.shape)}")
    if max_norm is not None:
        _renorm_rows(weight, np.unique(ints), float(max_norm), float(norm_type))
    out = ops.gather_rows(weight, ints)
    if scale_grad_by_freq and ints.size:
        counts = np.bincount(ints, minlength=n)[ints].astype(np.float64)
        scale = Tensor(np.broadcast_to((1.0 / counts)[:, None], (ints.size, dim)), device=weight.device,
                       dtype=weight.dtype, requires_grad=False)
        # forward value unchanged, gradient scaled: out * s + (out - out * s) with the second part constant
        out = out * scale + (out - out * scale).detach()
    if padding_idx is not None:
        if not -n <= padding_idx < n:
            raise ValueError(f"{fn}: padding_idx {padding_idx} must be within the {n} embeddings")
        is_pad = ints == padding_idx % n
        if is_pad.any():
            keep = ops.gather_rows(weight.detach(), ints)
            out = where(np.broadcast_to(is_pad[:, None], (ints.size, dim)), keep, out)
    return ops.reshape(out, tuple(idx.shape) + (dim,))


def _renorm_rows(weight, rows, max_norm, norm_type):
    """Rows of weight whose norm exceeds max_norm scaled to max_norm * (1 - 1e-7 slack), in place."""
    table = weight.numpy()[rows].astype(np.float64)
    norms = np.linalg.norm(table, ord=norm_type, axis=1)
    over = norms > max_norm
    if over.any():
        table[over] *= (max_norm / (norms[over] + 1e-7))[:, None]
        with no_grad():
            weight[rows[over]] = table[over]


# ---- pad -----------------------------------------------------------------------
_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _slice_axis(x, axis, start, stop):
    sl = [slice(0, n, 1) for n in x.shape]
    sl[axis] = slice(start, stop, 1)
    return GetItem(tuple(sl))(x)


def _pad_axis(x, axis, left, right, mode):
    """One axis of reflect / replicate / circular padding, as slices (+ flips) and one cat."""
    n = x.shape[axis]
    if mode == "reflect":
        parts = [ops.flip(_slice_axis(x, axis, 1, left + 1), (axis,))] if left else []
        parts.append(x)
        if right:
            parts.append(ops.flip(_slice_axis(x, axis, n - 1 - right, n - 1), (axis,)))
    elif mode == "replicate":
        def edge(i, width):
            e = _slice_axis(x, axis, i, i + 1)
            shape = list(x.shape)
            shape[axis] = width
            return ops.broadcast_to(e, tuple(shape))

        parts = ([edge(0, left)] if left else []) + [x] + ([edge(n - 1, right)] if right else [])
    else:  # circular
        parts = ([_slice_axis(x, axis, n - left, n)] if left else []) + [x] + \
            ([_slice_axis(x, axis, 0, right)] if right else [])
    return parts[0] if len(parts) == 1 else cat(parts, axis)


def _pad_axes(x, pads, mode="constant", value=0.0, fn="pad"):
    """Pad ``x`` by ``pads`` = {axis: (before, after)}. Constant mode crops negative widths;
    reflect needs widths < the dim's size, circular <= it, replicate a non-empty dim."""
    shape = tuple(x.shape)
    if mode == "constant":
        if any(l < 0 or r < 0 for l, r in pads.values()):
            sl = [slice(0, n, 1) for n in shape]
            for ax, (l, r) in pads.items():
                lo, hi = max(0, -l), shape[ax] - max(0, -r)
                if hi < lo:
                    raise ValueError(f"{fn}: padding {pads[ax]} crops dim {ax} of input {shape} below size 0")
                sl[ax] = slice(lo, hi, 1)
            x = GetItem(tuple(sl))(x)
        widths = tuple((max(0, pads.get(ax, (0, 0))[0]), max(0, pads.get(ax, (0, 0))[1])) for ax in range(len(shape)))
        if any(l or r for l, r in widths):
            x = ops.pad(x, widths, value=value)
        return x
    for ax, (l, r) in pads.items():
        n = shape[ax]
        if l < 0 or r < 0:
            raise ValueError(f"{fn}: {mode} padding widths must be >= 0, got {(l, r)} for dim {ax} of input {shape}")
        if mode == "reflect" and (l >= n or r >= n) and (l or r):
            raise ValueError(f"{fn}: reflect padding {(l, r)} must be smaller than dim {ax} (size {n}) of input {shape}")
        if mode == "circular" and (l > n or r > n):
            raise ValueError(f"{fn}: circular padding {(l, r)} must be at most dim {ax} (size {n}) of input {shape}")
        if mode == "replicate" and n == 0 and (l or r):
            raise ValueError(f"{fn}: cannot replicate-pad the empty dim {ax} of input {shape}")
    for ax in sorted(pads, reverse=True):
        l, r = pads[ax]
        if l or r:
            x = _pad_axis(x, ax, l, r, mode)
    return x


def pad(input, pad, mode="constant", value=None):
    """Pad ``input`` with PyTorch's pad tuple: (left, right) of the LAST dim first, then
    of the one before, ... Modes: 'constant' (``value``, default 0; negative widths crop),
    'reflect' (mirror without the edge), 'replicate' (repeat the edge), 'circular' (wrap).
    Differentiable in every mode: slices, flips, broadcasts and one ``cat`` per padded
    dim, all on the device (no host copy)."""
    fn = "pad"
    _check_tensor(input, fn)
    pad = tuple(pad)
    if len(pad) % 2 or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in pad):
        raise ValueError(f"{fn}: pad must be a sequence of ints of even length, got {pad}")
    ndim = len(input.shape)
    if len(pad) // 2 > ndim:
        raise ValueError(f"{fn}: pad {pad} covers {len(pad) // 2} dims, input of shape {tuple(input.shape)} has {ndim}")
    if mode not in _PAD_MODES:
        raise ValueError(f"{fn}: mode must be one of {', '.join(map(repr, _PAD_MODES))}, got {mode!r}")
    if mode != "constant" and value:
        raise ValueError(f"{fn}: padding mode {mode!r} does not take a value")
    pads = {ndim - 1 - i: (int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(pad) // 2)}
    return _pad_axes(input, pads, mode, 0.0 if value is None else value, fn)
