"""Pure-numpy backend: the living definition of every backend function.

The compiled modules (``ndarray_backend_cpu``, ``ndarray_backend_cuda``) export
exactly these names with these signatures; ``tests/test_backend_table.py``
checks that. Buffers are flat and typed (``Array(size, dtype)``, the dtypes of
``dtypes.DTYPES``); shapes, strides and offsets are in elements, strides may
be negative (flip) or zero (broadcast).

Dtype rules shared by every backend:
- Operands of one call have one dtype unless a function says otherwise (the
  NDArray layer promotes and casts first); comparisons write ``bool``.
- float16 and bfloat16 compute in float32 and round once on the store.
- ``log/exp/tanh`` and ``div`` take floating dtypes only; ``power`` on integers
  rejects negative exponents; ``bool`` has no ``div``, ``power`` or ``matmul``.
- Sums of floating dtypes keep their dtype (halves accumulate in float32); sums of
  integers and bools are int64.
- A wrong dtype is a TypeError naming the function and the dtypes.
"""
import ctypes
import warnings

import numpy as np

from .dtypes import DTYPES, FLOATING, HALF, INTEGRAL
from .dtypes import to_numpy_dtype as _np_dtype

__device_name__ = "numpy"
__tile_size__ = 8


class Array:
    """A flat buffer of ``size`` elements of ``dtype`` (a name from dtypes.DTYPES)."""

    def __init__(self, size, dtype="float32"):
        size = int(size)
        if size < 0:
            raise ValueError(f"Array size must be >= 0, got {size}")
        if dtype not in DTYPES:
            raise TypeError(f"Array: unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}")
        self.dtype = dtype
        self.array = np.empty(size, dtype=_np_dtype(dtype))

    @property
    def size(self):
        return self.array.size

    @property
    def itemsize(self):
        return self.array.itemsize

    def ptr(self):
        return self.array.ctypes.data


def wrap_external(address, size, dtype):
    """An Array over memory at ``address`` that the caller owns and keeps alive (DLPack import)."""
    if dtype not in DTYPES:
        raise TypeError(f"wrap_external: unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    out = Array(0, dtype)
    nbytes = int(size) * out.itemsize
    if nbytes:
        raw = (ctypes.c_char * nbytes).from_address(int(address))
        out.array = np.frombuffer(raw, dtype=_np_dtype(dtype))
    return out


# ---- dtype checks (src/common/checks.h holds the same rules for the compiled modules) ----
def _same_dtype(fn, *bufs):
    dts = [b.dtype for b in bufs]
    if len(set(dts)) > 1:
        raise TypeError(f"{fn}: buffers of dtypes {', '.join(dts)} must share one dtype")
    return dts[0]


def _need(fn, dtype, allowed, what):
    if dtype not in allowed:
        raise TypeError(f"{fn}: {what}, got {dtype}")


def _need_dtype(fn, buf, dtype):
    if buf.dtype != dtype:
        raise TypeError(f"{fn}: out must be {dtype}, got {buf.dtype}")


_NUMERIC = frozenset(DTYPES) - {"bool"}
_FUSED = frozenset({"float32", "float64"})


def _acc(dtype):
    """The numpy scalar type arithmetic runs in: float32 for the halves, the dtype's otherwise."""
    return np.float32 if dtype in HALF else _np_dtype(dtype).type


def _x(a):
    """a's elements in the compute dtype."""
    return a.array.astype(np.float32) if a.dtype in HALF else a.array


def _store(out, values):
    """Write values (any dtype) into out with out's dtype; float -> int casts follow numpy."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out.array[:] = values


def _cast_scalar(val, dtype):
    """A Python scalar as a value of the compute dtype of ``dtype`` (ints truncate like numpy)."""
    with np.errstate(all="ignore"):
        return np.array([val]).astype(_np_dtype(dtype)).astype(_acc(dtype))[0]


def _view(a, shape, strides, offset):
    """Strided view of the flat buffer ``a`` (strides in elements)."""
    item = a.array.itemsize
    base = a.array[offset:] if offset else a.array
    if len(shape) and 0 in shape:
        return np.empty(tuple(shape), dtype=a.array.dtype)
    return np.lib.stride_tricks.as_strided(base, tuple(shape), tuple(int(s) * item for s in strides))


def to_numpy(a, shape, strides, offset):
    """A new numpy array of a's dtype (bfloat16: ml_dtypes.bfloat16) holding the view."""
    return np.array(_view(a, shape, strides, offset), copy=True)


def from_numpy(a, out):
    """a is a numpy array of out's dtype with out.size elements (any layout)."""
    if a.dtype != out.array.dtype:
        raise TypeError(f"from_numpy: source dtype {a.dtype} differs from the buffer's {out.dtype}")
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.size != out.size:
        raise ValueError(f"from_numpy: source has {flat.size} elements, buffer has {out.size}")
    out.array[:] = flat


def fill(out, val):
    """Every element of out = val converted to out's dtype."""
    out.array[:] = _cast_scalar(val, out.dtype)


def astype(a, out):
    """a and out compact, same size: out = a converted to out's dtype (numpy's casts:
    float -> int truncates, NaN and out-of-range values give what numpy gives on x86-64;
    bfloat16 converts like the float32 it widens to)."""
    if a.size != out.size:
        raise ValueError(f"astype: input has {a.size} elements, out has {out.size}")
    src = a.array.astype(np.float32) if a.dtype == "bfloat16" and out.dtype not in FLOATING else a.array
    with np.errstate(all="ignore"):
        _store(out, src.astype(out.array.dtype) if out.dtype != "bfloat16" else src)


def compact(a, out, shape, strides, offset):
    """a is strided (shape, strides, offset); out is compact with prod(shape) elements."""
    _same_dtype("compact", a, out)
    out.array[:] = _view(a, shape, strides, offset).reshape(-1)


def ewise_setitem(a, out, shape, strides, offset):
    """a is compact with prod(shape) elements; writes into the strided view of out."""
    _same_dtype("ewise_setitem", a, out)
    n = int(np.prod(shape)) if len(shape) else 1
    if n == 0:
        return
    view = _view(out, shape, strides, offset)
    view[...] = a.array[:n].reshape(shape)


def scalar_setitem(size, val, out, shape, strides, offset):
    if size == 0:
        return
    _view(out, shape, strides, offset)[...] = _cast_scalar(val, out.dtype)


# ---- elementwise --------------------------------------------------------------
def _binary(fn, a, b, out, f, allowed=_NUMERIC | {"bool"}, what="needs a numeric dtype"):
    dt = _same_dtype(fn, a, b, out)
    _need(fn, dt, allowed, what)
    with np.errstate(all="ignore"):
        _store(out, f(_x(a), _x(b)))


def _with_scalar(fn, a, val, out, f, allowed=_NUMERIC | {"bool"}, what="needs a numeric dtype"):
    dt = _same_dtype(fn, a, out)
    _need(fn, dt, allowed, what)
    with np.errstate(all="ignore"):
        _store(out, f(_x(a), _cast_scalar(val, dt)))


def _compare(fn, a, b, out, f):
    _same_dtype(fn, a, b)
    _need_dtype(fn, out, "bool")
    out.array[:] = f(_x(a), _x(b))


def _compare_scalar(fn, a, val, out, f):
    _need_dtype(fn, out, "bool")
    out.array[:] = f(_x(a), _cast_scalar(val, a.dtype))


def _int_power(x, y):
    if np.any(y < 0):
        raise ValueError("power: integers to negative integer powers are not allowed")
    return np.power(x, y)


def _power(x, y):
    if np.ndim(y) == 0:  # numpy turns a scalar exponent of 0.5 into sqrt (sqrt(-inf) is NaN, pow's is inf)
        y = np.full(np.shape(x), y, dtype=x.dtype)
    return _int_power(x, y) if x.dtype.kind in "iu" else np.power(x, y)


_FLOAT_ONLY = dict(allowed=FLOATING, what="needs a floating dtype")
_NO_BOOL = dict(allowed=_NUMERIC, what="needs a numeric (not bool) dtype")


def ewise_add(a, b, out):
    _binary("ewise_add", a, b, out, np.add)


def scalar_add(a, val, out):
    _with_scalar("scalar_add", a, val, out, np.add)


def ewise_mul(a, b, out):
    _binary("ewise_mul", a, b, out, np.multiply)


def scalar_mul(a, val, out):
    _with_scalar("scalar_mul", a, val, out, np.multiply)


def ewise_div(a, b, out):
    _binary("ewise_div", a, b, out, np.divide, **_FLOAT_ONLY)


def scalar_div(a, val, out):
    _with_scalar("scalar_div", a, val, out, np.divide, **_FLOAT_ONLY)


def ewise_power(a, b, out):
    _binary("ewise_power", a, b, out, _power, **_NO_BOOL)


def scalar_power(a, val, out):
    _with_scalar("scalar_power", a, val, out, _power, **_NO_BOOL)


def ewise_maximum(a, b, out):
    _binary("ewise_maximum", a, b, out, np.maximum)


def _relu_grad(g, x):
    return np.where(x <= 0, np.zeros_like(g), g)  # a NaN x passes g (PyTorch's threshold_backward)


def ewise_relu_grad(g, x, out):
    _binary("ewise_relu_grad", g, x, out, _relu_grad, **_FLOAT_ONLY)


def scalar_maximum(a, val, out):
    _with_scalar("scalar_maximum", a, val, out, np.maximum)


def ewise_eq(a, b, out):
    _compare("ewise_eq", a, b, out, np.equal)


def scalar_eq(a, val, out):
    _compare_scalar("scalar_eq", a, val, out, np.equal)


def ewise_ne(a, b, out):
    _compare("ewise_ne", a, b, out, np.not_equal)


def scalar_ne(a, val, out):
    _compare_scalar("scalar_ne", a, val, out, np.not_equal)


def ewise_lt(a, b, out):
    _compare("ewise_lt", a, b, out, np.less)


def scalar_lt(a, val, out):
    _compare_scalar("scalar_lt", a, val, out, np.less)


def ewise_le(a, b, out):
    _compare("ewise_le", a, b, out, np.less_equal)


def scalar_le(a, val, out):
    _compare_scalar("scalar_le", a, val, out, np.less_equal)


def ewise_gt(a, b, out):
    _compare("ewise_gt", a, b, out, np.greater)


def scalar_gt(a, val, out):
    _compare_scalar("scalar_gt", a, val, out, np.greater)


def ewise_ge(a, b, out):
    _compare("ewise_ge", a, b, out, np.greater_equal)


def scalar_ge(a, val, out):
    _compare_scalar("scalar_ge", a, val, out, np.greater_equal)


def _unary(fn, a, out, f):
    dt = _same_dtype(fn, a, out)
    _need(fn, dt, FLOATING, "needs a floating dtype")
    with np.errstate(all="ignore"):
        _store(out, f(_x(a)))


def ewise_log(a, out):
    _unary("ewise_log", a, out, np.log)


def ewise_exp(a, out):
    _unary("ewise_exp", a, out, np.exp)


def ewise_tanh(a, out):
    _unary("ewise_tanh", a, out, np.tanh)


_ROW_FUNCS = {"add": np.add, "mul": np.multiply, "div": np.divide}


def ewise_rows(op, full, row, row_offset, out, cols, swap):
    """A row broadcast over rows without materialising it: full is (rows, cols) compact,
    row is the (cols,) run at row.array[row_offset:row_offset + cols]; out (rows, cols)
    compact gets op(full, row), or op(row, full) when swap. op is "add", "mul" or "div"."""
    if op not in _ROW_FUNCS:
        raise ValueError(f"ewise_rows: unknown op {op}")
    dt = _same_dtype("ewise_rows", full, row, out)
    if op == "div":
        _need("ewise_rows", dt, FLOATING, "div needs a floating dtype")
    if full.size != out.size:
        raise ValueError(f"ewise_rows: input has {full.size} elements, out has {out.size}")
    if cols < 1 or full.size % cols or row_offset < 0 or row_offset + cols > row.size:
        raise ValueError(f"ewise_rows: bad row broadcast (cols {cols})")
    x = _x(full).reshape(-1, cols)
    y = _x(row)[row_offset : row_offset + cols]
    with np.errstate(all="ignore"):
        res = _ROW_FUNCS[op](y, x) if swap else _ROW_FUNCS[op](x, y)
        out.array.reshape(-1, cols)[...] = res


def _check_matmul(fn, a, b, out):
    dt = _same_dtype(fn, a, b, out)
    _need(fn, dt, _NUMERIC, "needs a numeric (not bool) dtype")
    return dt


def _product(dt, x, y):
    """x @ y in dt's arithmetic: halves multiply in float32, integers wrap like C."""
    if dt in HALF:
        return np.matmul(x.astype(np.float32), y.astype(np.float32))
    if dt in INTEGRAL:
        return np.matmul(x.astype(np.int64), y.astype(np.int64))
    return np.matmul(x, y)


def matmul(a, b, out, m, n, p):
    """a is (m, n) compact, b is (n, p) compact, out is (m, p) compact."""
    dt = _check_matmul("matmul", a, b, out)
    _store_part(out, m * p, _product(dt, a.array[: m * n].reshape(m, n), b.array[: n * p].reshape(n, p)))


def _store_part(out, n, values):
    with np.errstate(all="ignore"):
        out.array[:n] = values.reshape(-1)


def bmm(a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset):
    """Batched matmul over strided operands.

    a is (batch, m, n) with element strides ``a_strides`` from ``a_offset``,
    b is (batch, n, p) likewise, out is (batch, m, p) compact. A zero batch
    stride broadcasts one operand across the batch.
    """
    dt = _check_matmul("bmm", a, b, out)
    av = _view(a, (batch, m, n), a_strides, a_offset)
    bv = _view(b, (batch, n, p), b_strides, b_offset)
    _store_part(out, batch * m * p, _product(dt, av, bv))


def bmm_naive(a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset):
    """Reference for ``bmm`` (in the compiled backends: the plain triple loop)."""
    bmm(a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset)


def conv2d(x, w, out, x_shape, x_strides, x_offset, w_shape, w_strides, w_offset, out_shape, out_strides, stride,
           padding, dilation, groups):
    """2-D cross-correlation of strided views (the compiled backends compute it as an implicit GEMM).

    x is (n, h, w, c) with element strides ``x_strides`` from ``x_offset``, w is (kh, kw, c / groups,
    cout) likewise, out is (n, ho, wo, cout) at ``out_strides`` from 0 (its elements distinct);
    ``stride`` and ``dilation`` are pairs >= 1, ``padding`` the (top, left) pair (any sign; the
    output size fixes how far the bottom and right reach). With cg = c / groups, cog = cout / groups:
        out[b, p, q, g cog + j] = sum_{i, k, ch} x[b, p sh + i dh - pt, q sw + k dw - pl, g cg + ch]
                                                 * w[i, k, ch, g cog + j],
    taps outside x reading zero. float32 and float64 only.
    """
    fn = "conv2d"
    dt = _same_dtype(fn, x, w, out)
    _need(fn, dt, _FUSED, "needs float32 or float64")
    _check_conv2d(fn, x, w, out, x_shape, x_strides, x_offset, w_shape, w_strides, w_offset, out_shape, out_strides,
                  stride, padding, dilation, groups)
    n, h, wd, c = x_shape
    kh, kw, cg, cout = w_shape
    ho, wo = out_shape[1:3]
    if n * ho * wo * cout == 0:
        return
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    # The rows and columns the taps reach, zero outside x: Xp[r] = x[r - pt].
    rh, rw = (ho - 1) * sh + (kh - 1) * dh + 1, (wo - 1) * sw + (kw - 1) * dw + 1
    xp = np.zeros((n, rh, rw, c), dtype=x.array.dtype)
    xv = _view(x, x_shape, x_strides, x_offset)
    r0, r1 = max(0, -pt), min(h, rh - pt)
    c0, c1 = max(0, -pl), min(wd, rw - pl)
    if r0 < r1 and c0 < c1:
        xp[:, r0 + pt : r1 + pt, c0 + pl : c1 + pl, :] = xv[:, r0:r1, c0:c1, :]
    s0, s1, s2, s3 = xp.strides
    cols = np.lib.stride_tricks.as_strided(xp, (n, ho, wo, kh, kw, c), (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3))
    wv = _view(w, w_shape, w_strides, w_offset)
    cog = cout // groups
    res = np.empty((n, ho, wo, cout), dtype=x.array.dtype)
    for g in range(groups):
        res[..., g * cog : (g + 1) * cog] = np.tensordot(
            cols[..., g * cg : (g + 1) * cg], wv[..., g * cog : (g + 1) * cog], axes=3)
    ov = np.lib.stride_tricks.as_strided(out.array, tuple(out_shape),
                                         tuple(int(st) * out.array.itemsize for st in out_strides))
    ov[...] = res


def _check_conv2d(fn, x, w, out, x_shape, x_strides, x_offset, w_shape, w_strides, w_offset, out_shape, out_strides,
                  stride, padding, dilation, groups):
    """The checks of src/common/checks.h check_conv2d, with the same exception types."""
    if len(x_shape) != 4 or len(w_shape) != 4 or len(out_shape) != 4:
        raise ValueError(f"{fn}: x, w and out must be 4-D (n, h, w, c), (kh, kw, c/groups, cout) and "
                         f"(n, ho, wo, cout), got {tuple(x_shape)}, {tuple(w_shape)} and {tuple(out_shape)}")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise ValueError(f"{fn}: stride, padding and dilation must be pairs, got {stride}, {padding} and {dilation}")
    if min(stride) < 1 or min(dilation) < 1 or groups < 1:
        raise ValueError(f"{fn}: stride {tuple(stride)}, dilation {tuple(dilation)} and groups {groups} must be >= 1")
    for buf, shape, strides, offset in ((x, x_shape, x_strides, x_offset), (w, w_shape, w_strides, w_offset),
                                        (out, out_shape, out_strides, 0)):
        _check_view(fn, buf, shape, strides, offset)
    if x_shape[3] != w_shape[2] * groups or w_shape[3] % groups or out_shape[0] != x_shape[0] \
            or out_shape[3] != w_shape[3]:
        raise ValueError(f"{fn}: x {tuple(x_shape)}, w {tuple(w_shape)} and out {tuple(out_shape)} with "
                         f"groups={groups} do not fit: need c = w[2] * groups, cout = w[3] divisible by groups, "
                         f"and out (n, ho, wo, cout)")
    reach = 0
    for st, size in sorted((abs(int(st)), int(size)) for st, size in zip(out_strides, out_shape) if size > 1):
        if st <= reach:
            raise ValueError(f"{fn}: out view of shape {tuple(out_shape)}, strides {tuple(out_strides)} has "
                             f"overlapping elements")
        reach += st * (size - 1)


def _check_view(fn, buf, shape, strides, offset):
    """A view inside its buffer: IndexError otherwise (src/common/checks.h check_view)."""
    if len(shape) != len(strides):
        raise ValueError(f"{fn}: shape {tuple(shape)} and strides {tuple(strides)} differ in length")
    if any(d < 0 for d in shape):
        raise ValueError(f"{fn}: negative dim in shape {tuple(shape)}")
    if 0 in shape:
        return
    lo = offset + sum(min(0, (d - 1) * st) for d, st in zip(shape, strides))
    hi = offset + sum(max(0, (d - 1) * st) for d, st in zip(shape, strides))
    if lo < 0 or hi >= buf.size:
        raise IndexError(f"{fn}: view of shape {tuple(shape)}, strides {tuple(strides)}, offset {offset} reaches "
                         f"elements [{lo}, {hi}] outside a buffer of {buf.size}")


def _sum_dtype(dt):
    """The dtype of a sum of dt: int64 for integers and bool, dt for floating types."""
    return dt if dt in FLOATING else "int64"


def _check_reduce(fn, a, out, reduce_size, out_dtype):
    _need_dtype(fn, out, out_dtype)
    if reduce_size < 1:
        raise ValueError(f"{fn}: reduce_size must be >= 1")
    if a.size < out.size * reduce_size:
        raise ValueError(f"{fn}: input has {a.size} elements, need {out.size} x {reduce_size}")


def reduce_max(a, out, reduce_size):
    """a is compact (out.size * reduce_size); reduces contiguous runs of reduce_size.
    out has a's dtype (bool: any); NaN propagates."""
    _check_reduce("reduce_max", a, out, reduce_size, a.dtype)
    n = out.size
    out.array[:] = a.array[: n * reduce_size].reshape(n, reduce_size).max(axis=1)


def reduce_sum(a, out, reduce_size):
    """Sums of contiguous runs; out is a's dtype for floating types (halves accumulate in
    float32), int64 for integers and bool."""
    _check_reduce("reduce_sum", a, out, reduce_size, _sum_dtype(a.dtype))
    n = out.size
    with np.errstate(all="ignore"):  # inf + -inf is NaN, as in the compiled kernels
        _store(out, _x(a)[: n * reduce_size].reshape(n, reduce_size).sum(axis=1, dtype=_acc(out.dtype)))


def reduce_sum_middle(a, out, outer, reduce, inner):
    """a is (outer, reduce, inner) compact; out (outer, inner) compact (dtype as reduce_sum)
    gets the sum over the middle axis (bias and BatchNorm gradients without a transposed
    copy). Floats are summed in blocks of 64 rows like the compiled kernels, so results
    agree closely (float32 bit for bit)."""
    _need_dtype("reduce_sum_middle", out, _sum_dtype(a.dtype))
    if outer < 0 or reduce < 1 or inner < 1:
        raise ValueError("reduce_sum_middle: bad sizes")
    if a.size < outer * reduce * inner or out.size < outer * inner:
        raise ValueError("reduce_sum_middle: arrays are smaller than (outer, reduce, inner)")
    acc = _acc(out.dtype)
    x = _x(a)[: outer * reduce * inner].reshape(outer, reduce, inner).astype(acc)
    if out.dtype not in FLOATING:
        _store_part(out, outer * inner, x.sum(axis=1))
        return
    blocks = -(-reduce // 64)
    if blocks * 64 != reduce:  # zero rows pad the last block; adding them changes no sum
        x = np.concatenate([x, np.zeros((outer, blocks * 64 - reduce, inner), dtype=acc)], axis=1)
    # accumulate adds in order (sum may go pairwise), as the loops of the compiled
    # kernels do; "+ 0" makes -0 sums +0 like their zero-started accumulators.
    block = np.add.accumulate(x.reshape(outer, blocks, 64, inner), axis=2, dtype=acc)[:, :, -1] + acc(0)
    total = np.add.accumulate(block, axis=1, dtype=acc)[:, -1] + acc(0)
    _store_part(out, outer * inner, total)


def _fused(fn, *bufs):
    """The one dtype of a fused kernel's float buffers: float32 or float64."""
    dt = _same_dtype(fn, *bufs)
    _need(fn, dt, _FUSED, "needs float32 or float64")
    return _np_dtype(dt).type


def _check_bn(fn, rows, cols, full, vecs):
    _fused(fn, *full, *vecs)
    if rows < 0 or cols < 0:
        raise ValueError(f"{fn}: bad sizes ({rows}, {cols})")
    if any(a.size < rows * cols for a in full) or any(v.size < cols for v in vecs):
        raise ValueError(f"{fn}: buffers of {[a.size for a in full + vecs]} elements do not fit "
                         f"({rows}, {cols}) and ({cols},)")


def _bn_view(a, rows, cols):
    return a.array[: rows * cols].reshape(rows, cols)


def _bn_scale(w, var, cols, eps):
    """w / sqrt(var + eps) per column, in float64."""
    return w.array[:cols].astype(np.float64) / np.sqrt(var.array[:cols].astype(np.float64) + eps)


def bn_forward(x, w, b, out, mean, var, rows, cols, eps):
    """Training-mode batch norm over the rows of x (rows, cols) compact with w, b (cols,):
    mean, var (cols,) get the per-column mean and biased variance (two passes, summed in
    float64; 0 when rows is 0) and out (rows, cols) compact gets (x - mean) * s + b with
    s = w / sqrt(var + eps) (computed in float64 from the stored float32 var, then rounded)."""
    _check_bn("bn_forward", rows, cols, (x, out), (w, b, mean, var))
    if rows == 0:
        mean.array[:cols] = 0.0
        var.array[:cols] = 0.0
        return
    xv = _bn_view(x, rows, cols)
    dt = x.array.dtype
    m = (xv.sum(axis=0, dtype=np.float64) / rows).astype(dt)
    d = xv.astype(np.float64) - m
    mean.array[:cols] = m
    var.array[:cols] = (d * d).sum(axis=0) / rows
    s = _bn_scale(w, var, cols, eps).astype(dt)
    _bn_view(out, rows, cols)[...] = (xv - m) * s + b.array[:cols]


def bn_backward(x, g, w, mean, var, dx, dw, db, rows, cols, eps):
    """Adjoint of bn_forward for the upstream g (rows, cols) compact, given the forward's x, w,
    mean and var: with inv = 1 / sqrt(var + eps) and k = w inv (float64 per column),
    db = sum(g), dw = inv sum(g (x - mean)) (summed over rows in float64) and
    dx = k ((g - gm) - (x - mean) c) with gm = db / rows, c = inv dw / rows (k, gm, c rounded to
    float32; the differences come first, so a constant column gives dx = 0 exactly)."""
    _check_bn("bn_backward", rows, cols, (x, g, dx), (w, mean, var, dw, db))
    if rows == 0:
        dw.array[:cols] = 0.0
        db.array[:cols] = 0.0
        return
    xv, gv = _bn_view(x, rows, cols), _bn_view(g, rows, cols)
    m = mean.array[:cols]
    inv = 1.0 / np.sqrt(var.array[:cols].astype(np.float64) + eps)
    k = w.array[:cols].astype(np.float64) * inv
    sg = gv.sum(axis=0, dtype=np.float64)
    sgx = (gv.astype(np.float64) * (xv - m)).sum(axis=0)
    dwd = sgx * inv
    db.array[:cols] = sg
    dw.array[:cols] = dwd
    dt = x.array.dtype
    gm = (sg / rows).astype(dt)
    c = (inv * dwd / rows).astype(dt)
    _bn_view(dx, rows, cols)[...] = k.astype(dt) * ((gv - gm) - (xv - m) * c)


def _rows(fn, idx, num_rows):
    """idx's row numbers (any integer dtype, or float-encoded as the course's labels are)
    as int64, each checked to lie in [0, num_rows)."""
    if idx.dtype == "bool":
        raise TypeError(f"{fn}: indices must be integers (or integer-valued floats), got bool")
    rows = idx.array.astype(np.float64) if idx.dtype in HALF else idx.array
    with np.errstate(all="ignore"):
        ints = rows.astype(np.int64)
    if rows.size and ((rows != ints).any() or ints.min() < 0 or ints.max() >= num_rows):
        bad = rows[(rows != ints) | (ints < 0) | (ints >= num_rows)][0]
        raise IndexError(f"{fn}: row index {bad} is not an integer in [0, {num_rows})")
    return ints


def _check_rows(fn, table, rows, num_rows, dim, k):
    _same_dtype(fn, table, rows)
    if num_rows < 0 or dim < 0 or table.size < num_rows * dim or rows.size != k * dim:
        raise ValueError(f"{fn}: buffers of {table.size} and {rows.size} elements do not fit "
                         f"({num_rows}, {dim}) and ({k}, {dim})")


def gather_rows(a, idx, out, num_rows, dim):
    """a is (num_rows, dim) compact (any dtype), idx is (k,) compact row numbers (any
    integer dtype, or integer-valued floats), out is (k, dim) compact with a's dtype:
    out[r] = a[idx[r]] (an embedding lookup)."""
    _check_rows("gather_rows", a, out, num_rows, dim, idx.size)
    rows = _rows("gather_rows", idx, num_rows)
    out.array[:] = a.array[: num_rows * dim].reshape(num_rows, dim)[rows].reshape(-1)


def scatter_add_rows(a, idx, out, num_rows, dim):
    """a is (k, dim) compact, idx is (k,) compact row numbers, out is (num_rows, dim) compact:
    out[idx[r]] += a[r] for r = 0, 1, ... in order (the adjoint of gather_rows; out is not cleared)."""
    _check_rows("scatter_add_rows", out, a, num_rows, dim, idx.size)
    rows = _rows("scatter_add_rows", idx, num_rows)
    _need("scatter_add_rows", a.dtype, _NUMERIC, "needs a numeric (not bool) dtype")
    table = out.array[: num_rows * dim].reshape(num_rows, dim)
    if out.dtype in HALF:  # accumulate in float32, round once
        acc = table.astype(np.float32)
        np.add.at(acc, rows, _x(a).reshape(-1, dim) if dim else _x(a))
        table[...] = acc
    else:
        np.add.at(table, rows, a.array.reshape(-1, dim) if dim else a.array)


def softmax_xent(a, labels, lse, loss, n, k):
    """Softmax cross-entropy forward. a is (n, k) compact logits (float32 or float64), labels
    is (n,) compact class numbers in [0, k) (any integer dtype, or float-encoded); writes lse
    (n,) = log(sum(exp(a), axis 1)) (max-subtracted) and loss (1,) = mean over rows of
    lse[i] - a[i, labels[i]], both in a's dtype."""
    _fused("softmax_xent", a, lse, loss)
    if n < 0 or k < 0 or a.size < n * k or lse.size != n or loss.size != 1:
        raise ValueError(f"softmax_xent: buffers of {a.size}, {lse.size}, {loss.size} elements do not fit "
                         f"({n}, {k}) logits, ({n},) lse and (1,) loss")
    _check_label_count("softmax_xent", labels, n)
    rows = _rows("softmax_xent", labels, k)
    if n == 0:
        loss.array[0] = np.nan
        return
    z = a.array[: n * k].reshape(n, k)
    m = z.max(axis=1)
    s = np.log(np.exp(z - m[:, None]).sum(axis=1)) + m
    lse.array[:] = s
    loss.array[0] = np.mean(s.astype(np.float64) - z[np.arange(n), rows])


def softmax_xent_grad(a, labels, lse, g, out, n, k, scale):
    """Softmax cross-entropy adjoint: out[i, j] = (exp(a[i, j] - lse[i]) - [j == labels[i]])
    * g[0] * scale, with a (n, k) compact, labels and lse (n,), g (1,) the upstream gradient."""
    f = _fused("softmax_xent_grad", a, lse, g, out)
    if n < 0 or k < 0 or a.size < n * k or out.size != n * k or lse.size != n or g.size != 1:
        raise ValueError(f"softmax_xent_grad: buffers of {a.size}, {lse.size}, {g.size}, {out.size} elements "
                         f"do not fit ({n}, {k}) logits, ({n},) lse, (1,) g and ({n}, {k}) out")
    _check_label_count("softmax_xent_grad", labels, n)
    rows = _rows("softmax_xent_grad", labels, k)
    z = a.array[: n * k].reshape(n, k)
    p = np.exp(z - lse.array[:, None])
    p[np.arange(n), rows] -= 1
    out.array[:] = (p * f(g.array[0] * f(scale))).reshape(-1)


def _check_label_count(fn, labels, n):
    if labels.size != n:
        raise ValueError(f"{fn}: {labels.size} labels for {n} rows")


def _check_step(fn, out, *bufs):
    if any(b.size != out.size for b in bufs):
        raise ValueError(f"{fn}: buffers of {[b.size for b in bufs]} elements, out has {out.size}")


def adam_step(w, g, m, v, out, lr, beta1, beta2, eps, weight_decay, decay, bias_c1, bias_c2):
    """One Adam update, all buffers compact and the same size; m and v are updated in place:
    g' = g + weight_decay*w; m = beta1*m + (1-beta1)*g'; v = beta2*v + (1-beta2)*g'^2;
    out = decay*w - lr * (m/bias_c1) / (sqrt(v/bias_c2) + eps).
    (Adam: decay 1, bias_c = 1 - beta^t; AdamW: weight_decay 0, decay 1 - lr*wd.)"""
    _check_step("adam_step", out, w, g, m, v)
    f = _fused("adam_step", out, w, g, m, v)
    x = w.array
    gw = g.array + f(weight_decay) * x if weight_decay else g.array
    m.array[:] = f(beta1) * m.array + f(1 - beta1) * gw
    v.array[:] = f(beta2) * v.array + f(1 - beta2) * (gw * gw)
    upd = (m.array / f(bias_c1)) / (np.sqrt(v.array / f(bias_c2)) + f(eps))
    out.array[:] = (x * f(decay) if decay != 1 else x) - f(lr) * upd


def sgd_step(w, g, u, out, lr, momentum, weight_decay):
    """One SGD update, buffers compact and the same size: g' = g + weight_decay*w; with
    momentum u = momentum*u + (1-momentum)*g' (in place) and out = w - lr*u, else
    out = w - lr*g' (u is not touched)."""
    _check_step("sgd_step", out, w, g, *((u,) if momentum else ()))
    f = _fused("sgd_step", out, w, g, *((u,) if momentum else ()))
    x = w.array
    gw = g.array + f(weight_decay) * x if weight_decay else g.array
    if momentum:
        u.array[:] = f(momentum) * u.array + f(1 - momentum) * gw
        gw = u.array
    out.array[:] = x - f(lr) * gw
