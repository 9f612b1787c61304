"""The implicit-GEMM convolution (the backends' ``conv2d``) against its references.

The CPU kernel is checked against the numpy twin (the spec: an explicit im2col
product) on shapes large enough to take every path of the engine: chunks of rows
shared out to threads, the K-split for few-row products, filters packed in
several ranges, every packing layout (images with unit channel, w or batch
stride, and none), padded convolutions split into boxes of outputs that read
the same taps (rows written through pointers), the
narrow register tile, groups, float64, and outputs the kernel can only reach
through a scratch copy; with 1 and 2 threads. The Conv op is checked with the
implicit path against the explicit im2col path on ResNet9's layers (forward
and both gradients). No timing.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import needle as ndl
from devices import nd_only
from needle.backend_ndarray import ndarray_backend_numpy as twin
from needle.backend_ndarray.conv_layout import BATCH_ROWS, NHWC, conv_layout

pytestmark = nd_only

cpu = ndl.cpu().mod if ndl.cpu().enabled() else None
needs_cpu = pytest.mark.skipif(cpu is None, reason="cpu backend not built")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def threads(request):
    before = cpu.get_num_threads()
    cpu.set_num_threads(request.param)
    yield request.param
    cpu.set_num_threads(before)


# ---- the layout planner ----------------------------------------------------------------
@pytest.mark.parametrize("shape, strides, expected", [
    ((8, 5, 5, 16), (400, 80, 16, 1), (False, NHWC)),  # NHWC activations: as they are
    ((16, 5, 5, 8), (1, 80, 16, 400), (False, BATCH_ROWS)),  # channels and batch swapped (filter gradient)
    ((8, 5, 5, 3), (75, 5, 1, 25), (False, NHWC)),  # a permuted NCHW batch: read along w
    ((8, 5, 5, 3), (75, 1, 5, 25), (True, NHWC)),  # no unit stride along c, w or n: compacted first
    ((8, 5, 5, 1), (25, 5, 1, 25), (False, NHWC)),  # one channel: its stride does not matter
    ((1, 5, 5, 3), (75, 1, 5, 25), (False, BATCH_ROWS)),  # one image: nor does the batch stride
])
def test_conv_layout(shape, strides, expected):
    assert conv_layout(shape, strides) == expected


# ---- the CPU kernel against the twin -----------------------------------------------------
def _compact_strides(shape, order):
    """Strides of an array of ``shape`` stored with its axes in ``order`` (slowest first)."""
    strides, step = [0] * len(shape), 1
    for ax in reversed(order):
        strides[ax] = step
        step *= shape[ax]
    return strides


def _run_both(dtype, x_shape, x_order, w_shape, stride, padding, dilation, groups, out_order, rng):
    n, h, w, c = x_shape
    kh, kw, cg, cout = w_shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out_shape = [n, ho, wo, cout]
    x = rng.standard_normal(n * h * w * c + 3)
    f = rng.standard_normal(kh * kw * cg * cout)
    args = ([n, h, w, c], _compact_strides(x_shape, x_order), 3, list(w_shape), _compact_strides(w_shape, (0, 1, 2, 3)),
            0, out_shape, _compact_strides(out_shape, out_order), list(stride), list(padding), list(dilation), groups)
    results = []
    for mod in (cpu, twin):
        bx, bf, bo = mod.Array(x.size, dtype), mod.Array(f.size, dtype), mod.Array(n * ho * wo * cout, dtype)
        mod.from_numpy(x.astype(dtype), bx)
        mod.from_numpy(f.astype(dtype), bf)
        mod.fill(bo, float("nan"))
        mod.conv2d(bx, bf, bo, *args)
        results.append(mod.to_numpy(bo, [bo.size], [1], 0))
    return results


# (x_shape, x axis order in memory, w_shape, stride, padding, dilation, groups, out axis order)
ENGINE_CASES = {
    "resnet9-conv32-32": ((32, 4, 4, 32), NHWC, (3, 3, 32, 32), (1, 1), (1, 1), (1, 1), 1, NHWC),
    "first-layer-narrow": ((16, 32, 32, 3), NHWC, (7, 7, 3, 16), (4, 4), (3, 3), (1, 1), 1, NHWC),
    "ragged-rows-and-cols": ((3, 9, 7, 20), NHWC, (3, 2, 20, 37), (1, 2), (2, 0), (1, 1), 1, NHWC),
    "groups-dilation": ((8, 16, 16, 64), NHWC, (3, 3, 16, 96), (1, 1), (1, 1), (2, 2), 4, NHWC),
    "deep-k-two-ranges": ((2, 6, 6, 768), NHWC, (3, 3, 768, 200), (1, 1), (1, 1), (1, 1), 1, NHWC),
    "filter-gradient-batch-unit": ((32, 4, 4, 128), (3, 1, 2, 0), (4, 4, 128, 32), (1, 1), (1, 1), (1, 1), 1,
                                   BATCH_ROWS),
    "filter-gradient-few-rows": ((3, 32, 32, 64), NHWC, (8, 8, 64, 16), (1, 1), (3, 3), (4, 4), 1, BATCH_ROWS),
    "nchw-image-strided-conv": ((16, 32, 32, 3), (0, 3, 1, 2), (7, 7, 3, 16), (4, 4), (3, 3), (1, 1), 1, NHWC),
    "nchw-image-stride-one": ((4, 12, 12, 8), (0, 3, 1, 2), (3, 3, 8, 24), (1, 1), (1, 1), (1, 1), 1, NHWC),
    "filter-gradient-of-nchw-batch": ((3, 32, 32, 64), (3, 0, 1, 2), (8, 8, 64, 16), (1, 1), (3, 3), (4, 4), 1,
                                      NHWC),
    "batch-rows-gathered": ((3, 16, 16, 64), (3, 0, 1, 2), (8, 8, 64, 16), (1, 1), (3, 3), (2, 2), 1, BATCH_ROWS),
    "padding-only-outputs": ((2, 3, 3, 4), NHWC, (1, 1, 4, 5), (1, 1), (2, 2), (1, 1), 1, NHWC),
    "boxes-batch-rows": ((16, 5, 6, 24), (3, 1, 2, 0), (3, 3, 24, 20), (1, 1), (1, 1), (1, 1), 1, BATCH_ROWS),
    "strided-image-scratch-out": ((4, 9, 8, 12), (0, 3, 1, 2), (2, 3, 12, 24), (2, 1), (1, 1), (1, 1), 1,
                                  (3, 1, 0, 2)),
    # A few images with a deep filter, read in runs (the filter gradient's views of NHWC and
    # NCHW batches, NCHW images): the direct loops (cpu/conv_direct.cc). "filter-gradient-
    # of-nchw-batch" and "batch-rows-gathered" above take them too.
    "few-images-first-layer-filter-gradient": ((3, 32, 32, 128), (3, 1, 2, 0), (8, 8, 128, 16), (1, 1), (3, 3),
                                               (4, 4), 1, NHWC),
    "few-images-one-image": ((1, 10, 9, 128), (3, 1, 2, 0), (3, 3, 128, 32), (1, 1), (1, 1), (1, 1), 1, NHWC),
    "few-images-four-strided-dilated": ((4, 20, 17, 48), (3, 1, 2, 0), (5, 5, 48, 16), (2, 3), (2, 1), (1, 2), 1,
                                        BATCH_ROWS),
    "few-images-negative-padding": ((2, 24, 24, 64), (3, 1, 2, 0), (4, 4, 64, 8), (1, 1), (-1, 2), (1, 1), 1,
                                    NHWC),
    "few-images-nchw": ((2, 8, 8, 512), (0, 3, 1, 2), (3, 3, 512, 16), (1, 1), (1, 1), (1, 1), 1, NHWC),
    "few-images-nchw-strided-dilated": ((3, 11, 13, 192), (0, 3, 1, 2), (3, 2, 192, 8), (2, 1), (0, 1), (2, 1), 1,
                                        NHWC),
    # Images of 1-4 channels, one at a time ("first-layer-narrow" and "nchw-image-strided-conv"
    # above take this path too).
    "few-channels-nchw-one-channel": ((8, 28, 28, 1), (0, 3, 1, 2), (5, 5, 1, 32), (1, 1), (2, 2), (1, 1), 1, NHWC),
    "few-channels-nhwc-dilated-cropped": ((6, 19, 23, 4), NHWC, (3, 5, 4, 8), (2, 1), (-1, 2), (2, 1), 1, NHWC),
}


@needs_cpu
@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_conv2d_matches_twin(case, dtype, threads):
    rng = np.random.default_rng(sorted(ENGINE_CASES).index(case))
    got, want = _run_both(dtype, *ENGINE_CASES[case], rng)
    tol = 2e-4 if dtype == "float32" else 1e-10
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


# ---- the Conv op: implicit against im2col ------------------------------------------------
RESNET9_LAYERS = [(3, 16, 7, 4, 32), (16, 32, 3, 2, 8), (32, 32, 3, 1, 4), (32, 64, 3, 2, 4), (64, 128, 3, 2, 2),
                  (128, 128, 3, 1, 1)]


def _conv_fwd_bwd(algorithm, x, w, g, stride, padding, device, dtype):
    previous = ndl.ops.set_conv_algorithm(algorithm)
    try:
        X = ndl.Tensor(x, device=device, dtype=dtype)
        W = ndl.Tensor(w, device=device, dtype=dtype)
        out = ndl.conv(X, W, stride=stride, padding=padding)
        out.backward(ndl.Tensor(g, device=device, dtype=dtype))
        return out.numpy(), X.grad.numpy(), W.grad.numpy()
    finally:
        ndl.ops.set_conv_algorithm(previous)


@needs_cpu
@pytest.mark.parametrize("layer", RESNET9_LAYERS, ids=lambda l: f"conv{l[0]}-{l[1]}k{l[2]}s{l[3]}@{l[4]}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_op_implicit_matches_im2col(layer, dtype, threads):
    cin, cout, k, s, size = layer
    rng = np.random.default_rng(cin + cout)
    n = 24
    x = rng.standard_normal((n, size, size, cin))
    w = rng.standard_normal((k, k, cin, cout)) * 0.1
    ho = (size + 2 * (k // 2) - k) // s + 1
    g = rng.standard_normal((n, ho, ho, cout))
    got = _conv_fwd_bwd("implicit", x, w, g, s, k // 2, ndl.cpu(), dtype)
    want = _conv_fwd_bwd("im2col", x, w, g, s, k // 2, ndl.cpu(), dtype)
    tol = 1e-4 if dtype == "float32" else 1e-10
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


@needs_cpu
def test_conv_op_reads_nchw_batches_without_grad_copies():
    """nn.Conv's NCHW input is a permuted view; the implicit path gives the im2col answer."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 11, 11)).astype(np.float32)
    outs = []
    for algorithm in ("implicit", "im2col"):
        np.random.seed(0)
        layer = ndl.nn.Conv(3, 8, 5, stride=2)
        previous = ndl.ops.set_conv_algorithm(algorithm)
        try:
            X = ndl.Tensor(x, requires_grad=True)
            y = layer(X)
            (y * y).sum().backward()
            outs.append((y.numpy(), X.grad.numpy(), layer.weight.grad.numpy()))
        finally:
            ndl.ops.set_conv_algorithm(previous)
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_algorithm_setting_is_checked():
    with pytest.raises(ValueError, match="conv algorithm"):
        ndl.ops.set_conv_algorithm("winograd")
    assert ndl.ops.get_conv_algorithm() in ndl.ops.CONV_ALGORITHMS


@pytest.mark.parametrize("device", [pytest.param(ndl.cpu(), id="cpu"), pytest.param(ndl.cpu_numpy(), id="cpu_numpy")])
def test_ndarray_conv2d_rejects_bad_operands(device):
    if not device.enabled():
        pytest.skip("device not built")
    x = ndl.NDArray(np.zeros((2, 5, 5, 4), np.float32), device=device)
    w = ndl.NDArray(np.zeros((3, 3, 2, 6), np.float32), device=device)
    with pytest.raises(ValueError):  # channels do not fit groups=1
        x.conv2d(w)
    with pytest.raises(ValueError):  # kernel larger than the padded image
        x.conv2d(ndl.NDArray(np.zeros((7, 7, 4, 6), np.float32), device=device))
    with pytest.raises(TypeError):
        x.conv2d(ndl.NDArray(np.zeros((3, 3, 4, 6)), device=device, dtype="float64"))
    with pytest.raises(TypeError):  # integer images take the im2col path, not conv2d
        ndl.NDArray(np.zeros((2, 5, 5, 4)), device=device, dtype="int32").conv2d(
            ndl.NDArray(np.zeros((3, 3, 4, 6)), device=device, dtype="int32"))


# ---- memory: no im2col matrix --------------------------------------------------------------
_MEMORY_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {python!r})
    import numpy as np
    import needle as ndl

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) * 1024

    ndl.ops.set_conv_algorithm({algorithm!r})
    x = ndl.Tensor(np.ones((8, 40, 40, 32), np.float32))
    w = ndl.Tensor(np.ones((5, 5, 32, 32), np.float32) * 0.01)
    base = rss("VmRSS")
    ndl.conv(x, w, padding=2).sum().backward()
    print(rss("VmHWM") - base)
""")


@needs_cpu
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_implicit_conv_allocates_no_im2col_matrix():
    """Forward + backward of a 5x5 conv on (8, 40, 40, 32): the im2col matrix would be
    8*40*40 x 800 floats (39 MiB); the arrays the step must hold (x, out, the gradients) are
    1.6 MiB each. The explicit path's peak includes the matrix; the implicit one's does not."""
    im2col_bytes = 8 * 40 * 40 * 800 * 4
    peaks = {}
    for algorithm in ("implicit", "im2col"):
        code = _MEMORY_CHILD.format(python=os.path.join(ROOT, "python"), algorithm=algorithm)
        env = dict(os.environ, NEEDLE_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        peaks[algorithm] = int(out.stdout.split()[-1])
    assert peaks["im2col"] > im2col_bytes, peaks
    assert peaks["implicit"] < im2col_bytes / 2, peaks
