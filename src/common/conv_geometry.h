// The geometry of one 2-D convolution over strided views, shared by the CPU
// (cpu/conv.cc) and CUDA (cuda/conv.cu) kernels of the backend function
// `conv2d` (see python/needle/backend_ndarray/ndarray_backend_numpy.py).
// Plain data, free of pybind11 (the CUDA kernel files include it).
#pragma once
#include <cstdint>
#include <vector>

namespace needle {

// Strides in elements, any sign; offsets are applied to the pointers.
//   image x (n, h, w, c) at strides xs, filter f (kh, kw, cg, cout) at fs,
//   out (n, ho, wo, cout) at os; cg = c / groups, cog = cout / groups;
//   out[b, p, q, g cog + j] = sum_{i, k, ch} x[b, p sh + i dh - pt, q sw + k dw - pl, g cg + ch]
//                                            * f[i, k, ch, g cog + j],
// where taps outside the image read zero. The output size (ho, wo) is the
// caller's: it fixes how far the bottom and right padding reach.
struct ConvGeometry {
  int64_t n, h, w, c, xs[4];
  int64_t kh, kw, cg, cout, fs[4];
  int64_t ho, wo, os[4];
  int64_t sh, sw, pt, pl, dh, dw, groups;
};

// The geometry of a conv2d call whose arguments check_conv2d (checks.h) accepted.
using Dims = std::vector<int64_t>;
inline ConvGeometry conv_geometry(const Dims& x_shape, const Dims& x_strides, const Dims& w_shape,
                                  const Dims& w_strides, const Dims& out_shape, const Dims& out_strides,
                                  const Dims& stride, const Dims& padding, const Dims& dilation, int64_t groups) {
  ConvGeometry g{};
  g.n = x_shape[0], g.h = x_shape[1], g.w = x_shape[2], g.c = x_shape[3];
  g.kh = w_shape[0], g.kw = w_shape[1], g.cg = w_shape[2], g.cout = w_shape[3];
  g.ho = out_shape[1], g.wo = out_shape[2];
  for (int a = 0; a < 4; ++a) {
    g.xs[a] = x_strides[a];
    g.fs[a] = w_strides[a];
    g.os[a] = out_strides[a];
  }
  g.sh = stride[0], g.sw = stride[1], g.pt = padding[0], g.pl = padding[1];
  g.dh = dilation[0], g.dw = dilation[1], g.groups = groups;
  return g;
}

}  // namespace needle
