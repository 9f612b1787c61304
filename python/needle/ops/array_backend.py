"""The one place that knows the two kinds of array: numpy's (``NEEDLE_BACKEND=np``)
and NDArray (``nd``, the default).

Op ``compute`` methods, autograd, the optimizers and the layers receive whichever
kind the mode uses. What both spell alike (``+ - * / **``, ``@``, ``reshape``,
``sum``, ``max``, ``astype``, slicing, ``device.full``) is used directly; every
function whose spelling differs lives here, with both spellings side by side, so
the rest of needle reads as if there were one backend. Strides are in ELEMENTS for
both. The functions autograd calls for every op or every gradient edge are bound
once at import (``compute = _compute_numpy if NP else _compute_ndarray``), so they
carry no per-call test.

Numpy mode keeps the course's behaviour where the two modes differ: arrays keep
numpy's dtypes and promotions, any dtype may require a gradient, and there is one
device (``backend_numpy.cpu()``).
"""
import numpy as np

from .. import backend_numpy
from ..backend_ndarray import NDArray as _NDArray  # pure Python: importing it loads no compiled module
from ..backend_ndarray import dtypes as _dt
from ..backend_selection import BACKEND

NP = BACKEND == "np"


# ---- graph: running ops, devices, conversions ------------------------------------
_ARRAY_OR_TUPLE = (np.ndarray, tuple)  # an op's result: an array, or a TensorTuple's tuple


def _compute_numpy(op, arrays):
    out = op.compute(*arrays)
    if not isinstance(out, _ARRAY_OR_TUPLE):
        out = np.asarray(out)  # numpy turns 0-d results into scalars
    return out


def _compute_ndarray(op, arrays):
    if len(arrays) == 1:
        return op.compute(arrays[0])
    try:
        if len(arrays) == 2:
            if arrays[0]._device is not arrays[1]._device:
                check_one_device(type(op).__name__, arrays)  # equal devices pass; others raise
        else:
            device = arrays[0]._device
            for a in arrays:
                if a._device is not device:
                    check_one_device(type(op).__name__, arrays)
    except AttributeError:  # a TensorTuple's data (a tuple) among the arrays
        check_one_device(type(op).__name__, arrays)
    return op.compute(*arrays)


# op.compute(*arrays) as autograd runs every op: a ValueError naming the op when NDArray
# inputs sit on different devices, and numpy's 0-d scalar results made arrays again.
compute = _compute_numpy if NP else _compute_ndarray


def as_result(x):
    """``x`` as an array: numpy returns a scalar for a 0-d result (NDArrays stay arrays)."""
    if NP and not isinstance(x, np.ndarray):
        return np.asarray(x)
    return x


def device(a):
    """The device ``a`` lives on (numpy mode has one, ``cpu()``)."""
    return backend_numpy.cpu() if NP else a.device


def check_one_device(what, arrays):
    """ValueError naming ``what`` and every array's shape and device unless all
    ``arrays`` share one device (tuples, a TensorTuple's data, are skipped)."""
    arrays = [a for a in arrays if type(a) is not tuple]
    devices = [device(a) for a in arrays]
    if any(d is not devices[0] and d != devices[0] for d in devices[1:]):
        shapes = ", ".join(f"{tuple(a.shape)} on {d}" for a, d in zip(arrays, devices))
        raise ValueError(f"{what}: inputs are on different devices ({shapes})")


def array(data, device, dtype=None):
    """A new array of host ``data`` (numpy array, nested lists, numbers) on ``device``.
    ``dtype`` None: numpy keeps numpy's dtype; NDArray infers PyTorch's (float32, int64)."""
    if NP:
        return np.array(data, dtype=dtype)
    return _NDArray(data, device=device, dtype=dtype)


def to_device(a, device):
    """Array ``a`` on ``device``: itself when it already is there."""
    if NP or a.device == device:
        return a
    return a.to(device)


def to_numpy(a):
    """A new numpy array holding ``a``'s values."""
    return np.array(a) if NP else a.numpy()


def differentiable(a):
    """Whether a tensor holding ``a`` may require a gradient: floating dtypes only
    (numpy mode keeps the course's rule: any dtype)."""
    return NP or a.dtype in _dt.FLOATING


def _gradient_dtype_differs_numpy(grad, x):
    return False


def _gradient_dtype_differs_ndarray(grad, x):
    return grad._dtype is not x._dtype and grad._dtype != x._dtype


# Whether the adjoint array ``grad`` must be cast to the dtype of its input array ``x``
# (a promoting NDArray op); numpy mode keeps numpy's promoted gradients, as the course does.
gradient_dtype_differs = _gradient_dtype_differs_numpy if NP else _gradient_dtype_differs_ndarray


def _same_array(a):
    return a


# A leaf's gradient array in the layout optimizers read: NDArrays compact (the updates go
# through flat buffers); numpy updates take any layout.
compact_for_update = _same_array if NP else _NDArray.compact


# ---- dtypes ---------------------------------------------------------------------
def canonical(dtype):
    """A dtype name ("float32", ...) from a name, numpy dtype or ``needle.float32``
    (numpy's reading of the name in numpy mode: there ``"float"`` is float64)."""
    return np.dtype(dtype).name if NP else _dt.canonical(dtype)


def result_type(*operands):
    """The result dtype name of an elementwise op over arrays and Python numbers:
    PyTorch's promotion, or numpy's in numpy mode."""
    if not NP:
        return _dt.result_type(*operands)
    arrays = [x for x in operands if isinstance(x, np.ndarray)]
    scalars = [x for x in operands if not isinstance(x, np.ndarray)]
    if not arrays and len(scalars) == 1:
        return _dt.scalar_dtype(scalars[0])
    return np.result_type(*arrays, *scalars).name


def scalar_operand(scalar):
    """A 1-element numpy array given as a scalar, as the array ops take it: NDArray ops
    take a Python float; numpy takes the array as it is."""
    return scalar if NP else float(scalar.reshape(-1)[0])


def as_float(mask, like):
    """A comparison's bool result as an array of ``like``'s dtype."""
    return mask.astype(like.dtype)


def fused_dtype(*arrays):
    """True when the backend's fused kernels take these NDArrays: one dtype, float32 or
    float64 (np mode and half precision run the compositions)."""
    if NP:
        return False
    dtype = arrays[0].dtype
    return dtype in arrays[0].FUSED_DTYPES and all(a.dtype == dtype for a in arrays)


def has_backend_conv(a):
    """True when ``a``'s backend has the ``conv2d`` kernel (NDArrays; not numpy arrays)."""
    return not NP


def fused_update_operands(w, g):
    """(w, g) as the fused optimizer steps (``sgd_step``, ``adam_step``) take them, or None
    in numpy mode (no fused kernels: the optimizer's composition runs). Half-precision
    parameters are updated in float32, with float32 optimizer state (a float16 eps of
    1e-8 is 0, and v underflows)."""
    if NP:
        return None
    dtype = w.dtype if w.dtype in w.FUSED_DTYPES else "float32"
    return w.astype(dtype, copy=False), g.astype(dtype, copy=False)


# ---- layout and movement ----------------------------------------------------------
def permute(a, axes):
    return np.transpose(a, axes) if NP else a.permute(tuple(axes))


def broadcast_to(a, shape):
    return np.broadcast_to(a, shape) if NP else a.broadcast_to(tuple(shape))


def compact(a):
    if NP:  # ascontiguousarray would make a 0-d array 1-d
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)
    return a.compact()


def strides(a):
    return tuple(s // a.itemsize for s in a.strides) if NP else a.strides


def as_strided(a, shape, elem_strides):
    """A view of ``a``'s memory (starting at its first element) with element strides."""
    if NP:
        return np.lib.stride_tricks.as_strided(
            a, tuple(shape), tuple(int(s) * a.itemsize for s in elem_strides), writeable=False
        )
    return a.as_strided(tuple(shape), tuple(elem_strides))


def full(shape, value, like):
    """An array of ``shape`` filled with ``value``, with ``like``'s dtype and device."""
    if NP:
        return np.full(tuple(shape), value, dtype=like.dtype)
    return like._device.full(shape, value, like._dtype)


def pad(a, pads, value=0.0):
    """Constant padding; ``pads`` has a (left, right) pair (>= 0) per dim."""
    pads = tuple((int(l), int(r)) for l, r in pads)
    if NP:
        return np.pad(a, pads, constant_values=value)
    if value == 0:
        return a.pad(pads)
    out = full(tuple(n + l + r for n, (l, r) in zip(a.shape, pads)), value, a)
    out[tuple(slice(l, l + n) for n, (l, _) in zip(a.shape, pads))] = a
    return out


def flip(a, axes):
    return np.flip(a, axes).copy() if NP else a.flip(tuple(axes))


def stack(arrays, axis):
    if NP:
        return np.stack(arrays, axis)
    from ..backend_ndarray import stack as nd_stack

    return nd_stack(arrays, axis)


def split(a, axis):
    """Copies of the slices of ``a`` along ``axis`` (0 <= axis < a.ndim), that axis removed."""
    if not NP:
        return tuple(a.split_copies(axis))  # views with the axis dropped, copied once each
    shape = tuple(n for i, n in enumerate(a.shape) if i != axis)
    lead = (slice(None),) * axis
    return tuple(np.array(a[lead + (slice(i, i + 1),)]).reshape(shape) for i in range(a.shape[axis]))


def concatenate(arrays, axis):
    """Arrays joined along ``axis`` (shapes already checked), in their promoted dtype."""
    if NP:
        return np.concatenate(arrays, axis=axis)
    dtype = arrays[0].dtype
    for a in arrays[1:]:
        dtype = _dt.promote_types(dtype, a.dtype)
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = arrays[0].device.empty(tuple(shape), dtype)
    lead, off = (slice(None),) * axis, 0
    for a in arrays:
        n = a.shape[axis]
        if n and a.size:
            out[lead + (slice(off, off + n),)] = a  # setitem casts to the result dtype
        off += n
    return out


# ---- math -----------------------------------------------------------------------
def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b), op swapping the last two axes where its flag is set (NDArray takes the
    swap as strides, no view is built)."""
    if NP:
        return np.matmul(np.swapaxes(a, -1, -2) if trans_a else a, np.swapaxes(b, -1, -2) if trans_b else b)
    return a.matmul(b, trans_a, trans_b)


def reduce_sum(a, axes, keepdims=False):
    if not axes:
        return a
    out = a.sum(axis=tuple(axes), keepdims=keepdims)
    return np.asarray(out) if NP else out


def reduce_max(a, axes, keepdims=False):
    if not axes:
        return a
    out = a.max(axis=tuple(axes), keepdims=keepdims)
    return np.asarray(out) if NP else out


def maximum(a, b):
    return np.maximum(a, b) if NP else a.maximum(b)


def relu_grad(g, x):
    """``g`` where ``x`` > 0, else 0 (ReLU's adjoint; a NaN ``x`` passes ``g``, as in PyTorch)."""
    return np.where(x <= 0, np.zeros_like(g), g) if NP else g.relu_grad(x)


def log(a):
    return np.log(a) if NP else a.log()


def exp(a):
    return np.exp(a) if NP else a.exp()


def tanh(a):
    return np.tanh(a) if NP else a.tanh()


def argmax(a, axis=None, keepdims=False):
    """int64 indices of the first maximum (numpy's argmax)."""
    if NP:
        return np.asarray(np.argmax(a, axis=axis, keepdims=keepdims))
    return a.argmax(axis, keepdims)


def argmin(a, axis=None, keepdims=False):
    if NP:
        return np.asarray(np.argmin(a, axis=axis, keepdims=keepdims))
    return a.argmin(axis, keepdims)


def sum_of_squares(a):
    """sum(a ** 2) as a Python float (numpy mode accumulates in float64)."""
    if NP:
        return float(np.sum(a.astype(np.float64) ** 2))
    return float(np.asarray((a * a).sum().numpy()).reshape(-1)[0])


def where(cond, x, y):
    """x where ``cond`` (bool, or nonzero) holds, else y; all three of one shape. The
    result has x's and y's promoted dtype. In nd mode x and y are written into one
    (2n, 1) table and ``gather_rows`` picks row i (x) or n + i (y): an exact select
    for every dtype (``x * c + y * (1 - c)`` would turn ``inf * 0`` into NaN)."""
    if NP:
        return np.where(np.asarray(cond, dtype=bool), x, y)
    dtype = x.dtype if x.dtype == y.dtype else _dt.promote_types(x.dtype, y.dtype)
    shape, n = tuple(x.shape), x.size
    dev = x.device
    if n == 0:
        return dev.empty(shape, dtype)
    table = dev.empty((2 * n,), dtype)
    table[0:n] = x.compact().reshape((n,)) if x.dtype == dtype else x.astype(dtype).reshape((n,))
    table[n : 2 * n] = y.compact().reshape((n,)) if y.dtype == dtype else y.astype(dtype).reshape((n,))
    c = cond if cond.dtype == "bool" else (cond != 0)
    # row i + n (y) minus n where cond holds (x)
    rows = c.astype("int64").reshape((n,)) * (-n) + _NDArray(np.arange(n, 2 * n, dtype=np.int64), device=dev)
    return table.reshape((2 * n, 1)).gather_rows(rows).reshape(shape)


# ---- indexing ---------------------------------------------------------------------
def index_array(values, like):
    """Integer indices (an array of either kind, a list, or the course's integer-valued
    floats) as the backend's flat index array: int64 numpy, or an NDArray on ``like``'s
    device (its dtype kept: the kernels read integer and float-encoded indices)."""
    if NP:
        return np.asarray(values).astype(np.int64, copy=False).reshape(-1)
    if isinstance(values, _NDArray):
        values = values.to(like.device)
        return values.reshape((values.size,))
    return _NDArray(np.asarray(values).reshape(-1), device=like.device)


def gather_rows(a, idx):
    """(n, d) ``a``, (k,) index array -> (k, d) with row r = a[idx[r]]."""
    if NP:
        if idx.size and (idx.min() < 0 or idx.max() >= a.shape[0]):
            raise IndexError(f"gather_rows: indices must lie in [0, {a.shape[0]})")
        return a[idx]
    return a.gather_rows(idx)


def scatter_add_rows(a, idx, num_rows):
    """(k, d) ``a``, (k,) index array -> (num_rows, d) zeros with row r of a added at
    row idx[r] (repeated indices add up)."""
    if NP:
        if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
            raise IndexError(f"scatter_add_rows: indices must lie in [0, {num_rows})")
        out = np.zeros((num_rows, a.shape[1]), dtype=a.dtype)
        np.add.at(out, idx, a)
        return out
    return a.scatter_add_rows(idx, num_rows)


def view(a, plan):
    """``a[index]`` for a basic index, as a view. ``plan`` spells the index both ways:
    ``np_index`` (numpy's own), and ``keep`` (one slice per dim) with ``layout`` and
    ``out_shape``, from which an NDArray view drops the int dims and adds the new axes."""
    if NP:
        return a[plan.np_index]
    v = a[plan.keep]
    return v.as_strided(plan.out_shape, tuple(0 if i is None else v.strides[i] for i in plan.layout))


def write_view(a, plan, value):
    """``a[index] = value`` in place for a basic index (see ``view``); ``value`` has the
    view's shape or is a number."""
    if NP:
        a[plan.np_index] = value
    else:
        a[plan.keep] = value  # same element count as the view, copied in row-major order


def set_rows(a, rows, d, values):
    """In place: rows ``rows`` (int64 numpy, k of them) of ``a`` read as an (a.size / d, d)
    table set to ``values`` ((k, d) array, or a number); of repeated rows the last wins."""
    k = rows.size
    if NP:
        pos = (rows[:, None] * d + np.arange(d)).reshape(-1)
        a.flat[pos] = values.reshape(-1) if isinstance(values, np.ndarray) else values
        return
    # Table rows 0..nk-1 are a's rows, nk..nk+k-1 the new ones; one gather picks old or new per row.
    nk = a.size // d
    table = a.device.empty((nk + k, d), a.dtype)
    table[0:nk] = a.reshape((nk, d))
    table[nk:nk + k] = values
    pick = np.arange(nk, dtype=np.int64)
    pick[rows] = nk + np.arange(k, dtype=np.int64)  # repeated rows: the last one wins
    new = table.gather_rows(_NDArray(pick, device=a.device, dtype="int64"))
    a[(slice(None),) * a.ndim] = new.reshape(a.shape)


def one_hot(labels, k, like):
    """(n, k) one-hot rows of the (n,) index array ``labels``; ``like``'s dtype in numpy
    mode, the device's default float otherwise."""
    if NP:
        out = np.zeros((labels.size, k), dtype=like.dtype)
        out[np.arange(labels.size), labels] = 1
        return out
    return like.device.one_hot(k, labels.numpy().astype(np.int64))


# ---- fused softmax cross-entropy (ops_loss) ---------------------------------------
def softmax_xent(z, labels):
    """Mean softmax cross-entropy of logits z (n, k) against the (n,) index array
    ``labels``: (loss (), row log-sum-exps (n,)). Half precision computes in float32."""
    if NP:
        n, k = z.shape
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise IndexError(f"softmax_cross_entropy: labels must lie in [0, {k})")
        m = z.max(axis=1)
        lse = np.log(np.exp(z - m[:, None]).sum(axis=1)) + m
        return np.asarray(np.mean(lse - z[np.arange(n), labels]), dtype=z.dtype), lse
    if z.dtype not in z.FUSED_DTYPES:
        loss, lse = z.astype("float32").softmax_xent(labels)
        return loss.astype(z.dtype), lse
    return z.softmax_xent(labels)


def softmax_xent_grad(z, labels, lse, g):
    """(softmax(z) - onehot(labels)) * g / n for logits z (n, k), the forward's ``lse``
    and the upstream scalar g."""
    n = z.shape[0]
    if NP:
        p = np.exp(z - lse[:, None])
        p[np.arange(n), labels] -= 1
        return (p * (np.asarray(g).reshape(()) / n)).astype(z.dtype, copy=False)
    if z.dtype not in z.FUSED_DTYPES:
        grad = z.astype("float32").softmax_xent_grad(labels, lse, g.astype("float32"), 1.0 / n)
        return grad.astype(z.dtype)
    return z.softmax_xent_grad(labels, lse, g, 1.0 / n)


# ---- random draws (needle.init) ------------------------------------------------------
def draw(device, kind, shape, dtype):
    """One draw from the global numpy RNG (``kind``: "rand" or "randn") on ``device``.
    NDArray devices land it in a floating ``dtype`` directly (a float64 parameter keeps
    every bit); numpy mode returns the raw float64 draw."""
    if not NP and _dt.is_floating(_dt.canonical(dtype)):
        return getattr(device, kind)(*shape, dtype=dtype)
    return getattr(device, kind)(*shape)
