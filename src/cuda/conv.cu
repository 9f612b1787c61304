// 2-D convolution (the backend function conv2d) for float32 and float64: a
// direct loop, one thread per output element, reading the image and the
// filter through their strides (no im2col buffer). The geometry is
// common/conv_geometry.h; table.cu checks every argument first. The fast CUDA
// path for training is the explicit im2col + tiled matmul of ops.Conv.
#include "common/conv_geometry.h"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

// out[b, p, q, j] = sum over taps inside the image and the group's channels.
template <typename T>
__global__ void conv2d_direct_kernel(ConvGeometry g, const T* x, const T* f, T* out, int64_t total) {
  const int64_t cog = g.cout / g.groups;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = idx % g.cout;
    int64_t r = idx / g.cout;
    const int64_t q = r % g.wo;
    r /= g.wo;
    const int64_t p = r % g.ho, b = r / g.ho;
    const T* xb = x + b * g.xs[0] + (j / cog) * g.cg * g.xs[3];
    const T* fj = f + j * g.fs[3];
    T acc = T(0);
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t h = p * g.sh + i * g.dh - g.pt;
      if (h < 0 || h >= g.h) continue;
      for (int64_t k = 0; k < g.kw; ++k) {
        const int64_t w = q * g.sw + k * g.dw - g.pl;
        if (w < 0 || w >= g.w) continue;
        const T* xp = xb + h * g.xs[1] + w * g.xs[2];
        const T* fp = fj + i * g.fs[0] + k * g.fs[1];
        for (int64_t c = 0; c < g.cg; ++c) acc += xp[c * g.xs[3]] * fp[c * g.fs[2]];
      }
    }
    out[b * g.os[0] + p * g.os[1] + q * g.os[2] + j * g.os[3]] = acc;
  }
}

}  // namespace

void launch_conv2d(const ConvGeometry& g, const Array& x, int64_t x_offset, const Array& w, int64_t w_offset,
                   Array& out) {
  const int64_t total = g.n * g.ho * g.wo * g.cout;
  if (total == 0) return;
  dispatch<kFusedMask>(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv2d_direct_kernel<T><<<grid_for(total), kThreads>>>(g, x.data<T>() + x_offset, w.data<T>() + w_offset,
                                                           out.data<T>(), total);
    CHECK_LAUNCH("conv2d_direct_kernel");
  });
}

}  // namespace cuda
}  // namespace needle
