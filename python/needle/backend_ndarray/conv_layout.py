"""Layout planning for the backends' ``conv2d``: a pure function of the image view.

The implicit-GEMM convolution packs its image panel by panel, copying runs
of consecutive elements. It has two orders of output rows, and with them
several ways to find such runs:

- channels: an image with unit channel stride (NHWC, as every layer's
  activations are) is read one pixel's channels at a time; the output rows
  are (n, ho, wo), the output is NHWC.
- width: an image with unit w stride (an NCHW batch seen through its NHWC
  view, as nn.Conv hands it over) is read along image rows; NHWC output.
- batch: an image whose BATCH axis has unit stride is read one pixel of
  consecutive images at a time; the output rows are (ho, wo, n), so the
  output is stored (ho, wo, n, cout) and handed out as a permuted view. The
  filter gradient is such a convolution: the forward image with its channel
  and batch axes swapped (a view), convolved with the output gradient; its
  result, stored (kh, kw, c, cout), is then exactly the filter's layout.

Any other image (no unit stride along c, w or n) is compacted first.
"""

NHWC = (0, 1, 2, 3)
# Memory order of the output's axes for batch-ordered rows: (ho, wo, n, cout).
BATCH_ROWS = (1, 2, 0, 3)


def conv_layout(x_shape, x_strides):
    """(compact_first, out_order) for a conv2d of the image view (n, h, w, c) with element
    strides ``x_strides``: whether to compact the image before the call, and the order of the
    output's axes in memory (slowest first; NHWC or BATCH_ROWS)."""
    n, _, w, c = x_shape
    if c == 1 or x_strides[3] == 1:
        return False, NHWC
    if n == 1 or x_strides[0] == 1:
        return False, BATCH_ROWS
    return not (w == 1 or x_strides[2] == 1), NHWC
