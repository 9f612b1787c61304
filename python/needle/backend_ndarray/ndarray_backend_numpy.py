"""Pure-numpy backend: the living definition of every backend function.

The compiled modules (``ndarray_backend_cpu``, ``ndarray_backend_cuda``) export
exactly these names with these signatures; ``tests/test_backend_table.py``
checks that. Buffers are flat float32; shapes, strides and offsets are in
elements, strides may be negative (flip) or zero (broadcast).
"""
import numpy as np

__device_name__ = "numpy"
__tile_size__ = 8

_DTYPE = np.float32


class Array:
    """A flat float32 buffer of ``size`` elements."""

    def __init__(self, size):
        size = int(size)
        if size < 0:
            raise ValueError(f"Array size must be >= 0, got {size}")
        self.array = np.empty(size, dtype=_DTYPE)

    @property
    def size(self):
        return self.array.size

    def ptr(self):
        return self.array.ctypes.data


def _view(a, shape, strides, offset):
    """Strided view of the flat buffer ``a`` (strides in elements)."""
    item = a.array.itemsize
    base = a.array[offset:] if offset else a.array
    if len(shape) and 0 in shape:
        return np.empty(tuple(shape), dtype=_DTYPE)
    return np.lib.stride_tricks.as_strided(
        base, tuple(shape), tuple(int(s) * item for s in strides)
    )


def to_numpy(a, shape, strides, offset):
    return np.array(_view(a, shape, strides, offset), dtype=_DTYPE, copy=True)


def from_numpy(a, out):
    flat = np.ascontiguousarray(a, dtype=_DTYPE).reshape(-1)
    if flat.size != out.size:
        raise ValueError(f"from_numpy: source has {flat.size} elements, buffer has {out.size}")
    out.array[:] = flat


def fill(out, val):
    out.array[:] = val


def compact(a, out, shape, strides, offset):
    """a is strided (shape, strides, offset); out is compact with prod(shape) elements."""
    out.array[:] = _view(a, shape, strides, offset).reshape(-1)


def ewise_setitem(a, out, shape, strides, offset):
    """a is compact with prod(shape) elements; writes into the strided view of out."""
    n = int(np.prod(shape)) if len(shape) else 1
    if n == 0:
        return
    view = _view(out, shape, strides, offset)
    view[...] = a.array[:n].reshape(shape)


def scalar_setitem(size, val, out, shape, strides, offset):
    if size == 0:
        return
    _view(out, shape, strides, offset)[...] = val


def ewise_add(a, b, out):
    out.array[:] = a.array + b.array


def scalar_add(a, val, out):
    out.array[:] = a.array + val


def ewise_mul(a, b, out):
    out.array[:] = a.array * b.array


def scalar_mul(a, val, out):
    out.array[:] = a.array * val


def ewise_div(a, b, out):
    with np.errstate(divide="ignore", invalid="ignore"):
        out.array[:] = a.array / b.array


def scalar_div(a, val, out):
    with np.errstate(divide="ignore", invalid="ignore"):
        out.array[:] = a.array / np.float32(val)


def ewise_power(a, b, out):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out.array[:] = np.power(a.array, b.array)


def scalar_power(a, val, out):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out.array[:] = np.power(a.array, np.float32(val))


def ewise_maximum(a, b, out):
    out.array[:] = np.maximum(a.array, b.array)


def scalar_maximum(a, val, out):
    out.array[:] = np.maximum(a.array, np.float32(val))


def ewise_eq(a, b, out):
    out.array[:] = a.array == b.array


def scalar_eq(a, val, out):
    out.array[:] = a.array == np.float32(val)


def ewise_ge(a, b, out):
    out.array[:] = a.array >= b.array


def scalar_ge(a, val, out):
    out.array[:] = a.array >= np.float32(val)


def ewise_log(a, out):
    with np.errstate(divide="ignore", invalid="ignore"):
        out.array[:] = np.log(a.array)


def ewise_exp(a, out):
    with np.errstate(over="ignore"):
        out.array[:] = np.exp(a.array)


def ewise_tanh(a, out):
    out.array[:] = np.tanh(a.array)


_ROW_FUNCS = {"add": np.add, "mul": np.multiply, "div": np.divide}


def ewise_rows(op, full, row, row_offset, out, cols, swap):
    """A row broadcast over rows without materialising it: full is (rows, cols) compact,
    row is the (cols,) run at row.array[row_offset:row_offset + cols]; out (rows, cols)
    compact gets op(full, row), or op(row, full) when swap. op is "add", "mul" or "div"."""
    if op not in _ROW_FUNCS:
        raise ValueError(f"ewise_rows: unknown op {op}")
    if full.size != out.size:
        raise ValueError(f"ewise_rows: input has {full.size} elements, out has {out.size}")
    if cols < 1 or full.size % cols or row_offset < 0 or row_offset + cols > row.size:
        raise ValueError(f"ewise_rows: bad row broadcast (cols {cols})")
    x = full.array.reshape(-1, cols)
    y = row.array[row_offset : row_offset + cols]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out.array.reshape(-1, cols)[...] = _ROW_FUNCS[op](y, x) if swap else _ROW_FUNCS[op](x, y)


def matmul(a, b, out, m, n, p):
    """a is (m, n) compact, b is (n, p) compact, out is (m, p) compact."""
    out.array[: m * p] = (a.array[: m * n].reshape(m, n) @ b.array[: n * p].reshape(n, p)).reshape(-1)


def bmm(a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset):
    """Batched matmul over strided operands.

    a is (batch, m, n) with element strides ``a_strides`` from ``a_offset``,
    b is (batch, n, p) likewise, out is (batch, m, p) compact. A zero batch
    stride broadcasts one operand across the batch.
    """
    av = _view(a, (batch, m, n), a_strides, a_offset)
    bv = _view(b, (batch, n, p), b_strides, b_offset)
    out.array[: batch * m * p] = np.matmul(av, bv).reshape(-1)


def bmm_naive(a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset):
    """Reference for ``bmm`` (in the compiled backends: the plain triple loop)."""
    bmm(a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset)


def reduce_max(a, out, reduce_size):
    """a is compact (out.size * reduce_size); reduces contiguous runs of reduce_size."""
    n = out.size
    out.array[:] = a.array[: n * reduce_size].reshape(n, reduce_size).max(axis=1)


def reduce_sum(a, out, reduce_size):
    n = out.size
    out.array[:] = a.array[: n * reduce_size].reshape(n, reduce_size).sum(axis=1)


def reduce_sum_middle(a, out, outer, reduce, inner):
    """a is (outer, reduce, inner) compact; out (outer, inner) compact gets the sum over
    the middle axis (bias and BatchNorm gradients without a transposed copy). Summed in
    float32 in blocks of 64 rows like the compiled kernels, so results agree closely."""
    if outer < 0 or reduce < 1 or inner < 1:
        raise ValueError("reduce_sum_middle: bad sizes")
    if a.size < outer * reduce * inner or out.size < outer * inner:
        raise ValueError("reduce_sum_middle: arrays are smaller than (outer, reduce, inner)")
    x = a.array[: outer * reduce * inner].reshape(outer, reduce, inner)
    blocks = -(-reduce // 64)
    if blocks * 64 != reduce:  # zero rows pad the last block; adding them changes no sum
        x = np.concatenate([x, np.zeros((outer, blocks * 64 - reduce, inner), dtype=_DTYPE)], axis=1)
    # accumulate adds in order (sum may go pairwise), as the loops of the compiled
    # kernels do; "+ 0" makes -0 sums +0 like their zero-started accumulators.
    block = np.add.accumulate(x.reshape(outer, blocks, 64, inner), axis=2, dtype=_DTYPE)[:, :, -1] + _DTYPE(0)
    total = np.add.accumulate(block, axis=1, dtype=_DTYPE)[:, -1] + _DTYPE(0)
    out.array[: outer * inner] = total.reshape(-1)


def _check_bn(fn, rows, cols, full, vecs):
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
    m = (xv.sum(axis=0, dtype=np.float64) / rows).astype(_DTYPE)
    d = xv.astype(np.float64) - m
    mean.array[:cols] = m
    var.array[:cols] = (d * d).sum(axis=0) / rows
    s = _bn_scale(w, var, cols, eps).astype(_DTYPE)
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
    gm = (sg / rows).astype(_DTYPE)
    c = (inv * dwd / rows).astype(_DTYPE)
    _bn_view(dx, rows, cols)[...] = k.astype(_DTYPE) * ((gv - gm) - (xv - m) * c)


def _rows(fn, idx, num_rows):
    """idx's float32-encoded row numbers as int64, each checked to lie in [0, num_rows)."""
    rows = idx.array
    ints = rows.astype(np.int64)
    if rows.size and ((rows != ints).any() or ints.min() < 0 or ints.max() >= num_rows):
        bad = rows[(rows != ints) | (ints < 0) | (ints >= num_rows)][0]
        raise IndexError(f"{fn}: row index {bad} is not an integer in [0, {num_rows})")
    return ints


def _check_rows(fn, table, rows, num_rows, dim, k):
    if num_rows < 0 or dim < 0 or table.size < num_rows * dim or rows.size != k * dim:
        raise ValueError(f"{fn}: buffers of {table.size} and {rows.size} elements do not fit "
                         f"({num_rows}, {dim}) and ({k}, {dim})")


def gather_rows(a, idx, out, num_rows, dim):
    """a is (num_rows, dim) compact, idx is (k,) compact float32-encoded row numbers,
    out is (k, dim) compact: out[r] = a[idx[r]] (an embedding lookup)."""
    _check_rows("gather_rows", a, out, num_rows, dim, idx.size)
    rows = _rows("gather_rows", idx, num_rows)
    out.array[:] = a.array[: num_rows * dim].reshape(num_rows, dim)[rows].reshape(-1)


def scatter_add_rows(a, idx, out, num_rows, dim):
    """a is (k, dim) compact, idx is (k,) compact row numbers, out is (num_rows, dim) compact:
    out[idx[r]] += a[r] for r = 0, 1, ... in order (the adjoint of gather_rows; out is not cleared)."""
    _check_rows("scatter_add_rows", out, a, num_rows, dim, idx.size)
    rows = _rows("scatter_add_rows", idx, num_rows)
    np.add.at(out.array[: num_rows * dim].reshape(num_rows, dim), rows, a.array.reshape(-1, dim) if dim else a.array)


def softmax_xent(a, labels, lse, loss, n, k):
    """Softmax cross-entropy forward. a is (n, k) compact logits, labels is (n,) compact
    float32-encoded class numbers in [0, k); writes lse (n,) = log(sum(exp(a), axis 1))
    (max-subtracted) and loss (1,) = mean over rows of lse[i] - a[i, labels[i]]."""
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
    if n < 0 or k < 0 or a.size < n * k or out.size != n * k or lse.size != n or g.size != 1:
        raise ValueError(f"softmax_xent_grad: buffers of {a.size}, {lse.size}, {g.size}, {out.size} elements "
                         f"do not fit ({n}, {k}) logits, ({n},) lse, (1,) g and ({n}, {k}) out")
    _check_label_count("softmax_xent_grad", labels, n)
    rows = _rows("softmax_xent_grad", labels, k)
    z = a.array[: n * k].reshape(n, k)
    p = np.exp(z - lse.array[:, None])
    p[np.arange(n), rows] -= 1
    out.array[:] = (p * np.float32(g.array[0] * np.float32(scale))).reshape(-1)


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
    f = np.float32
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
    f = np.float32
    x = w.array
    gw = g.array + f(weight_decay) * x if weight_decay else g.array
    if momentum:
        u.array[:] = f(momentum) * u.array + f(1 - momentum) * gw
        gw = u.array
    out.array[:] = x - f(lr) * gw
