"""CUDA backend module, tested function by function against numpy.

Calls ``needle.backend_ndarray.ndarray_backend_cuda`` directly (no NDArray), so a
failure points at one kernel. The whole file is skipped when the module is not
built; everything except the export check is skipped when no GPU is visible.
"""
import numpy as np
import pytest

M = pytest.importorskip("needle.backend_ndarray.ndarray_backend_cuda")
from needle.backend_ndarray import ndarray_backend_numpy as R  # noqa: E402

needs_gpu = pytest.mark.skipif(M.device_count() == 0, reason="no CUDA device visible")

RNG = np.random.default_rng(0)


def compact_strides(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return list(reversed(strides))


def to_dev(x):
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    a = M.Array(x.size)
    M.from_numpy(x, a)
    return a


def to_host(a, shape):
    return M.to_numpy(a, list(shape), compact_strides(shape), 0)


def ref_view(flat, shape, strides, offset):
    """numpy view of a flat float32 buffer with element strides (the backends' model)."""
    ra = R.Array(flat.size)
    R.from_numpy(flat, ra)
    return R.to_numpy(ra, list(shape), list(strides), offset)


# ---------------------------------------------------------------------------
# exports (module only, no GPU needed)
# ---------------------------------------------------------------------------


def test_exports_match_numpy_backend():
    want = {n for n in dir(R) if not n.startswith("_") and callable(getattr(R, n))}
    want.discard("matmul_tiled")
    missing = sorted(n for n in want if not hasattr(M, n))
    assert not missing, f"cuda module lacks {missing}"
    assert not hasattr(M, "matmul_tiled")
    assert M.__device_name__ == "cuda"
    assert M.__tile_size__ == 4
    for extra in ("memory_stats", "empty_cache", "device_count", "device_name",
                  "set_matmul_kernel", "get_matmul_kernel", "matmul_kernel_names"):
        assert callable(getattr(M, extra))


def test_device_count_never_raises():
    assert isinstance(M.device_count(), int) and M.device_count() >= 0


def test_size_zero_needs_no_device():
    a = M.Array(0)
    assert a.size == 0
    assert M.to_numpy(a, [0, 3], [3, 1], 0).shape == (0, 3)


def test_index_overflow_is_rejected_before_any_device_work():
    # prod(shape) = 2**64 would wrap to 0 and slip past the size checks.
    with pytest.raises(ValueError):
        M.compact(M.Array(0), M.Array(0), [2**32, 2**32], [0, 0], 0)
    with pytest.raises(ValueError):
        M.scalar_setitem(0, 1.0, M.Array(0), [2**32, 2**32], [0, 0], 0)
    # a zero dimension empties the view whatever the other dimensions are
    M.compact(M.Array(0), M.Array(0), [0, 2**40, 2**40], [1, 1, 1], 0)


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


@needs_gpu
def test_memory_stats_track_live_arrays_and_cache():
    M.empty_cache()
    base = M.memory_stats()
    assert base["cached"] == 0
    n = 1 << 20
    x = M.Array(n)
    s1 = M.memory_stats()
    assert s1["allocated"] >= base["allocated"] + 4 * n
    assert s1["peak"] >= s1["allocated"]
    ptr = x.ptr()
    del x
    s2 = M.memory_stats()
    assert s2["allocated"] == base["allocated"]
    assert s2["cached"] >= 4 * n
    assert s2["peak"] == s1["peak"]
    y = M.Array(n)  # same size class: the cached block comes back
    assert y.ptr() == ptr
    assert M.memory_stats()["cached"] == s2["cached"] - (s1["allocated"] - base["allocated"])
    del y
    M.empty_cache()
    assert M.memory_stats()["cached"] == 0


@needs_gpu
def test_device_name_and_roundtrip():
    assert isinstance(M.device_name(), str) and M.device_name()
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(to_host(to_dev(x), x.shape), x)
    with pytest.raises(ValueError):
        M.from_numpy(np.zeros(4, dtype=np.float32), M.Array(5))


# ---------------------------------------------------------------------------
# compact / setitem
# ---------------------------------------------------------------------------

VIEWS = [
    # (buffer size, shape, strides, offset)
    (24, (4, 6), (1, 4), 0),  # transpose
    (60, (3, 4, 5), (20, 5, 1), 0),  # already compact
    (60, (3, 2, 5), (20, 10, 2), 1),  # stepped slice, odd offset
    (60, (3, 4, 5), (-20, 5, -1), 44),  # flipped axes
    (5, (3, 4, 5), (0, 0, 1), 0),  # broadcast
    (4 * 3 * 2 * 2 * 3 * 2 * 2, (2, 2, 3, 2, 2, 3, 4), (1, 2, 4, 12, 24, 48, 144), 0),  # 7-D
    (10, (1, 1, 7), (5, 3, 1), 3),  # size-1 dims with odd strides
]


@needs_gpu
@pytest.mark.parametrize("size,shape,strides,offset", VIEWS)
def test_compact_and_to_numpy(size, shape, strides, offset):
    flat = RNG.standard_normal(size).astype(np.float32)
    expect = ref_view(flat, shape, strides, offset)
    a = to_dev(flat)
    np.testing.assert_array_equal(M.to_numpy(a, list(shape), list(strides), offset), expect)
    out = M.Array(int(np.prod(shape)))
    M.compact(a, out, list(shape), list(strides), offset)
    np.testing.assert_array_equal(to_host(out, shape), expect)


@needs_gpu
@pytest.mark.parametrize("size,shape,strides,offset", [v for v in VIEWS if 0 not in v[2]])
def test_setitem(size, shape, strides, offset):
    n = int(np.prod(shape))
    flat = RNG.standard_normal(size).astype(np.float32)
    src = RNG.standard_normal(n).astype(np.float32)

    ref_out = R.Array(size)
    R.from_numpy(flat, ref_out)
    ref_src = R.Array(n)
    R.from_numpy(src, ref_src)
    R.ewise_setitem(ref_src, ref_out, list(shape), list(strides), offset)
    out = to_dev(flat)
    M.ewise_setitem(to_dev(src), out, list(shape), list(strides), offset)
    np.testing.assert_array_equal(to_host(out, (size,)), R.to_numpy(ref_out, [size], [1], 0))

    R.scalar_setitem(n, 2.5, ref_out, list(shape), list(strides), offset)
    M.scalar_setitem(n, 2.5, out, list(shape), list(strides), offset)
    np.testing.assert_array_equal(to_host(out, (size,)), R.to_numpy(ref_out, [size], [1], 0))


@needs_gpu
def test_strided_bounds_are_checked():
    a = to_dev(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError):
        M.compact(a, M.Array(4), [2, 2], [5, 3], 3)  # reaches element 11
    with pytest.raises(ValueError):
        M.compact(a, M.Array(4), [2, 2], [-5, 1], 0)  # reaches element -5
    with pytest.raises(ValueError):
        M.compact(a, M.Array(5), [2, 2], [2, 1], 0)  # out size mismatch
    with pytest.raises(ValueError):
        M.compact(a, M.Array(1), [1] * 9, [1] * 9, 0)  # more than 8 dims
    with pytest.raises(ValueError):
        M.ewise_setitem(M.Array(3), a, [2, 2], [2, 1], 0)  # source too small
    with pytest.raises(ValueError):  # span 4 * 2**62 wraps to 0: must not pass as in bounds
        M.compact(a, M.Array(5), [5], [2**62], 0)
    with pytest.raises(ValueError):
        M.scalar_setitem(5, 1.0, a, [5], [2**62], 0)


@needs_gpu
@pytest.mark.slow
def test_fill_view_near_32_bit_element_count():
    # n just under 2**32: the grid-stride index must not wrap around (16 GiB buffer).
    n = 2**32 - 1
    try:
        out = M.Array(n)
    except MemoryError:
        pytest.skip("not enough device memory for a 2**32-element buffer")
    M.fill(out, 0.0)
    M.scalar_setitem(n, 1.0, out, [n], [1], 0)
    tail = 1 << 21
    np.testing.assert_array_equal(M.to_numpy(out, [tail], [1], n - tail), np.ones(tail, np.float32))
    np.testing.assert_array_equal(M.to_numpy(out, [tail], [1], 0), np.ones(tail, np.float32))
    del out
    M.empty_cache()


# ---------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------

BINARY = {
    "add": np.add,
    "mul": np.multiply,
    "div": np.divide,
    "power": np.power,
    "maximum": np.maximum,
    "eq": lambda x, y: (x == y).astype(np.float32),
    "ge": lambda x, y: (x >= y).astype(np.float32),
}
UNARY = {"log": np.log, "exp": np.exp, "tanh": np.tanh}
SIZES = [1, 3, 5, 1023, 4097]


def misaligned(x, shift):
    """Device copy of x made by compacting from an offset that breaks 16-byte alignment."""
    buf = np.zeros(x.size + shift, dtype=np.float32)
    buf[shift:] = x
    out = M.Array(x.size)
    M.compact(to_dev(buf), out, [x.size], [1], shift)
    strided = M.Array(x.size)  # and once through the strided gather path
    M.compact(to_dev(np.repeat(buf, 2)), strided, [x.size], [2], 2 * shift)
    np.testing.assert_array_equal(to_host(strided, x.shape), x)
    return out


@needs_gpu
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ops(name, n):
    x = RNG.standard_normal(n).astype(np.float32)
    y = RNG.standard_normal(n).astype(np.float32)
    y[::3] = x[::3]  # exercise eq/ge equality and power with equal operands
    if name == "power":
        x[1::2] = np.abs(x[1::2])  # half valid, half negative base with fractional exponent
    x[-1] = np.nan if n > 2 else x[-1]
    shift = 1 + n % 3
    a, b, out = misaligned(x, shift), misaligned(y, 3), M.Array(n)
    with np.errstate(all="ignore"):
        expect = BINARY[name](x, y).astype(np.float32)
        getattr(M, "ewise_" + name)(a, b, out)
        np.testing.assert_allclose(to_host(out, (n,)), expect, rtol=1e-5, atol=1e-6)
        for val in (0.5, -1.5, 2.0):
            getattr(M, "scalar_" + name)(a, val, out)
            expect = BINARY[name](x, np.float32(val)).astype(np.float32)
            np.testing.assert_allclose(to_host(out, (n,)), expect, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_ops(name, n):
    x = (RNG.standard_normal(n) * 3).astype(np.float32)
    a, out = misaligned(x, 2), M.Array(n)
    getattr(M, "ewise_" + name)(a, out)
    with np.errstate(all="ignore"):
        expect = UNARY[name](x)
    np.testing.assert_allclose(to_host(out, (n,)), expect, rtol=1e-5, atol=1e-6)


@needs_gpu
def test_fill_and_size_checks():
    out = M.Array(7)
    M.fill(out, 3.25)
    np.testing.assert_array_equal(to_host(out, (7,)), np.full(7, 3.25, np.float32))
    with pytest.raises(ValueError):
        M.ewise_add(M.Array(7), M.Array(6), out)


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

REDUCE_SHAPES = [(1, 1), (5, 1), (3, 7), (1000, 16), (64, 17), (33, 2048), (7, 2049),
                 (3, 5000), (2, 100003), (1, 1 << 24)]


@needs_gpu
@pytest.mark.parametrize("rows,r", REDUCE_SHAPES)
def test_reductions(rows, r):
    x = RNG.random((rows, r), dtype=np.float32)
    a, out = to_dev(x), M.Array(rows)
    M.reduce_sum(a, out, r)
    np.testing.assert_allclose(to_host(out, (rows,)), x.sum(axis=1, dtype=np.float64), rtol=2e-5)
    M.reduce_max(a, out, r)
    np.testing.assert_array_equal(to_host(out, (rows,)), x.max(axis=1))


@needs_gpu
@pytest.mark.parametrize("r", [3, 100, 9000])
def test_reduce_max_propagates_nan_and_handles_negative(r):
    x = -RNG.random((4, r), dtype=np.float32) - 1.0
    x[2, r // 2] = np.nan
    out = M.Array(4)
    M.reduce_max(to_dev(x), out, r)
    np.testing.assert_array_equal(to_host(out, (4,)), x.max(axis=1))


# ---------------------------------------------------------------------------
# matmul ladder
# ---------------------------------------------------------------------------

KERNELS = list(range(len(M.matmul_kernel_names())))
MATMUL_SHAPES = [(1, 1, 1), (7, 7, 7), (13, 7, 65), (1, 13, 257), (65, 257, 13),
                 (257, 65, 257), (129, 200, 131), (1000, 3, 2048)]


@pytest.fixture
def kernel_selector():
    saved = M.get_matmul_kernel()
    yield M.set_matmul_kernel
    M.set_matmul_kernel(saved)


def check_close(got, expect, n):
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5 * max(n, 1) ** 0.5 * 4)


@needs_gpu
@pytest.mark.parametrize("m,n,p", MATMUL_SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_matmul_kernels(kernel_selector, kernel, m, n, p):
    kernel_selector(kernel)
    x = RNG.standard_normal((m, n)).astype(np.float32)
    y = RNG.standard_normal((n, p)).astype(np.float32)
    out = M.Array(m * p)
    M.matmul(to_dev(x), to_dev(y), out, m, n, p)
    check_close(to_host(out, (m, p)), x.astype(np.float64) @ y, n)


def bmm_case(kind, batch, m, n, p):
    """(a buffer, a strides, a offset, b buffer, b strides, b offset) for one layout."""
    def rand(size):
        return RNG.standard_normal(size).astype(np.float32)

    a_st, a_off, b_st, b_off = [m * n, n, 1], 0, [n * p, p, 1], 0
    a_size, b_size = batch * m * n, batch * n * p
    if kind == "a_transposed":
        a_st = [m * n, 1, m]
    elif kind == "b_transposed":
        b_st = [n * p, 1, n]
    elif kind == "both_transposed":
        a_st, b_st = [m * n, 1, m], [n * p, 1, n]
    elif kind == "broadcast_a":
        a_st, a_size = [0, n, 1], m * n
    elif kind == "broadcast_b":
        b_st, b_size = [0, p, 1], n * p
    elif kind == "padded_misaligned":  # row pitch n + 5, start 3 elements in
        a_st, a_off, a_size = [m * (n + 5), n + 5, 1], 3, 3 + batch * m * (n + 5)
        b_st, b_off, b_size = [n * (p + 1), p + 1, 1], 1, 1 + batch * n * (p + 1)
    elif kind == "flipped":
        a_st, a_off = [m * n, -n, 1], (m - 1) * n
        b_st, b_off = [n * p, p, -1], p - 1
    elif kind == "every_other":  # no unit stride in either operand
        a_st, a_size = [2 * m * 3 * n, 3 * n * 2, 3], batch * 2 * m * 3 * n
        b_st, b_size = [2 * n * 2 * p, 2, 2 * n], batch * 2 * n * 2 * p
    return rand(a_size), a_st, a_off, rand(b_size), b_st, b_off


BMM_KINDS = ["compact", "a_transposed", "b_transposed", "both_transposed", "broadcast_a",
             "broadcast_b", "padded_misaligned", "flipped", "every_other"]


@needs_gpu
@pytest.mark.parametrize("batch,m,n,p", [(3, 67, 45, 131), (2, 130, 9, 5), (1, 1, 300, 1)])
@pytest.mark.parametrize("kind", BMM_KINDS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bmm_strided(kernel_selector, kernel, kind, batch, m, n, p):
    kernel_selector(kernel)
    a, a_st, a_off, b, b_st, b_off = bmm_case(kind, batch, m, n, p)
    av = ref_view(a, (batch, m, n), a_st, a_off).astype(np.float64)
    bv = ref_view(b, (batch, n, p), b_st, b_off).astype(np.float64)
    expect = av @ bv
    out = M.Array(batch * m * p)
    M.bmm(to_dev(a), to_dev(b), out, batch, m, n, p, a_st, a_off, b_st, b_off)
    check_close(to_host(out, (batch, m, p)), expect, n)
    naive = M.Array(batch * m * p)
    M.bmm_naive(to_dev(a), to_dev(b), naive, batch, m, n, p, a_st, a_off, b_st, b_off)
    check_close(to_host(naive, (batch, m, p)), expect, n)


@needs_gpu
def test_matmul_edge_cases_and_selection():
    with pytest.raises(ValueError):
        M.set_matmul_kernel(len(KERNELS))
    out = M.Array(6)
    M.matmul(M.Array(0), M.Array(0), out, 2, 0, 3)  # empty inner dim: zeros
    np.testing.assert_array_equal(to_host(out, (6,)), np.zeros(6, np.float32))
    with pytest.raises(ValueError):  # b too small for (n, p)
        M.matmul(M.Array(6), M.Array(5), out, 2, 3, 2)
    with pytest.raises(ValueError):
        M.bmm(M.Array(6), M.Array(6), out, 1, 2, 3, 2, [6, 3], 0, [6, 2, 1], 0)
    # broadcast operands over one element: (2**62 + 1) * 4 outputs wraps to 4 in int64
    with pytest.raises(ValueError):
        M.bmm(M.Array(1), M.Array(1), M.Array(4), 1, 2**62 + 1, 1, 4, [0, 0, 0], 0, [0, 0, 0], 0)


@needs_gpu
@pytest.mark.parametrize("kernel", KERNELS)
def test_bmm_grid_limits(kernel_selector, kernel):
    # batch and row tiles beyond 65535 exceed grid y/z: the kernels loop over them.
    kernel_selector(kernel)
    batch, m, n, p = 70000, 2, 3, 2
    x = RNG.standard_normal((batch, m, n)).astype(np.float32)
    y = RNG.standard_normal((n, p)).astype(np.float32)
    out = M.Array(batch * m * p)
    M.bmm(to_dev(x), to_dev(y), out, batch, m, n, p, [m * n, n, 1], 0, [0, p, 1], 0)
    check_close(to_host(out, (batch, m, p)), x.astype(np.float64) @ y, n)
    m2 = 65536 * 8 + 3  # more than 65535 row blocks for the naive kernel (8 rows a block)
    x2 = RNG.standard_normal((m2, n)).astype(np.float32)
    out2 = M.Array(m2 * p)
    M.matmul(to_dev(x2), to_dev(y), out2, m2, n, p)
    check_close(to_host(out2, (m2, p)), x2.astype(np.float64) @ y, n)


def _twin(x):
    a = R.Array(x.size)
    R.from_numpy(np.ascontiguousarray(x, np.float32).reshape(-1), a)
    return a


@needs_gpu
@pytest.mark.parametrize("outer,reduce,inner", [(1, 1, 1), (3, 5, 7), (2, 130, 3), (1, 5000, 3), (1, 300, 257),
                                                (4, 64, 1), (1, 1 << 17, 32)])
def test_reduce_sum_middle_matches_twin(outer, reduce, inner):
    x = np.random.default_rng(3).standard_normal(outer * reduce * inner).astype(np.float32)
    out, ref = M.Array(outer * inner), R.Array(outer * inner)
    M.reduce_sum_middle(to_dev(x), out, outer, reduce, inner)
    R.reduce_sum_middle(_twin(x), ref, outer, reduce, inner)
    # The GPU splits long middle axes into chunks, so the order of additions differs.
    np.testing.assert_allclose(to_host(out, (outer * inner,)), ref.array, rtol=1e-4, atol=1e-4 * np.sqrt(reduce))


@needs_gpu
@pytest.mark.parametrize("op", ["add", "mul", "div"])
@pytest.mark.parametrize("swap", [False, True])
def test_ewise_rows_matches_twin(op, swap):
    rng = np.random.default_rng(4)
    full, row = rng.standard_normal(6 * 7).astype(np.float32), rng.uniform(0.5, 2, 20).astype(np.float32)
    out, ref = M.Array(42), R.Array(42)
    M.ewise_rows(op, to_dev(full), to_dev(row), 3, out, 7, swap)
    R.ewise_rows(op, _twin(full), _twin(row), 3, ref, 7, swap)
    np.testing.assert_array_equal(to_host(out, (42,)), ref.array)
    with pytest.raises(ValueError):
        M.ewise_rows(op, to_dev(full), to_dev(row), 14, out, 7, swap)
