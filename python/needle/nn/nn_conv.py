"""Convolution and pooling layers. Inputs and outputs are NCHW (course and PyTorch
layout); the layers transpose to NHWC at their boundary for ``ops.conv`` and the
pooling ops."""
import numpy as np

import needle.amp as _amp
import needle.init as init
from needle import ops
from needle.autograd import Tensor

from . import functional as _F
from .nn_basic import Module, Parameter

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _first(value, name, owner):
    """Course layers accept tuples for square sizes and use the first element."""
    if isinstance(value, (tuple, list)):
        if len(value) == 0 or any(v != value[0] for v in value):
            raise ValueError(f"{owner}: only square {name} is supported, got {tuple(value)}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    return int(value)


def _nchw_to_nhwc(x):
    return ops.permute(x, (0, 2, 3, 1))


def _nhwc_to_nchw(x):
    return ops.permute(x, (0, 3, 1, 2))


def _wrap_matrix(n, pad, device, dtype):
    """(n, n + 2*pad) 0/1 matrix whose column j picks input row (j - pad) mod n."""
    cols = (np.arange(n + 2 * pad) - pad) % n
    m = np.zeros((n, n + 2 * pad), dtype=np.float32)
    m[cols, np.arange(n + 2 * pad)] = 1.0
    return Tensor(m, device=device, dtype=dtype, requires_grad=False)


def circular_pad_nhwc(x: Tensor, pad: int) -> Tensor:
    """Wrap-around padding of H and W of an NHWC tensor by ``pad`` on each side.

    Built as a matmul with a 0/1 selection matrix, so its gradient (the transposed
    selection, which sums the wrapped copies back) comes from MatMul for free.
    """
    if pad == 0:
        return x
    n, h, w, c = x.shape
    if pad > h or pad > w:
        raise ValueError(f"circular padding {pad} is larger than the input's H, W = {h}, {w}")
    # H: move H last, (N*W*C, H) @ (H, H+2p)
    t = x.transpose((1, 3))                                    # (N, C, W, H)
    t = t.reshape((n * c * w, h)) @ _wrap_matrix(h, pad, x.device, x.dtype)
    t = t.reshape((n, c, w, h + 2 * pad))
    # W: move W last, (N*C*H', W) @ (W, W+2p)
    t = t.transpose((2, 3))                                    # (N, C, H', W)
    hp = h + 2 * pad
    t = t.reshape((n * c * hp, w)) @ _wrap_matrix(w, pad, x.device, x.dtype)
    t = t.reshape((n, c, hp, w + 2 * pad))                     # (N, C, H', W')
    return t.transpose((1, 2)).transpose((2, 3))               # (N, H', W', C)


class Conv(Module):
    """2-D convolution (cross-correlation) over NCHW input.

    ``padding=None`` means "same": half the effective kernel ``dilation*(K-1)+1``, i.e.
    ``K//2`` (course) and ``dilation*(K-1)//2`` for odd K. ``padding_mode`` is
    ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (PyTorch's modes: the
    input is padded by ``functional.pad`` first, then convolved without padding).
    The weight has shape (K, K, Cin/groups, Cout)
    and is drawn first (kaiming uniform), then the bias, as in the course.
    For course compatibility a bool in the 5th position is taken as ``bias``
    (the course signature is ``Conv(in, out, k, stride=1, bias=True, ...)``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=None,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype="float32"):
        super().__init__()
        if isinstance(padding, bool):
            bias, padding = padding, None
        name = "Conv"
        for arg, val in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {val!r}")
        kernel_size = _first(kernel_size, "kernel_size", name)
        stride = _first(stride, "stride", name)
        dilation = _first(dilation, "dilation", name)
        if kernel_size <= 0 or stride <= 0 or dilation <= 0:
            raise ValueError(f"{name}: kernel_size, stride, dilation must be positive, got "
                             f"{kernel_size}, {stride}, {dilation}")
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels {in_channels} and out_channels {out_channels} "
                             f"must both be divisible by groups {groups}")
        if padding is None:
            # half the effective kernel: K//2 as in the course, dilation*(K-1)//2 for odd K
            padding = (dilation * (kernel_size - 1) + 1) // 2
        padding = _first(padding, "padding", name)
        if padding < 0:
            raise ValueError(f"{name}: padding must be >= 0, got {padding}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of "
                             f"{', '.join(map(repr, _PADDING_MODES))}, got {padding_mode!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = int(groups)
        self.padding_mode = padding_mode

        cin_g = self.in_channels // self.groups
        fan_in = cin_g * kernel_size * kernel_size
        fan_out = self.out_channels * kernel_size * kernel_size
        self.weight = Parameter(init.kaiming_uniform(
            fan_in, fan_out, shape=(kernel_size, kernel_size, cin_g, self.out_channels),
            device=device, dtype=dtype, requires_grad=True))
        if bias:
            bound = 1.0 / np.sqrt(fan_in)
            self.bias = Parameter(init.rand(self.out_channels, low=-bound, high=bound,
                                            device=device, dtype=dtype, requires_grad=True))
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv: expected NCHW input with C={self.in_channels}, "
                             f"got {tuple(x.shape)}")
        x = _nchw_to_nhwc(x)
        padding = self.padding
        if self.padding_mode != "zeros" and padding > 0:
            # H and W of the NHWC view, in PyTorch's padding modes (slices + one cat per axis)
            x = _F._pad_axes(x, {1: (padding, padding), 2: (padding, padding)}, self.padding_mode,
                             fn="Conv")
            padding = 0
        kwargs = {}
        if self.dilation != 1:
            kwargs["dilation"] = self.dilation
        if self.groups != 1:
            kwargs["groups"] = self.groups
        out = ops.conv(x, self.weight, stride=self.stride, padding=padding, **kwargs)
        if self.bias is not None:
            out = out + _amp.bias_for(self.bias).broadcast_to(out.shape)
        return _nhwc_to_nchw(out)

    def extra_repr(self):
        # PyTorch's Conv2d format; padding only when not the default "same" padding.
        k, d = self.kernel_size, getattr(self, "dilation", 1)
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={self.stride}"
        if self.padding != (d * (k - 1) + 1) // 2:
            s += f", padding={self.padding}"
        if d != 1:
            s += f", dilation={d}"
        if getattr(self, "groups", 1) != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if getattr(self, "padding_mode", "zeros") != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class _Pool2d(Module):
    _op_name = ""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _first(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else _first(stride, "stride", name)
        self.padding = _first(padding, "padding", name)
        if self.kernel_size <= 0 or self.stride <= 0 or self.padding < 0:
            raise ValueError(f"{name}: need kernel_size > 0, stride > 0, padding >= 0, got "
                             f"{self.kernel_size}, {self.stride}, {self.padding}")
        if 2 * self.padding > self.kernel_size:
            raise ValueError(f"{name}: padding {self.padding} must be at most half of "
                             f"kernel_size {self.kernel_size}")

    def forward(self, x: Tensor) -> Tensor:
        if len(x.shape) != 4:
            raise ValueError(f"{type(self).__name__}: expected NCHW input, got {tuple(x.shape)}")
        h, w = x.shape[2] + 2 * self.padding, x.shape[3] + 2 * self.padding
        if h < self.kernel_size or w < self.kernel_size:
            raise ValueError(f"{type(self).__name__}: kernel_size {self.kernel_size} is larger "
                             f"than the padded input {h}x{w} (input {tuple(x.shape)})")
        op = getattr(ops, self._op_name)
        out = op(_nchw_to_nhwc(x), kernel_size=self.kernel_size, stride=self.stride,
                 padding=self.padding)
        return _nhwc_to_nchw(out)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over K x K windows of an NCHW input (padding counts as -inf, like PyTorch)."""

    _op_name = "max_pool2d"


class AvgPool2d(_Pool2d):
    """Mean over K x K windows of an NCHW input (zero padding is counted, like PyTorch's
    default ``count_include_pad=True``)."""

    _op_name = "avg_pool2d"
