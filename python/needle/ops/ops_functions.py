"""Functions a PyTorch user expects: a differentiable select (``where``), concatenation
(``cat``), the error function, and tensor factories (``arange``, ``full``, ``zeros``,
``ones``, ``rand``, ``randn`` and their ``*_like`` forms).

Factories follow PyTorch's dtype rules (``arange(5)`` is int64, ``arange(0.5)`` and
``zeros(3)`` float32, ``full(s, 7)`` int64) and accept the course's calls too:
``zeros(2, 3)`` and ``zeros((2, 3))``, keywords ``device=``, ``dtype=``,
``requires_grad=``. Random factories draw ONCE from the global numpy RNG
(``np.random.rand(*shape)`` / ``randn``), as ``needle.init`` does (API.md section 12).

No binary op here relies on implicit broadcasting: operands are broadcast with
``broadcast_to`` first.
"""
import math
import numbers as _numbers

import numpy

from .. import init as _init
from ..autograd import NDArray, Tensor, TensorOp
from ..backend_selection import default_device as _default_device
from . import array_backend as B
from .ops_indexing import GetItem
from .ops_mathematic import broadcast_to, cast, exp, negate


# ---- dtype / device helpers ----------------------------------------------------
def _is_floating(dtype):
    return dtype in ("float32", "float64", "float16", "bfloat16")


def _scalar_dtype(value):
    """PyTorch's dtype for a Python number: bool, int64 or the default float32."""
    if isinstance(value, (bool, numpy.bool_)):
        return "bool"
    if isinstance(value, _numbers.Integral):
        return "int64"
    if isinstance(value, _numbers.Real):
        return "float32"
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _result_dtype(*operands):
    """The promoted dtype of Tensors and Python numbers (``where``'s result)."""
    return B.result_type(*[x.realize_cached_data() if isinstance(x, Tensor) else x for x in operands])


def _device_of(*values):
    for v in values:
        if isinstance(v, Tensor):
            return v.device
    return _default_device()


def _shape_from(shape, fn):
    """``f(2, 3)``, ``f((2, 3))``, ``f([2, 3])``, ``f()`` -> (2, 3) / (); ints >= 0."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, _numbers.Integral):
            raise TypeError(f"{fn}: shape entries must be ints, got {tuple(shape)!r}")
        if s < 0:
            raise ValueError(f"{fn}: shape entries must be >= 0, got {tuple(shape)}")
        out.append(int(s))
    return tuple(out)


def _wrap(array, requires_grad, dtype):
    """A leaf Tensor holding ``array``; integer and bool tensors never require a gradient."""
    return Tensor.make_const(array, requires_grad=bool(requires_grad) and _is_floating(dtype))


def _as_tensor(value, device):
    """A Tensor (unchanged), or a constant Tensor from an NDArray / numpy array / list on ``device``."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, NDArray):  # a backend array (numpy's own in np mode)
        return Tensor.make_const(B.to_device(value, device))
    return Tensor(numpy.asarray(value), device=device, requires_grad=False)


# ---- where ---------------------------------------------------------------------
class Where(TensorOp):
    """out = x where cond else y, elementwise; cond (bool), x and y of one shape.

    The result has the promoted dtype of x and y. Gradient: out_grad goes to x where
    cond holds and to y elsewhere (``where(cond, g, 0)`` and ``where(cond, 0, g)``,
    themselves Where nodes, so the adjoint is differentiable); cond gets none.
    The select is exact (no ``x * c + y * (1 - c)``, which turns ``inf * 0`` into NaN):
    see ``array_backend.where``. Example: ``where(t > 0, t, 0.0)`` is relu(t).
    """

    def compute(self, cond, x, y):
        if not (tuple(cond.shape) == tuple(x.shape) == tuple(y.shape)):
            raise ValueError(
                f"where: cond {tuple(cond.shape)}, x {tuple(x.shape)} and y {tuple(y.shape)} must have one shape "
                f"(the helper where() broadcasts them)"
            )
        return B.where(cond, x, y)

    def gradient(self, out_grad, node):
        cond, x, y = node.inputs
        zero = Tensor.make_const(B.full(out_grad.shape, 0, out_grad.realize_cached_data()))
        gx = Where()(cond, out_grad, zero) if x.requires_grad else None
        gy = Where()(cond, zero, out_grad) if y.requires_grad else None
        return None, gx, gy


def _bool_tensor(cond, device):
    """cond as a constant bool Tensor (a mask never takes a gradient)."""
    data = _as_tensor(cond, device).realize_cached_data()
    return Tensor.make_const(data if str(data.dtype) == "bool" else data != 0)


def where(cond, x, y):
    """x where ``cond`` is true, else y (PyTorch's ``torch.where(cond, x, y)``).

    cond: bool Tensor, NDArray or numpy array (nonzero counts as true for other dtypes).
    x, y: Tensors or Python _numbers. cond, x and y are broadcast (explicitly) to one
    shape; the result dtype is PyTorch's promotion of x and y
    (``where(c, int64_t, 0.5)`` is float32). Differentiable in x and y.
    """
    device = _device_of(x, y, cond)
    cond = _bool_tensor(cond, device)
    dtype = _result_dtype(x, y)
    shapes = [tuple(cond.shape)] + [tuple(v.shape) for v in (x, y) if isinstance(v, Tensor)]
    try:
        shape = tuple(numpy.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError(
            f"where: shapes cond {tuple(cond.shape)}, x {_shape_or_number(x)} and y {_shape_or_number(y)} "
            f"cannot be broadcast together"
        ) from None

    def operand(v):
        if not isinstance(v, Tensor):
            return Tensor.make_const(device.full(shape, v, dtype))
        if v.dtype != dtype:
            v = cast(v, dtype)
        return v if tuple(v.shape) == shape else broadcast_to(v, shape)

    x, y = operand(x), operand(y)
    if tuple(cond.shape) != shape:
        cond = broadcast_to(cond, shape)
    return Where()(cond, x, y)


def _shape_or_number(v):
    return tuple(v.shape) if isinstance(v, Tensor) else repr(v)


# ---- cat -----------------------------------------------------------------------
def _norm_dim(dim, ndim, fn):
    if isinstance(dim, bool) or not isinstance(dim, _numbers.Integral):
        raise TypeError(f"{fn}: dim must be an int, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"{fn}: dim {dim} is out of range for a tensor of {ndim} dims")
    return int(dim) % ndim


class Cat(TensorOp):
    """Concatenate tensors along an existing axis ``dim``; all other dims must match.

    The result has the promoted dtype of the inputs. Gradient: input k gets the slice
    ``out_grad[..., off_k : off_k + n_k, ...]`` (a GetItem, so it is differentiable).
    Example: ``cat([a, b], 0)`` of a (2, 3) and b (4, 3) is (6, 3).
    """

    def __init__(self, dim=0):
        self.dim = dim

    def _layout(self, shapes):
        if not shapes:
            raise ValueError("cat: expected a non-empty sequence of tensors")
        ndim = len(shapes[0])
        if ndim == 0:
            raise ValueError("cat: zero-dimensional tensor (tensor 0) cannot be concatenated")
        dim = _norm_dim(self.dim, ndim, "cat")
        for i, s in enumerate(shapes):
            if len(s) != ndim or any(a != b for k, (a, b) in enumerate(zip(s, shapes[0])) if k != dim):
                raise ValueError(
                    f"cat: tensor {i} has shape {tuple(s)} but tensor 0 has {tuple(shapes[0])}: all dims except "
                    f"dim {dim} must match"
                )
        return dim

    def compute(self, *arrays):
        return B.concatenate(arrays, self._layout([tuple(a.shape) for a in arrays]))

    def gradient(self, out_grad, node):
        dim = self._layout([tuple(x.shape) for x in node.inputs])
        grads, off = [], 0
        full = [slice(0, n, 1) for n in out_grad.shape]
        for x in node.inputs:
            n = x.shape[dim]
            if x.requires_grad:
                sl = list(full)
                sl[dim] = slice(off, off + n, 1)
                grads.append(GetItem(tuple(sl))(out_grad))
            else:
                grads.append(None)
            off += n
        return tuple(grads)


def cat(tensors, dim=0):
    """Concatenate a sequence of Tensors along ``dim`` (``torch.cat``); differentiable."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat: expected a list or tuple of Tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"cat: element {i} must be a Tensor, got {type(t).__name__}")
    return Cat(dim)(*tensors)


def concatenate(tensors, dim=0, axis=None):
    """Alias of ``cat`` (``axis=`` accepted as numpy spells it)."""
    return cat(tensors, dim if axis is None else axis)


# ---- erf -----------------------------------------------------------------------
# W. J. Cody's rational approximations (netlib specfun CALERF), ~2 ulp in float64.
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
          1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
          8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
          2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
          3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
          6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
          2.33520497626869185e-3)
_SQRT_1_PI = 5.6418958354775628695e-1
_ERF_SMALL = 0.46875


def _clamp(a, lo, hi):
    if lo is not None:
        a = B.maximum(a, lo)
    if hi is not None:
        a = -B.maximum(-a, -hi)
    return a


def _erf_array(a):
    """erf of a backend array, computed in float64 with elementwise ops only (no host copy).

    Three regions, each evaluated on the whole array with its input clamped into the
    region (so every branch is finite) and merged with 0/1 masks:
    |x| <= 0.46875: x P(x^2)/Q(x^2); 0.46875 < |x| <= 4: erfc = e^{-x^2} R(|x|);
    |x| > 4: erfc = e^{-x^2}/|x| (1/sqrt(pi) - S(1/x^2)/x^2); erf = sign(x) (1 - erfc).
    """
    dtype = a.dtype
    x = a.astype("float64")
    y = B.maximum(x, -x)
    # |x| small: x P(x^2) / Q(x^2)
    xs = _clamp(x, -_ERF_SMALL, _ERF_SMALL)
    z = xs * xs
    num, den = z * _ERF_A[4], z
    for i in range(3):
        num, den = (num + _ERF_A[i]) * z, (den + _ERF_B[i]) * z
    small = xs * (num + _ERF_A[3]) / (den + _ERF_B[3])
    # middle: erfc(y) = exp(-y^2) R(y)
    ym = _clamp(y, _ERF_SMALL, 4.0)
    num, den = ym * _ERF_C[8], ym
    for i in range(7):
        num, den = (num + _ERF_C[i]) * ym, (den + _ERF_D[i]) * ym
    mid = (num + _ERF_C[7]) / (den + _ERF_D[7]) * B.exp(-(ym * ym))
    # large: erfc(y) = exp(-y^2) / y (1/sqrt(pi) - S(1/y^2) / y^2)
    yl = B.maximum(y, 4.0)
    z = 1.0 / (yl * yl)
    num, den = z * _ERF_P[5], z
    for i in range(4):
        num, den = (num + _ERF_P[i]) * z, (den + _ERF_Q[i]) * z
    large = (z * (num + _ERF_P[4]) / (den + _ERF_Q[4]) * -1.0 + _SQRT_1_PI) / yl * B.exp(-(yl * yl))
    m_small = (y <= _ERF_SMALL).astype("float64")
    m_large = (y > 4.0).astype("float64")
    erfc = mid * (1.0 - m_small - m_large) + large * m_large
    sign = (x >= 0).astype("float64") * 2.0 - 1.0
    out = small * m_small + (erfc * -1.0 + 1.0) * sign * (1.0 - m_small)
    return out.astype(dtype if _is_floating(str(dtype)) else "float32")


class Erf(TensorOp):
    """The error function erf(x) = 2/sqrt(pi) int_0^x e^{-t^2} dt, elementwise.

    Gradient: out_grad * 2/sqrt(pi) * exp(-x^2). Integer input gives float32.
    """

    def compute(self, a):
        return _erf_array(a)

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        return out_grad * exp(negate(x * x)) * (2.0 / math.sqrt(math.pi))


def erf(a):
    return Erf()(a)


# ---- factories -----------------------------------------------------------------
def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    """A Tensor of ``shape`` filled with ``fill_value``; dtype from the value when None
    (bool -> bool, int -> int64, float -> float32), like ``torch.full``."""
    shape = _shape_from((shape,) if isinstance(shape, _numbers.Integral) else (shape,), "full")
    dtype = _scalar_dtype(fill_value) if dtype is None else B.canonical(dtype)
    device = _default_device() if device is None else device
    return _wrap(device.full(shape, fill_value, dtype), requires_grad, dtype)


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    """Zeros of ``shape`` (``zeros(2, 3)`` or ``zeros((2, 3))``), float32 by default.
    Accepts every call ``needle.init.zeros`` does."""
    dtype = "float32" if dtype is None else B.canonical(dtype)
    return full(_shape_from(shape, "zeros"), 0, dtype=dtype, device=device, requires_grad=requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    """Ones of ``shape``, float32 by default (see ``zeros``)."""
    dtype = "float32" if dtype is None else B.canonical(dtype)
    return full(_shape_from(shape, "ones"), 1, dtype=dtype, device=device, requires_grad=requires_grad)


def _random(kind, shape, dtype, device, requires_grad):
    dtype = "float32" if dtype is None else B.canonical(dtype)
    if not _is_floating(dtype):
        raise TypeError(f"{kind}: needs a floating dtype, got {dtype}")
    fn = _init.rand if kind == "rand" else _init.randn
    return fn(*shape, device=device, dtype=dtype, requires_grad=requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    """Uniform [0, 1) of ``shape``: ONE ``np.random.rand(*shape)`` draw (as ``init.rand``)."""
    return _random("rand", _shape_from(shape, "rand"), dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
    """Standard normal of ``shape``: ONE ``np.random.randn(*shape)`` draw (as ``init.randn``)."""
    return _random("randn", _shape_from(shape, "randn"), dtype, device, requires_grad)


def _like(t, fn):
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: expected a Tensor, got {type(t).__name__}")
    return tuple(t.shape)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    """Zeros with ``t``'s shape, and its dtype and device unless given."""
    return full(_like(t, "zeros_like"), 0, dtype=t.dtype if dtype is None else dtype,
                device=t.device if device is None else device, requires_grad=requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    """Ones with ``t``'s shape, and its dtype and device unless given."""
    return full(_like(t, "ones_like"), 1, dtype=t.dtype if dtype is None else dtype,
                device=t.device if device is None else device, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    """``fill_value`` with ``t``'s shape, and its dtype and device unless given."""
    return full(_like(t, "full_like"), fill_value, dtype=t.dtype if dtype is None else dtype,
                device=t.device if device is None else device, requires_grad=requires_grad)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    """``rand`` with ``t``'s shape (one draw), dtype and device unless given."""
    return _random("rand_like", _like(t, "rand_like"), t.dtype if dtype is None else dtype,
                   t.device if device is None else device, requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    """``randn`` with ``t``'s shape (one draw), dtype and device unless given."""
    return _random("randn_like", _like(t, "randn_like"), t.dtype if dtype is None else dtype,
                   t.device if device is None else device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """Values start, start + step, ... below ``end`` (``arange(n)`` is 0 .. n-1).

    dtype None: int64 when start, end and step are all ints, else float32 (torch's rule);
    values are computed as start + i * step in float64, then converted.
    """
    if end is None:
        start, end = 0, start
    for name, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, _numbers.Real) or not math.isfinite(v):
            raise ValueError(f"arange: {name} must be a finite number, got {v!r}")
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"arange: upper bound and larger bound inconsistent with step sign "
                         f"(start={start}, end={end}, step={step})")
    ints = all(isinstance(v, _numbers.Integral) for v in (start, end, step))
    if dtype is None:
        dtype = "int64" if ints else "float32"
    dtype = B.canonical(dtype)
    if ints:
        values = numpy.arange(int(start), int(end), int(step), dtype=numpy.int64)
    else:
        n = max(0, math.ceil((end - start) / step))
        values = float(start) + numpy.arange(n, dtype=numpy.float64) * float(step)
    device = _default_device() if device is None else device
    return Tensor(values, device=device, dtype=dtype, requires_grad=bool(requires_grad) and _is_floating(dtype))
