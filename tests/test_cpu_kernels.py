"""CPU backend fast paths against their references.

Every optimised kernel in src/ (packed GEMM, dynamic-chunk threading, blocked
transpose in compact, vectorised reductions, the large-block cache) is checked
against numpy and the naive GEMM (``bmm_naive``) on odd shapes, transposed and
strided operands, broadcast batches, and with 1 and 2 threads. No timing.
The backend module is loaded directly, so these run even while the Python
package above it is being changed.
"""
import glob
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_cpu():
    # The package's module when needle imports (pybind11 refuses a second copy
    # of the same extension in one process); else the built .so by path.
    # NEEDLE_CPU_SO_DIR points the tests at another build of the module.
    so_dir = os.environ.get("NEEDLE_CPU_SO_DIR")
    if not so_dir:
        try:
            return importlib.import_module("needle.backend_ndarray.ndarray_backend_cpu")
        except Exception:
            so_dir = os.path.join(ROOT, "python", "needle", "backend_ndarray")
    so = sorted(glob.glob(os.path.join(so_dir, "ndarray_backend_cpu*.so")))
    if not so:
        pytest.skip("ndarray_backend_cpu is not built (run `make lib`)", allow_module_level=True)
    spec = importlib.util.spec_from_file_location("ndarray_backend_cpu", so[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cpu = _load_cpu()

THREADS = [1, 2]
RNG = np.random.default_rng(0)


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}thr")
def threads(request):
    before = cpu.get_num_threads()
    cpu.set_num_threads(request.param)
    yield request.param
    cpu.set_num_threads(before)


def to_dev(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    a = cpu.Array(x.size)
    cpu.from_numpy(x.ravel(), a)
    return a


def from_dev(a, shape):
    shape = list(shape)
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    return cpu.to_numpy(a, shape, strides, 0)


def strides_of(x):
    return [s // 4 for s in x.strides]


# ---- GEMM -------------------------------------------------------------------
ODD = [1, 2, 7, 13, 17, 33, 65, 257]
GEMM_SHAPES = [(m, k, n) for m in (1, 7, 13, 65) for k in (1, 7, 65) for n in (1, 13, 17, 33)] + [
    (257, 65, 129), (12, 384, 32), (25, 385, 47), (200, 777, 31), (14, 3, 16), (130, 1, 70),
    (385, 129, 2049), (8192 // 16, 147, 16), (128, 1152, 128), (100, 784, 100),
]


def ref_gemm(a, b):
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


def check_close(got, want, k):
    tol = 1e-5 * max(1.0, np.sqrt(k)) * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=tol)


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES, ids=lambda v: str(v))
def test_matmul_matches_numpy_and_naive(m, k, n, threads):
    A = RNG.standard_normal((m, k)).astype(np.float32)
    B = RNG.standard_normal((k, n)).astype(np.float32)
    a, b, out = to_dev(A), to_dev(B), cpu.Array(m * n)
    cpu.matmul(a, b, out, m, k, n)
    check_close(from_dev(out, (m, n)), ref_gemm(A, B), k)
    naive = cpu.Array(m * n)
    cpu.bmm_naive(a, b, naive, 1, m, k, n, [0, k, 1], 0, [0, n, 1], 0)
    check_close(from_dev(out, (m, n)), from_dev(naive, (m, n)), k)


@pytest.mark.parametrize("ta", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("tb", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("m,k,n", [(1, 13, 7), (13, 1, 17), (65, 257, 33), (7, 65, 1), (130, 70, 257), (33, 400, 16)])
def test_bmm_transposed_and_offset_operands(m, k, n, ta, tb, threads):
    # Operands are views into larger buffers: transposed, with an offset and
    # a padded leading dimension, read through their strides (no compact).
    batch = 3
    pad = 5
    As = RNG.standard_normal((batch, k, m + pad) if ta else (batch, m, k + pad)).astype(np.float32)
    Bs = RNG.standard_normal((batch, n, k + pad) if tb else (batch, k, n + pad)).astype(np.float32)
    Av = As[:, :, 2:2 + m].transpose(0, 2, 1) if ta else As[:, :, 2:2 + k]
    Bv = Bs[:, :, 1:1 + k].transpose(0, 2, 1) if tb else Bs[:, :, 1:1 + n]
    sa = strides_of(Av)
    sb = strides_of(Bv)
    oa, ob = 2, 1
    buf_a, buf_b = to_dev(As), to_dev(Bs)
    out, naive = cpu.Array(batch * m * n), cpu.Array(batch * m * n)
    cpu.bmm(buf_a, buf_b, out, batch, m, k, n, sa, oa, sb, ob)
    cpu.bmm_naive(buf_a, buf_b, naive, batch, m, k, n, sa, oa, sb, ob)
    want = np.stack([ref_gemm(Av[i], Bv[i]) for i in range(batch)])
    check_close(from_dev(out, (batch, m, n)), want, k)
    check_close(from_dev(out, (batch, m, n)), from_dev(naive, (batch, m, n)), k)


@pytest.mark.parametrize("batch,m,k,n", [(1, 5, 6, 7), (8, 33, 17, 65), (64, 20, 16, 20), (3, 300, 200, 100)])
def test_bmm_broadcast_batch(batch, m, k, n, threads):
    # b has batch stride 0 (one matrix for every batch entry), a is compact.
    A = RNG.standard_normal((batch, m, k)).astype(np.float32)
    B = RNG.standard_normal((k, n)).astype(np.float32)
    out = cpu.Array(batch * m * n)
    cpu.bmm(to_dev(A), to_dev(B), out, batch, m, k, n, [m * k, k, 1], 0, [0, n, 1], 0)
    check_close(from_dev(out, (batch, m, n)), ref_gemm(A, B), k)
    # and a broadcast along a (stride 0), b batched
    B3 = RNG.standard_normal((batch, k, n)).astype(np.float32)
    A2 = A[0]
    out2 = cpu.Array(batch * m * n)
    cpu.bmm(to_dev(A2), to_dev(B3), out2, batch, m, k, n, [0, k, 1], 0, [k * n, n, 1], 0)
    check_close(from_dev(out2, (batch, m, n)), np.stack([ref_gemm(A2, B3[i]) for i in range(batch)]), k)


@pytest.mark.parametrize("m,k,n,tb", [
    (50, 3000, 2900, False),   # B shared in two column groups (K x N > 8M floats)
    (300, 777, 300, True),     # shared B packed from a transposed view
    (97, 385, 2049, False),    # ragged slices, panels and NC blocks
    (256, 256, 256, False),    # thin chunks of C, some reading A in place
])
def test_gemm_shared_b_paths(m, k, n, tb, threads):
    # With more than one thread and C cut along M, B is packed once into a
    # buffer shared by the threads; repeated calls reuse the buffers.
    A = RNG.standard_normal((m, k)).astype(np.float32)
    B = RNG.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    Bv = B.T if tb else B
    want = ref_gemm(A, Bv)
    a, b = to_dev(A), to_dev(B)
    for _ in range(2):
        out = cpu.Array(m * n)
        cpu.bmm(a, b, out, 1, m, k, n, [0, k, 1], 0, [0] + strides_of(Bv), 0)
        check_close(from_dev(out, (m, n)), want, k)


@pytest.mark.parametrize("k", [383, 385, 766, 769, 1025, 2047, 2050])
@pytest.mark.parametrize("m,n", [(37, 45), (150, 96)])
def test_gemm_equal_depth_slabs(m, n, k, threads):
    # K is cut into slabs of equal depth (a multiple of 4, at most KC): the
    # last slab is shorter when the depth does not divide K; packed B panels
    # (private and shared) sit at multiples of that depth.
    A = RNG.standard_normal((m, k)).astype(np.float32)
    B = RNG.standard_normal((k, n)).astype(np.float32)
    out = cpu.Array(m * n)
    cpu.matmul(to_dev(A), to_dev(B), out, m, k, n)
    check_close(from_dev(out, (m, n)), ref_gemm(A, B), k)


def test_gemm_zero_k_and_empty():
    out = cpu.Array(6)
    cpu.fill(out, 7.0)
    cpu.bmm(cpu.Array(1), cpu.Array(1), out, 1, 2, 0, 3, [0, 0, 1], 0, [0, 3, 1], 0)
    np.testing.assert_array_equal(from_dev(out, (6,)), 0.0)
    cpu.bmm(cpu.Array(1), cpu.Array(12), cpu.Array(0), 1, 0, 4, 3, [0, 4, 1], 0, [0, 3, 1], 0)


def test_gemm_out_of_bounds_is_an_error():
    a, b, out = cpu.Array(12), cpu.Array(12), cpu.Array(9)
    with pytest.raises((ValueError, IndexError)):
        cpu.bmm(a, b, out, 1, 3, 4, 3, [0, 5, 1], 0, [0, 3, 1], 0)
    with pytest.raises((ValueError, IndexError)):
        cpu.matmul(a, b, out, 4, 4, 4)


def test_kernel_name():
    assert isinstance(cpu.sgemm_kernel_name(), str) and cpu.sgemm_kernel_name()


def _run_with_spin(spin, body):
    # Runs body in a fresh process whose NEEDLE_SPIN_US is spin, with `cpu`
    # loaded from this module's build and set to 2 threads; returns stdout.
    import subprocess
    import sys

    code = (
        "import importlib.util, time, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('ndarray_backend_cpu', {cpu.__file__!r})\n"
        "cpu = importlib.util.module_from_spec(spec); spec.loader.exec_module(cpu)\n"
        "cpu.set_num_threads(2)\n"
        "rng = np.random.default_rng(1)\n"
    ) + body
    env = dict(os.environ, NEEDLE_SPIN_US=spin)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_idle_workers_stop_spinning():
    # Idle workers poll for the next job for NEEDLE_SPIN_US (default 100 us),
    # then sleep: a process idle after 2-thread calls uses no CPU. (In a fresh
    # process: other libraries' thread pools may still be spinning here.)
    body = (
        "m = 256\n"
        "a, b, c = cpu.Array(m * m), cpu.Array(m * m), cpu.Array(m * m)\n"
        "for _ in range(20): cpu.matmul(a, b, c, m, m, m)\n"
        "time.sleep(0.05)\n"
        "t0 = time.process_time(); time.sleep(0.3); print(time.process_time() - t0)\n"
    )
    assert float(_run_with_spin(os.environ.get("NEEDLE_SPIN_US", ""), body)) < 0.05


@pytest.mark.parametrize("spin", ["0", "1", "5000", "junk"])
def test_spin_setting_from_environment(spin):
    # NEEDLE_SPIN_US: 0 = workers and caller block at once; results must not
    # depend on it (nor break on a value that is not a number).
    body = (
        "for m, k, n in [(300, 200, 260), (64, 64, 64), (513, 129, 257)]:\n"
        "    A = rng.standard_normal((m, k)).astype(np.float32); B = rng.standard_normal((k, n)).astype(np.float32)\n"
        "    a, b, c = cpu.Array(m * k), cpu.Array(k * n), cpu.Array(m * n)\n"
        "    cpu.from_numpy(A.ravel(), a); cpu.from_numpy(B.ravel(), b)\n"
        "    for _ in range(3):\n"
        "        cpu.matmul(a, b, c, m, k, n)\n"
        "        np.testing.assert_allclose(cpu.to_numpy(c, (m, n), (n, 1), 0), A @ B, rtol=1e-4, atol=1e-3)\n"
    )
    _run_with_spin(spin, body)


def test_threads_setting_round_trips():
    before = cpu.get_num_threads()
    cpu.set_num_threads(2)
    assert cpu.get_num_threads() == 2
    with pytest.raises(ValueError):
        cpu.set_num_threads(0)
    cpu.set_num_threads(before)


# ---- compact / setitem --------------------------------------------------------
def view_cases():
    base = RNG.standard_normal(6 * 65 * 257 + 11).astype(np.float32)
    yield "transpose2d", base[: 257 * 65].reshape(257, 65).T
    yield "transpose_offset", base[3: 3 + 130 * 70].reshape(130, 70)[:, 1:66].T
    yield "permute3d", base[: 6 * 65 * 257].reshape(6, 65, 257).transpose(2, 0, 1)
    yield "permute3d_b", base[: 6 * 65 * 257].reshape(6, 65, 257).transpose(0, 2, 1)
    yield "stepped", base[: 6 * 65 * 257].reshape(6, 65, 257)[::2, 1::3, ::5]
    yield "broadcast", np.broadcast_to(base[:65].reshape(65, 1), (65, 257))
    yield "broadcast_row", np.broadcast_to(base[:257], (13, 257))
    yield "flipped", base[: 65 * 257].reshape(65, 257)[::-1, ::-1]
    yield "small_transpose", base[:21].reshape(3, 7).T
    yield "size1", base[5:6].reshape(1, 1, 1)
    yield "im2col", np.lib.stride_tricks.as_strided(
        base[: 2 * 9 * 9 * 3], shape=(2, 7, 7, 3, 3, 3), strides=tuple(4 * s for s in (243, 27, 3, 27, 3, 1)))
    # short innermost runs (copied two dims per step): NCHW -> NHWC with C = 3, a small broadcast row
    yield "nchw_to_nhwc", base[: 5 * 3 * 33 * 17].reshape(5, 3, 33, 17).transpose(0, 2, 3, 1)
    yield "short_broadcast_row", np.broadcast_to(base[:5], (301, 5))


@pytest.mark.parametrize("case", list(range(13)))
def test_compact_views(case, threads):
    name, view = list(view_cases())[case]
    base = view.base
    while base.base is not None:
        base = base.base
    base = np.asarray(base).ravel()
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 4
    buf = to_dev(base)
    out = cpu.Array(view.size)
    cpu.compact(buf, out, list(view.shape), [s // 4 for s in view.strides], int(offset))
    np.testing.assert_array_equal(from_dev(out, view.shape), view, err_msg=name)


@pytest.mark.parametrize("shape,perm", [((257, 65), (1, 0)), ((7, 13, 65), (2, 1, 0)), ((1024, 1024), (1, 0)),
                                        ((3, 33, 17), (0, 2, 1))])
def test_setitem_through_permuted_view(shape, perm, threads):
    n = int(np.prod(shape))
    target = np.zeros(n, np.float32)
    view = target.reshape(shape).transpose(perm)
    src = RNG.standard_normal(view.shape).astype(np.float32)
    out = to_dev(target)
    cpu.ewise_setitem(to_dev(src), out, list(view.shape), [s // 4 for s in view.strides], 0)
    view[...] = src
    np.testing.assert_array_equal(from_dev(out, (n,)), target)
    cpu.scalar_setitem(view.size, 2.5, out, list(view.shape), [s // 4 for s in view.strides], 0)
    np.testing.assert_array_equal(from_dev(out, (n,)), 2.5)


def test_compact_out_of_bounds_is_an_error():
    with pytest.raises((ValueError, IndexError)):
        cpu.compact(cpu.Array(10), cpu.Array(10), [10, 2], [1, 10], 0)


# ---- elementwise / reductions ---------------------------------------------------
SIZES = [1, 7, 13, 65, 257, 4097, (1 << 15) + 3, (1 << 20) + 17]


@pytest.mark.parametrize("n", SIZES)
def test_elementwise_sizes(n, threads):
    x = RNG.standard_normal(n).astype(np.float32)
    y = RNG.standard_normal(n).astype(np.float32) + 3.0
    a, b, out = to_dev(x), to_dev(y), cpu.Array(n)
    for fn, ref in [(cpu.ewise_add, np.add), (cpu.ewise_mul, np.multiply), (cpu.ewise_div, np.divide),
                    (cpu.ewise_maximum, np.maximum)]:
        fn(a, b, out)
        np.testing.assert_allclose(from_dev(out, (n,)), ref(x, y), rtol=1e-6)
    cpu.scalar_add(a, 1.5, out)
    np.testing.assert_allclose(from_dev(out, (n,)), x + np.float32(1.5), rtol=1e-6)
    cpu.ewise_exp(a, out)
    np.testing.assert_allclose(from_dev(out, (n,)), np.exp(x), rtol=1e-5)
    cpu.fill(out, -2.0)
    np.testing.assert_array_equal(from_dev(out, (n,)), -2.0)


@pytest.mark.parametrize("n", [7, (1 << 15) + 3])
def test_scalar_power_fast_paths(n, threads):
    """The exponents with a fast path (and one without) against powf semantics."""
    x = np.abs(RNG.standard_normal(n)).astype(np.float32) + 0.1
    x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, -2.0]
    a, out = to_dev(x), cpu.Array(n)
    for p in (1.0, 2.0, 3.0, -1.0, -2.0, 0.5, -0.5, 1.5):
        cpu.scalar_power(a, p, out)
        with np.errstate(all="ignore"):
            want = np.array([np.float32(np.power(np.float64(v), p)) for v in x[:6]] + list(
                np.power(x[6:].astype(np.float64), p).astype(np.float32)), np.float32)
        if p == 0.5:
            want[1], want[3] = 0.0, np.inf  # powf: pow(-0, 0.5) = +0, pow(-inf, 0.5) = +inf
        if p == -0.5:
            want[1], want[3] = np.inf, 0.0
        got = from_dev(out, (n,))
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"power {p}")
        np.testing.assert_array_equal(np.signbit(got[:6]), np.signbit(want[:6]), err_msg=f"power {p}")


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 7), (1, 65), (1, (1 << 18) + 5), (1, (1 << 21) + 3), (7, 13),
                                       (257, 65), (65, 257), (4096, 3), (3, 100003)])
def test_reductions(rows, cols, threads):
    x = RNG.standard_normal((rows, cols)).astype(np.float32)
    a, out = to_dev(x), cpu.Array(rows)
    cpu.reduce_sum(a, out, cols)
    want = x.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(from_dev(out, (rows,)), want, rtol=1e-4, atol=1e-3 * np.sqrt(cols))
    cpu.reduce_max(a, out, cols)
    np.testing.assert_array_equal(from_dev(out, (rows,)), x.max(axis=1))


def test_reduce_max_propagates_nan():
    x = np.arange(300, dtype=np.float32).reshape(3, 100)
    x[1, 57] = np.nan
    out = cpu.Array(3)
    cpu.reduce_max(to_dev(x), out, 100)
    got = from_dev(out, (3,))
    assert got[0] == 99 and np.isnan(got[1]) and got[2] == 299


def test_large_buffers_are_reused_safely():
    # The block cache hands freed large buffers back: values must never leak
    # between arrays that are alive at the same time.
    n = (1 << 20) + 1
    arrays = []
    for v in range(4):
        a = cpu.Array(n)
        cpu.fill(a, float(v))
        arrays.append(a)
    for v, a in enumerate(arrays):
        assert np.all(from_dev(a, (n,)) == v)
    del arrays
    b = cpu.Array(n)
    cpu.fill(b, 9.0)
    assert np.all(from_dev(b, (n,)) == 9.0)


# ---- exp, log, tanh: vectorised paths against float64 numpy ---------------------
# Bound: at most MAX_ULP units in the last place of the correctly rounded float32
# result (float64 numpy rounded), over wide random ranges, random bit patterns (every
# exponent, denormals, inf, NaN) and the special values, which must match exactly.
MAX_ULP = 2.0
MATH = {"exp": np.exp, "log": np.log, "tanh": np.tanh}


def _math_inputs(op):
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, size=200_003, dtype=np.uint64).astype(np.uint32).view(np.float32)
    wide = {"exp": rng.uniform(-110, 95, 100_001), "log": np.abs(bits),
            "tanh": rng.uniform(-12, 12, 100_001)}[op].astype(np.float32)
    near = rng.uniform(-1, 1, 50_001).astype(np.float32)
    if op == "log":
        near = (near + 1.5).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38,
                        3.4028235e38, -3.4028235e38, 88.72283935546875, 88.72283172607422, -87.33654, -103.97208,
                        -103.97209, -104.0, 0.625, -0.625, 0.62499994, 9.0, -9.0, 44.0, 0.5, 2.0], np.float32)
    return np.concatenate([special, wide, near, bits])


def ulps(got, x, op):
    with np.errstate(all="ignore"):
        want64 = MATH[op](x.astype(np.float64))
        want = want64.astype(np.float32)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    # Non-finite results (inf, NaN) and zeros must match exactly, signs included.
    exact = ~np.isfinite(want) | ~np.isfinite(got) | (want == 0)
    assert same[exact].all() and (np.signbit(got[exact & same & ~np.isnan(got)])
                                  == np.signbit(want[exact & same & ~np.isnan(got)])).all(), \
        f"{op}: special values differ at x = {x[exact & ~same][:8]}: {got[exact & ~same][:8]} vs {want[exact & ~same][:8]}"
    fin = ~exact
    spacing = np.maximum(np.spacing(np.abs(want[fin])), np.float32(2.0**-149)).astype(np.float64)
    return np.abs(got[fin].astype(np.float64) - want64[fin]) / spacing


@pytest.mark.parametrize("op", sorted(MATH))
def test_transcendentals_within_ulp_bound(op, threads):
    x = _math_inputs(op)
    got = from_dev(_math(op, x), x.shape)
    err = ulps(got, x, op)
    assert err.max() <= MAX_ULP, f"{op}: {err.max():.2f} ulp at x = {x[~np.isnan(x)][np.argmax(err)]}"
    # tanh is odd and exp(-0) = 1: signs of zeros and saturation are exact
    if op == "tanh":
        big = from_dev(_math(op, np.array([-30, 30, -np.inf, np.inf, -0.0], np.float32)), (5,))
        assert list(big[:4]) == [-1, 1, -1, 1] and np.signbit(big[4])


@pytest.mark.parametrize("op", sorted(MATH))
@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 33, 1000])
def test_transcendentals_independent_of_position(op, n):
    """The ragged tail goes through the same code: element i's result does not depend on n."""
    x = np.linspace(0.01, 5, 1000).astype(np.float32)
    full = from_dev(_math(op, x), x.shape)
    np.testing.assert_array_equal(from_dev(_math(op, x[:n]), (n,)), full[:n])


@pytest.mark.parametrize("op", sorted(MATH))
def test_transcendental_reference_is_libm(op):
    x = _math_inputs(op)[:50_000]
    ref = cpu.Array(x.size)
    cpu.ewise_math_reference(op, to_dev(x), ref)
    assert ulps(from_dev(ref, x.shape), x, op).max() <= MAX_ULP


def _math(op, x):
    out = cpu.Array(x.size)
    getattr(cpu, f"ewise_{op}")(to_dev(x), out)
    return out
