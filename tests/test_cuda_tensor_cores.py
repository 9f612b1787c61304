"""The tensor-core matmul rungs on the GPU: 3 (WMMA) and 4 (mma.sync fed by a cp.async
pipeline), for float16 and bfloat16 with float32 accumulation.

Every product is compared with the float64 product of the same stored half values: the
result may differ by the one rounding to the half type plus float32 accumulation (at most
one float32 ulp per addition: tensor cores may truncate), so the bound per element is
u * |ref| + n * 2^-23 * (|A| @ |B|) with u the half type's unit roundoff (2^-8 bfloat16,
2^-11 float16). Each case also checks which rung actually ran
(``matmul_kernel_used``): a dtype, device or layout a rung does not take steps down the
ladder, and a test that passed on the fallback would prove nothing about the rung.
The file skips without the CUDA module; the cases that launch kernels skip without a GPU.
"""
import numpy as np
import pytest

M = pytest.importorskip("needle.backend_ndarray.ndarray_backend_cuda")
import needle as ndl  # noqa: E402
from needle import amp  # noqa: E402
from needle.backend_ndarray.dtypes import _BFLOAT16, to_numpy_dtype  # noqa: E402
from tc_layouts import layout, stageable  # noqa: E402

needs_gpu = pytest.mark.skipif(M.device_count() == 0, reason="no CUDA device visible")
NO_BF16 = pytest.mark.skipif(_BFLOAT16 is None, reason="bfloat16 needs ml_dtypes")
HALVES = [pytest.param("float16", id="float16"), pytest.param("bfloat16", id="bfloat16", marks=NO_BF16)]
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
RNG = np.random.default_rng(0)


@pytest.fixture
def kernel_selector():
    saved = M.get_matmul_kernel()
    yield M.set_matmul_kernel
    M.set_matmul_kernel(saved)


def tensor_cores():
    return M.device_capability() >= (8, 0)


def expected_rung(asked, dt, stageable_operands=True):
    """The ladder's rule: the highest rung at or below `asked` that takes the dtype, the
    device (3 and 4 need compute capability 8.0) and, for 4, the operands' layout."""
    if dt in UNIT_ROUNDOFF:
        if asked >= 3 and tensor_cores():
            return 4 if asked == 4 and stageable_operands else 3
        return min(asked, 1)
    return min(asked, 2 if dt == "float32" else 1)


def half_values(dt, size):
    """Random values in [-1, 1) stored in dt, as float64."""
    return RNG.uniform(-1, 1, size).astype(np.float32).astype(to_numpy_dtype(dt)).astype(np.float64)


def device_buffer(values, dt):
    a = M.Array(values.size, dt)
    M.from_numpy(np.ascontiguousarray(values.astype(to_numpy_dtype(dt))).reshape(-1), a)
    return a


def view(buf, batch, rows, cols, st, off):
    sb, sr, sc = st
    idx = off + np.arange(batch)[:, None, None] * sb + np.arange(rows)[:, None] * sr + np.arange(cols) * sc
    return buf[idx]


def assert_half_product(got, av, bv, dt):
    """got (batch, m, p) in dt against av @ bv in float64, within one rounding to dt plus
    float32 accumulation over n terms."""
    ref = av @ bv
    bound = UNIT_ROUNDOFF[dt] * np.abs(ref) + av.shape[-1] * 2.0 ** -23 * (np.abs(av) @ np.abs(bv))
    got = got.astype(np.float64)
    assert np.all(np.isfinite(got)), "non-finite outputs (an output never written?)"
    err = np.abs(got - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"at {worst}: got {got[worst]}, want {ref[worst]} (bound {bound[worst]:.3g})"


def run_bmm(dt, batch, m, n, p, a_kind, b_kind):
    """bmm of two operands laid out as a_kind / b_kind; -> (out, A view, B view, stageable)."""
    a_sb, a_sr, a_sc, a_off, a_size = layout(a_kind, batch, m, n)
    b_sb, b_sr, b_sc, b_off, b_size = layout(b_kind, batch, n, p)
    a, b = half_values(dt, a_size), half_values(dt, b_size)
    out = M.Array(batch * m * p, dt)
    M.fill(out, float("nan"))  # poisoned: an output the kernel never writes stays NaN
    M.bmm(device_buffer(a, dt), device_buffer(b, dt), out, batch, m, n, p, [a_sb, a_sr, a_sc], a_off,
          [b_sb, b_sr, b_sc], b_off)
    got = M.to_numpy(out, [batch, m, p], [m * p, p, 1], 0)
    av = view(a, batch, m, n, (a_sb, a_sr, a_sc), a_off)
    bv = view(b, batch, n, p, (b_sb, b_sr, b_sc), b_off)
    return got, av, bv, stageable(a_kind, batch, m, n) and stageable(b_kind, batch, n, p)


# ---------------------------------------------------------------------------
# the ladder's surface (no GPU needed)
# ---------------------------------------------------------------------------


def test_tensor_core_rungs_are_on_the_ladder_and_the_default():
    names = M.matmul_kernel_names()
    assert len(names) == 5 and names[3].startswith("tensor_core_wmma") and names[4].startswith("tensor_core_mma")
    assert M.get_matmul_kernel() == 4  # the top rung: each dtype runs the fastest it has
    with pytest.raises(ValueError):
        M.set_matmul_kernel(5)
    assert callable(M.matmul_kernel_used) and callable(M.device_capability)


# ---------------------------------------------------------------------------
# values, every rung, odd shapes
# ---------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (7, 13, 5), (130, 72, 136), (67, 45, 131), (129, 200, 257), (256, 264, 128),
          (1000, 8, 24), (1, 520, 1), (515, 1000, 264)]


@needs_gpu
@pytest.mark.parametrize("m,n,p", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("kernel", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("dt", HALVES)
def test_half_matmul_on_every_rung(kernel_selector, kernel, m, n, p, dt):
    kernel_selector(kernel)
    got, av, bv, ok = run_bmm(dt, 1, m, n, p, "compact", "compact")
    assert M.matmul_kernel_used() == expected_rung(kernel, dt, ok)
    assert_half_product(got, av, bv, dt)


KINDS = [("compact", "compact"), ("transposed", "compact"), ("compact", "transposed"),
         ("transposed", "transposed"), ("pitched", "pitched"), ("pitched", "pitched_transposed"),
         ("pitched_transposed", "pitched"), ("pitched_transposed", "pitched_transposed"),
         ("compact", "broadcast"), ("broadcast", "compact"), ("misaligned", "compact"), ("flipped", "compact"),
         ("compact", "every_other")]


BMM_SHAPES = [(3, 67, 45, 131), (2, 130, 72, 136), (2, 200, 96, 40)]


@needs_gpu
@pytest.mark.parametrize("batch,m,n,p", BMM_SHAPES, ids=["b" + "x".join(map(str, s)) for s in BMM_SHAPES])
@pytest.mark.parametrize("a_kind,b_kind", KINDS, ids=[f"{a}-{b}" for a, b in KINDS])
@pytest.mark.parametrize("kernel", [3, 4])
@pytest.mark.parametrize("dt", HALVES)
def test_half_bmm_layouts(kernel_selector, kernel, a_kind, b_kind, batch, m, n, p, dt):
    kernel_selector(kernel)
    got, av, bv, ok = run_bmm(dt, batch, m, n, p, a_kind, b_kind)
    assert M.matmul_kernel_used() == expected_rung(kernel, dt, ok)
    assert_half_product(got, av, bv, dt)


@needs_gpu
@pytest.mark.parametrize("batch,m,n,p", [(1, 64, 4096, 48), (3, 130, 2000, 40), (1, 576, 16384, 64)])
@pytest.mark.parametrize("dt", HALVES)
def test_half_matmul_split_k(kernel_selector, batch, m, n, p, dt):
    # few output tiles over a long k (a weight gradient's shape): rung 4 splits k over
    # several blocks and adds their float32 partial sums in a second pass
    kernel_selector(4)
    got, av, bv, ok = run_bmm(dt, batch, m, n, p, "compact", "compact")
    assert ok and M.matmul_kernel_used() == expected_rung(4, dt)
    assert_half_product(got, av, bv, dt)


@needs_gpu
@pytest.mark.parametrize("kernel", [3, 4])
@pytest.mark.parametrize("dt", HALVES)
def test_half_bmm_beyond_grid_limits(kernel_selector, kernel, dt):
    # a batch beyond grid z's 65535 (the kernels loop over it), B broadcast over it
    kernel_selector(kernel)
    got, av, bv, ok = run_bmm(dt, 70000, 2, 8, 8, "compact", "broadcast")
    assert ok and M.matmul_kernel_used() == expected_rung(kernel, dt)
    assert_half_product(got, av, bv, dt)
    # more than 65535 row tiles of rung 3 (64 rows each): grid y loops too
    got, av, bv, ok = run_bmm(dt, 1, 64 * 65536 + 3, 8, 8, "compact", "compact")
    assert M.matmul_kernel_used() == expected_rung(kernel, dt)
    assert_half_product(got, av, bv, dt)


@needs_gpu
@pytest.mark.parametrize("dt", ["float32", "float64", "int32"])
def test_other_dtypes_step_down_from_the_tensor_core_rungs(kernel_selector, dt):
    kernel_selector(4)
    x = RNG.integers(-3, 4, (9, 17)).astype(to_numpy_dtype(dt))
    y = RNG.integers(-3, 4, (17, 5)).astype(to_numpy_dtype(dt))
    out = M.Array(9 * 5, dt)
    M.matmul(device_buffer(x, dt), device_buffer(y, dt), out, 9, 17, 5)
    assert M.matmul_kernel_used() == expected_rung(4, dt)
    np.testing.assert_array_equal(M.to_numpy(out, [9, 5], [5, 1], 0), x @ y)  # small integers: exact


@needs_gpu
@pytest.mark.parametrize("dt", HALVES)
def test_half_matmul_propagates_inf_and_nan(kernel_selector, dt):
    kernel_selector(4)
    a = half_values(dt, 16 * 32).reshape(16, 32)
    b = half_values(dt, 32 * 16).reshape(32, 16)
    a[3, 5], b[7, 9] = np.inf, np.nan
    out = M.Array(16 * 16, dt)
    M.matmul(device_buffer(a, dt), device_buffer(b, dt), out, 16, 32, 16)
    got = M.to_numpy(out, [16, 16], [16, 1], 0).astype(np.float64)
    with np.errstate(invalid="ignore"):
        ref = a @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


# ---------------------------------------------------------------------------
# through NDArray: convolution and autocast
# ---------------------------------------------------------------------------


def rel_err(got, ref):
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


@needs_gpu
@pytest.mark.parametrize("dt", HALVES)
def test_conv_in_half_precision_runs_on_the_tensor_cores(kernel_selector, dt):
    torch = pytest.importorskip("torch")
    kernel_selector(4)
    dev = ndl.cuda()
    x = half_values(dt, 2 * 9 * 9 * 16).reshape(2, 9, 9, 16)  # NHWC
    w = half_values(dt, 3 * 3 * 16 * 24).reshape(3, 3, 16, 24)  # (kh, kw, C_in, C_out)
    g = half_values(dt, 2 * 9 * 9 * 24).reshape(2, 9, 9, 24)
    X = ndl.Tensor(x, device=dev, dtype=dt, requires_grad=True)
    W = ndl.Tensor(w, device=dev, dtype=dt, requires_grad=True)
    Y = ndl.ops.conv(X, W, stride=1, padding=1)
    assert Y.dtype == dt
    # im2col (2*9*9, 144) @ (144, 24): both compact with rows of a multiple of 8 halves
    assert M.matmul_kernel_used() == expected_rung(4, dt)
    (Y * ndl.Tensor(g, device=dev, dtype=dt)).sum().backward()

    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, padding=1)
    (ty * torch.tensor(g.transpose(0, 3, 1, 2))).sum().backward()
    limit = 1e-2 if dt == "bfloat16" else 2e-3  # one rounding to the half type, relative in norm
    assert rel_err(Y.numpy(), ty.detach().numpy().transpose(0, 2, 3, 1)) < limit
    assert rel_err(X.grad.numpy(), tx.grad.numpy().transpose(0, 2, 3, 1)) < limit
    assert rel_err(W.grad.numpy(), tw.grad.numpy().transpose(2, 3, 1, 0)) < limit


@needs_gpu
@pytest.mark.parametrize("dt", HALVES)
def test_autocast_linear_on_cuda_uses_the_tensor_cores(kernel_selector, dt):
    kernel_selector(4)
    dev = ndl.cuda()
    layer = ndl.nn.Linear(64, 40, bias=False, device=dev)  # (a bias add would promote to float32)
    x = RNG.standard_normal((48, 64)).astype(np.float32)
    X = ndl.Tensor(x, device=dev)
    with amp.autocast(dtype=dt):
        Y = layer(X)
    assert Y.dtype == dt
    assert M.matmul_kernel_used() == expected_rung(4, dt)
    Y.sum().backward()
    # the backward products run on the tensor cores too (rung 3 when dY is a broadcast view)
    assert M.matmul_kernel_used() in ((3, 4) if tensor_cores() else (1,))
    assert layer.weight.grad.dtype == "float32"  # master weights keep float32 gradients
    np_half = to_numpy_dtype(dt)
    xh = x.astype(np_half).astype(np.float64)
    wh = layer.weight.numpy().astype(np.float32).astype(np_half).astype(np.float64)
    limit = 1e-2 if dt == "bfloat16" else 2e-3
    assert rel_err(Y.numpy(), xh @ wh) < limit
    # with dY = 1 every column of dW is the column sums of the half inputs
    assert rel_err(layer.weight.grad.numpy(), np.broadcast_to(xh.sum(0)[:, None], wh.shape)) < limit
