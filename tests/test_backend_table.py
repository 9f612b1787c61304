"""Every compiled backend exports the function table of the numpy twin."""
import importlib
import inspect
import shutil

import pytest

from needle.backend_ndarray import ndarray_backend_numpy as twin

TABLE = sorted(
    name for name, obj in vars(twin).items() if inspect.isfunction(obj) and not name.startswith("_")
)


def _load(name):
    try:
        return importlib.import_module(f"needle.backend_ndarray.{name}")
    except ImportError as e:
        return e


def test_table_is_the_documented_one():
    for name in ["compact", "ewise_setitem", "scalar_setitem", "matmul", "bmm", "bmm_naive", "reduce_sum",
                 "reduce_max", "ewise_add", "scalar_power", "ewise_tanh", "to_numpy", "from_numpy", "fill"]:
        assert name in TABLE


def test_cpu_module_exports_table():
    mod = _load("ndarray_backend_cpu")
    if isinstance(mod, ImportError):
        pytest.fail(f"cpu backend not built: {mod}")
    missing = [n for n in TABLE if not hasattr(mod, n)]
    assert not missing, f"cpu backend lacks {missing}"
    assert mod.__device_name__ == "cpu"
    assert hasattr(mod, "matmul_tiled") and mod.__tile_size__ >= 1
    arr = mod.Array(10)
    assert arr.size == 10 and arr.ptr() % 64 == 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: the CUDA module is not built")
def test_cuda_module_exports_table():
    """Built whenever nvcc exists; importing it needs no GPU."""
    mod = _load("ndarray_backend_cuda")
    if isinstance(mod, ImportError):
        pytest.fail(f"nvcc is present but the cuda backend did not build or import: {mod}")
    missing = [n for n in TABLE if not hasattr(mod, n)]
    assert not missing, f"cuda backend lacks {missing}"
    assert mod.__device_name__ == "cuda"
    assert not hasattr(mod, "matmul_tiled")
    assert mod.device_count() >= 0
    assert set(mod.memory_stats()) >= {"allocated", "cached", "peak"}


# ---- argument order ----------------------------------------------------------
def _signature(fn):
    """(names, kinds) of a pybind11 function from its docstring's first line; kinds are
    'array', 'int', 'float', 'str', 'bool', 'seq' or the raw annotation."""
    line = (fn.__doc__ or "").strip().split("\n")[0]
    inner = line[line.index("(") + 1 : line.rindex(") ->")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch in "[(" 
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    names, kinds = [], []
    for p in parts:
        name, ann = (s.strip() for s in p.split(":", 1))
        names.append(name)
        kind = ("array" if ann.endswith("Array") else "seq" if "Sequence" in ann or ann.startswith("list")
                else "int" if "SupportsInt" in ann or ann == "int" else "float" if "SupportsFloat" in ann
                or ann == "float" else "str" if ann == "str" else "bool" if ann == "bool" else ann)
        kinds.append(kind)
    return names, kinds


SIGNATURES = {name: list(inspect.signature(getattr(twin, name)).parameters) for name in TABLE}


def _compiled_modules():
    mods = {}
    for name in ("ndarray_backend_cpu", "ndarray_backend_cuda"):
        mod = _load(name)
        if not isinstance(mod, ImportError):
            mods[name] = mod
    return mods


def test_compiled_argument_order_matches_twin():
    """Same arity as the twin; named arguments (the CUDA module names them) carry the twin's
    names in the twin's order; and both compiled modules agree on each argument's kind."""
    mods = _compiled_modules()
    assert mods, "no compiled backend"
    skip = {"to_numpy", "from_numpy"}  # numpy arrays in, out: kinds differ by design
    kinds = {}
    for modname, mod in mods.items():
        for name in TABLE:
            names, k = _signature(getattr(mod, name))
            assert len(names) == len(SIGNATURES[name]), f"{modname}.{name}{tuple(names)} vs twin {SIGNATURES[name]}"
            if not all(n.startswith("arg") and n[3:].isdigit() for n in names):
                assert names == SIGNATURES[name], f"{modname}.{name}{tuple(names)} vs twin {SIGNATURES[name]}"
            if name not in skip:
                kinds.setdefault(name, {})[modname] = k
    for name, per in kinds.items():
        if len(per) == 2:
            assert per["ndarray_backend_cpu"] == per["ndarray_backend_cuda"], f"{name}: {per}"


# ---- CPU module against the twin on random inputs ----------------------------
np = pytest.importorskip("numpy")
RNG = np.random.default_rng(7)


def _cpu():
    mod = _load("ndarray_backend_cpu")
    if isinstance(mod, ImportError):
        pytest.skip(f"cpu backend not built: {mod}")
    return mod


class _Pair:
    """The same buffers in the twin and in the CPU module."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.bufs = []

    def buf(self, data, dtype="float32"):
        data = np.ascontiguousarray(data, dtype=np.bool_ if dtype == "bool" else dtype).reshape(-1)
        t, c = twin.Array(data.size, dtype), self.cpu.Array(data.size, dtype)
        twin.from_numpy(data, t)
        self.cpu.from_numpy(data, c)
        self.bufs.append((t, c))
        return t, c

    def call(self, name, *args):
        """args: (twin, cpu) pairs for buffers, plain values otherwise."""
        getattr(twin, name)(*[a[0] if isinstance(a, tuple) else a for a in args])
        getattr(self.cpu, name)(*[a[1] if isinstance(a, tuple) else a for a in args])

    def check(self, rtol=0.0, atol=0.0):
        for t, c in self.bufs:
            got = self.cpu.to_numpy(c, [c.size], [1], 0)
            np.testing.assert_allclose(got, t.array, rtol=rtol, atol=atol, equal_nan=True)


def _rand(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def _case_elementwise(p):
    a, b = p.buf(_rand(37)), p.buf(_rand(37, lo=0.5))
    a[0].array[:5] = b[0].array[:5]  # some equal pairs for the comparisons
    p.cpu.from_numpy(a[0].array, a[1])
    for name in ["ewise_add", "ewise_mul", "ewise_div", "ewise_maximum"]:
        p.call(name, a, b, p.buf(np.zeros(37)))
    for name in ["scalar_add", "scalar_mul", "scalar_div", "scalar_maximum"]:
        p.call(name, a, 0.75, p.buf(np.zeros(37)))
    for ewise, scalar in [("ewise_eq", "scalar_eq"), ("ewise_ne", "scalar_ne"), ("ewise_lt", "scalar_lt"),
                          ("ewise_le", "scalar_le"), ("ewise_gt", "scalar_gt"), ("ewise_ge", "scalar_ge")]:
        p.call(ewise, a, b, p.buf(np.zeros(37), "bool"))
        p.call(scalar, a, float(a[0].array[3]), p.buf(np.zeros(37), "bool"))
    # ReLU's adjoint: zeros (of both signs), NaN and infinities on either side.
    x = p.buf(np.concatenate([_rand(33), [0.0, -0.0, np.nan, -np.inf]]))
    g = p.buf(np.concatenate([_rand(33), [np.inf, np.nan, 1.0, -np.inf]]))
    p.call("ewise_relu_grad", g, x, p.buf(np.zeros(37)))
    for dtype in ["float64", "float16", "int32", "uint8", "bool"]:
        p.call("astype", a, p.buf(np.zeros(37), dtype))
    for val in [2.0, 0.5, -1.0, 3.0, 1.7]:
        p.call("scalar_power", b, val, p.buf(np.zeros(37)))
    p.call("ewise_power", b, a, p.buf(np.zeros(37)))
    for name in ["ewise_log", "ewise_exp", "ewise_tanh"]:
        p.call(name, b, p.buf(np.zeros(37)))
    p.call("fill", p.buf(np.zeros(5)), 3.5)
    return dict(rtol=2e-6)


def _case_views(p):
    a = p.buf(_rand(60))
    p.call("compact", a, p.buf(np.zeros(12)), [3, 4], [1, 3], 2)
    p.call("compact", a, p.buf(np.zeros(24)), [2, 3, 4], [0, -4, 2], 40)
    out = p.buf(_rand(60))
    p.call("ewise_setitem", p.buf(_rand(12)), out, [3, 4], [10, 2], 5)
    p.call("scalar_setitem", 12, -1.5, out, [4, 3], [1, 12], 7)
    return {}


def _case_matmul(p):
    a, b = p.buf(_rand(7 * 13)), p.buf(_rand(13 * 5))
    p.call("matmul", a, b, p.buf(np.zeros(35)), 7, 13, 5)
    big = p.buf(_rand(3 * 13 * 17))
    for name in ["bmm", "bmm_naive"]:
        # a transposed and broadcast over the batch, b strided with an offset
        p.call(name, a, big, p.buf(np.zeros(3 * 7 * 4)), 3, 7, 13, 4, [0, 13, 1], 0, [221, 17, 3], 2)
    return dict(rtol=1e-5, atol=1e-5)


def _case_reductions(p):
    a = p.buf(_rand(6 * 70))
    p.call("reduce_sum", a, p.buf(np.zeros(6)), 70)
    p.call("reduce_max", a, p.buf(np.zeros(6)), 70)
    return dict(rtol=1e-6, atol=1e-6)


def _case_reduce_sum_middle(p):
    for outer, reduce, inner in [(1, 1, 1), (3, 5, 7), (2, 130, 3), (1, 300, 257), (4, 64, 1)]:
        a = p.buf(_rand(outer * reduce * inner))
        p.call("reduce_sum_middle", a, p.buf(np.zeros(outer * inner)), outer, reduce, inner)
    return {}  # same order of additions: bit-equal


def _case_ewise_rows(p):
    full = p.buf(_rand(6 * 7))
    row = p.buf(_rand(20, lo=0.5))
    for op in ["add", "mul", "div"]:
        for swap in [False, True]:
            p.call("ewise_rows", op, full, row, 3, p.buf(np.zeros(42)), 7, swap)
    p.call("ewise_rows", "div", full, p.buf(np.array([0.0, -0.0, np.inf, np.nan, 1, 2, 3])), 0,
           p.buf(np.zeros(42)), 7, True)
    return {}


def _case_rows(p):
    table = p.buf(_rand(9 * 5))
    idx = p.buf(np.array([3, 0, 8, 3, 3, 1]))
    p.call("gather_rows", table, idx, p.buf(np.zeros(6 * 5)), 9, 5)
    p.call("scatter_add_rows", p.buf(_rand(6 * 5)), idx, p.buf(_rand(9 * 5)), 9, 5)
    return dict(rtol=1e-6)


def _case_softmax_xent(p):
    n, k = 11, 19
    a = p.buf(_rand(n * k, lo=-30, hi=30))
    labels = p.buf(RNG.integers(0, k, size=n))
    lse, loss = p.buf(np.zeros(n)), p.buf(np.zeros(1))
    p.call("softmax_xent", a, labels, lse, loss, n, k)
    p.call("softmax_xent_grad", a, labels, lse, p.buf(np.array([0.7])), p.buf(np.zeros(n * k)), n, k, 1.0 / n)
    return dict(rtol=1e-5, atol=1e-6)


def _case_optimizers(p):
    n = 29
    w, g = p.buf(_rand(n)), p.buf(_rand(n))
    m, v = p.buf(_rand(n)), p.buf(_rand(n, lo=0.0, hi=1.0))
    p.call("adam_step", w, g, m, v, p.buf(np.zeros(n)), 0.01, 0.9, 0.999, 1e-8, 0.1, 1.0, 0.1, 0.001)
    p.call("adam_step", w, g, m, v, p.buf(np.zeros(n)), 0.01, 0.9, 0.999, 1e-8, 0.0, 0.999, 0.19, 0.002)
    u = p.buf(_rand(n))
    p.call("sgd_step", w, g, u, p.buf(np.zeros(n)), 0.1, 0.9, 0.01)
    p.call("sgd_step", w, g, p.buf(np.zeros(n)), p.buf(np.zeros(n)), 0.1, 0.0, 0.01)
    return dict(rtol=1e-5, atol=1e-6)


def _case_batch_norm(p):
    # (1, 4): zero variance; 257+ columns: more than one column tile; 2100 x 260: the
    # row-split (threaded) sums; a far-off mean: the centred second pass; 16-128 columns:
    # the compiled widths (row counts off a multiple of the 4 interleaved rows, and 8195 x
    # 32 split over threads). Its own generator, so the other cases keep their inputs. dw
    # and db sum thousands of terms (float partial sums in the compiled kernel, float64 in
    # the twin): atol 1e-4.
    rng = np.random.default_rng(11)
    for rows, cols, shift in [(1, 4, 0.0), (7, 5, 0.0), (130, 3, 50.0), (65, 257, 0.0), (2100, 260, 0.0), (0, 3, 0.0),
                              (3, 16, 0.0), (1031, 16, 20.0), (8195, 32, 0.0), (130, 64, 0.0), (67, 128, 5.0)]:
        x, g = p.buf(rng.uniform(-2, 2, (rows, cols)) + shift), p.buf(rng.uniform(-2, 2, (rows, cols)))
        w, b = p.buf(rng.uniform(0.5, 2, cols)), p.buf(rng.uniform(-2, 2, cols))
        out, mean, var = p.buf(np.zeros(rows * cols)), p.buf(np.zeros(cols)), p.buf(np.zeros(cols))
        p.call("bn_forward", x, w, b, out, mean, var, rows, cols, 1e-5)
        dx, dw, db = p.buf(np.zeros(rows * cols)), p.buf(np.zeros(cols)), p.buf(np.zeros(cols))
        p.call("bn_backward", x, g, w, mean, var, dx, dw, db, rows, cols, 1e-5)
    return dict(rtol=2e-5, atol=1e-4)


def _case_conv2d(p):
    # Images read through three layouts (NHWC; NCHW: unit w stride; batch-unit as the filter
    # gradient reads them), a flipped filter view, padding of either sign, groups, dilation, and
    # outputs stored NHWC or (ho, wo, n, cout).
    n, h, w, c, kh, kw, cout = 3, 7, 6, 4, 3, 2, 6
    x = p.buf(_rand(n * h * w * c + 5))
    f = p.buf(_rand(kh * kw * c * cout))
    layouts = {"nhwc": [h * w * c, w * c, c, 1], "nchw": [c * h * w, w, 1, h * w], "batch": [1, w * c * n, c * n, n]}
    for (name, xs), (st, pad, dil, g) in zip(
            sorted(layouts.items()) * 2, [((1, 1), (1, 0), (1, 1), 1), ((2, 3), (-1, 2), (1, 2), 2),
                                          ((1, 2), (0, 0), (2, 1), 1), ((3, 1), (2, -1), (1, 1), 2),
                                          ((2, 2), (1, 1), (1, 1), 1), ((1, 1), (0, 2), (2, 2), 2)]):
        ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // st[0] + 1
        wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // st[1] + 1
        cg = c // g
        fs = [-kw * cg * cout, -cg * cout, cout, 1]  # flipped in kh and kw
        fo = (kh - 1) * kw * cg * cout + (kw - 1) * cg * cout
        for os in ([ho * wo * cout, wo * cout, cout, 1], [cout, wo * n * cout, n * cout, 1]):
            p.call("conv2d", x, f, p.buf(np.zeros(n * ho * wo * cout)), [n, h, w, c], xs, 2, [kh, kw, cg, cout], fs,
                   fo, [n, ho, wo, cout], os, list(st), list(pad), list(dil), g)
    return dict(rtol=1e-5, atol=1e-5)


CASES = {
    "elementwise": _case_elementwise, "views": _case_views, "matmul": _case_matmul,
    "reductions": _case_reductions, "reduce_sum_middle": _case_reduce_sum_middle, "ewise_rows": _case_ewise_rows,
    "gather_scatter_rows": _case_rows, "softmax_xent": _case_softmax_xent, "optimizers": _case_optimizers,
    "batch_norm": _case_batch_norm, "conv2d": _case_conv2d,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_matches_twin(case):
    p = _Pair(_cpu())
    p.check(**CASES[case](p))


def test_cpu_twin_cases_cover_table():
    """Every table function but the buffer transfers (tested below) has a numeric case above."""
    import re
    src = inspect.getsource(inspect.getmodule(test_cpu_matches_twin))
    called = set(re.findall(r'p\.call\("(\w+)"', src)) | set(re.findall(r'"(\w+)"', src))
    missing = [n for n in TABLE if n not in called and n not in ("to_numpy", "from_numpy", "wrap_external")]
    assert not missing, f"no CPU-vs-twin case for {missing}"


@pytest.mark.parametrize("side", ["cpu", "twin"])
def test_wrap_external_views_foreign_memory(side):
    mod = _cpu() if side == "cpu" else twin
    host = np.arange(6, dtype=np.float64)
    buf = mod.wrap_external(host.ctypes.data, 6, "float64")
    assert buf.size == 6 and buf.dtype == "float64" and buf.ptr() == host.ctypes.data
    np.testing.assert_array_equal(mod.to_numpy(buf, [2, 3], [3, 1], 0), host.reshape(2, 3))
    mod.fill(buf, 7.0)  # writes land in the foreign memory
    np.testing.assert_array_equal(host, np.full(6, 7.0))
    with pytest.raises(TypeError):
        mod.wrap_external(host.ctypes.data, 6, "complex64")


def test_cpu_and_twin_reject_the_same_bad_calls():
    cpu = _cpu()
    p = _Pair(cpu)
    full, row, out = p.buf(_rand(12)), p.buf(_rand(4)), p.buf(np.zeros(12))
    for args in [("add", full, row, 1, out, 4, False), ("add", full, row, 0, out, 5, False),
                 ("pow", full, row, 0, out, 4, False), ("add", full, row, 0, out, 0, False)]:
        for side in (0, 1):
            with pytest.raises((ValueError, IndexError)):
                (twin if side == 0 else cpu).ewise_rows(*[a[side] if isinstance(a, tuple) else a for a in args])
    a, o = p.buf(_rand(10)), p.buf(np.zeros(3))
    for args in [(a, o, 3, 4, 1), (a, o, 1, 0, 3), (a, o, 1, 4, 3)]:
        for side in (0, 1):
            with pytest.raises(ValueError):
                (twin if side == 0 else cpu).reduce_sum_middle(*[x[side] if isinstance(x, tuple) else x for x in args])
    x, v, out = p.buf(_rand(12)), p.buf(_rand(4)), p.buf(np.zeros(12))
    for args in [(x, v, v, out, v, v, 4, 4, 1e-5), (x, v, v, out, v, v, 3, 5, 1e-5), (x, v, v, out, v, v, -1, 4, 1e-5)]:
        for side in (0, 1):
            with pytest.raises(ValueError):
                (twin if side == 0 else cpu).bn_forward(*[a[side] if isinstance(a, tuple) else a for a in args])
    for args in [(x, x, v, v, v, out, v, v, 3, 5, 1e-5), (x, x, v, v, v, p.buf(np.zeros(8)), v, v, 3, 4, 1e-5)]:
        for side in (0, 1):
            with pytest.raises(ValueError):
                (twin if side == 0 else cpu).bn_backward(*[a[side] if isinstance(a, tuple) else a for a in args])
    # conv2d: channels that do not fit the groups, a view outside its buffer, an out with
    # overlapping elements, a zero stride, a dtype it does not take: the same exception types.
    img, filt, res = p.buf(_rand(2 * 5 * 5 * 4)), p.buf(_rand(3 * 3 * 2 * 6)), p.buf(np.zeros(2 * 3 * 3 * 6))
    good = dict(x_shape=[2, 5, 5, 4], x_strides=[100, 20, 4, 1], x_offset=0, w_shape=[3, 3, 2, 6],
                w_strides=[36, 12, 6, 1], w_offset=0, out_shape=[2, 3, 3, 6], out_strides=[54, 18, 6, 1],
                stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=2)
    bad = [(ValueError, dict(groups=1)), (IndexError, dict(x_offset=1)), (ValueError, dict(out_strides=[54, 18, 1, 1])),
           (ValueError, dict(stride=[0, 1])), (ValueError, dict(w_shape=[3, 3, 2, 5]))]
    for exc, change in bad:
        kw = dict(good, **change)
        for side in (0, 1):
            with pytest.raises(exc):
                (twin if side == 0 else cpu).conv2d(img[side], filt[side], res[side], *kw.values())
    ints = p.buf(np.zeros(2 * 5 * 5 * 4), "int32")
    for side in (0, 1):
        with pytest.raises(TypeError):
            (twin if side == 0 else cpu).conv2d(ints[side], filt[side], res[side], *good.values())
