// 2-D convolutions that a GEMM does badly, as direct loops (see conv.h): few output
// channels over either a few images with a deep filter, or images of 1-4 channels.
//
// Both are a first layer's: its filter gradient is computed (ops_conv) as the
// convolution of the image with its batch and channel axes swapped (3 "images" of 128
// "channels") with the output gradient as the filter (an 8x8 map of 128 channels), 3 x 7
// x 7 outputs; its forward convolves 128 images of 3 channels. As an implicit GEMM each
// is a product with 16 columns whose packing copies every im2col element for only 16
// multiply-adds: the 7x7 stride-4 layer ran at 40 (filter gradient) and 60 (forward)
// GFLOP/s. Here a block of QB neighbouring outputs of one row keeps the sums of all its
// images in registers, so each filter vector loaded serves QB x n of them, and the image
// is read from a zero-padded copy laid out (channel, row, column, image), where the QB x
// n values a tap needs are one contiguous run.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/conv_geometry.h"
#include "conv.h"
#include "threads.h"

namespace needle {
namespace cpu {

namespace {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

// Outputs per block: as many as keep the sums within ~24 vector registers.
template <typename T, int NB, int CO>
constexpr int block_width() {
  constexpr int per_out = NB * ((CO * int(sizeof(T)) + kVecBytes - 1) / kVecBytes);
  return std::max(1, std::min(8, 24 / per_out));
}

// The padded image: xp[ch][r][c][b] for the rows and columns the outputs read (zero
// outside the image), plus slack columns so that a block may run past wo. Its memory
// is the calling thread's and is kept for the next call (a fresh 2 MiB buffer cost
// more in page faults than the copy).
template <typename T>
struct PaddedImage {
  const T* data;
  int64_t rows, cols;  // padded extents
};

template <typename T, int NB>
PaddedImage<T> pad_image(const ConvGeometry& s, const T* x, int64_t slack_cols) {  // s.n == NB
  static thread_local std::vector<T> storage;
  PaddedImage<T> pi;
  pi.rows = (s.ho - 1) * s.sh + (s.kh - 1) * s.dh + 1;
  pi.cols = (s.wo - 1) * s.sw + (s.kw - 1) * s.dw + 1 + slack_cols;
  const size_t size = size_t(s.cg * pi.rows * pi.cols * NB);
  if (storage.size() < size) storage.resize(size);
  T* const base = storage.data();
  pi.data = base;
  // Padded row r reads image row r - pt (when inside); likewise columns.
  const int64_t r0 = std::max<int64_t>(0, s.pt), r1 = std::max(r0, std::min(pi.rows, s.h + s.pt));
  const int64_t c0 = std::max<int64_t>(0, s.pl), c1 = std::max(c0, std::min(pi.cols, s.w + s.pl));
  const int64_t row_len = pi.cols * NB;
  parallel_for(s.cg, [&](int64_t ch) {
    T* plane = base + ch * pi.rows * row_len;
    std::fill(plane, plane + r0 * row_len, T(0));
    for (int64_t r = r0; r < r1; ++r) {
      T* dst = plane + r * row_len;
      const T* src = x + ch * s.xs[3] + (r - s.pt) * s.xs[1] + (c0 - s.pl) * s.xs[2];
      std::fill(dst, dst + c0 * NB, T(0));
      T* d = dst + c0 * NB;
      if (s.xs[2] == NB && (s.xs[0] == 1 || NB == 1)) {  // the row is one run
        std::memcpy(d, src, size_t((c1 - c0) * NB) * sizeof(T));
      } else if (s.xs[2] == 1) {  // a run per image (planes of an NCHW batch), interleaved
        for (int64_t c = 0; c < c1 - c0; ++c)
          for (int b = 0; b < NB; ++b) d[c * NB + b] = src[b * s.xs[0] + c];
      } else {
        for (int64_t c = 0; c < c1 - c0; ++c)
          for (int b = 0; b < NB; ++b) d[c * NB + b] = src[b * s.xs[0] + c * s.xs[2]];
      }
      std::fill(dst + c1 * NB, dst + row_len, T(0));
    }
    std::fill(plane + r1 * row_len, plane + pi.rows * row_len, T(0));
  });
  return pi;
}

// A machine vector of T (GCC's vector extension): the sums below are arrays of these
// with indices fixed at compile time, so they live in registers.
template <typename T>
using VecOf __attribute__((vector_size(kVecBytes))) = T;

// out[b, p, q0 + j, :] for j < qb (<= QB) and every image b < NB.
template <typename T, int NB, int CO, int QB>
void output_block(const ConvGeometry& s, const PaddedImage<T>& pi, const T* f, T* out, int64_t p, int64_t q0,
                  int64_t qb) {
  using V = VecOf<T>;
  constexpr int L = kVecBytes / int(sizeof(T));
  static_assert(CO % L == 0, "output channels are whole vectors");
  constexpr int CV = CO / L;
  V acc[QB][NB][CV];
#pragma GCC unroll 8
  for (int j = 0; j < QB; ++j)
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b)
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[j][b][c] = V{};
  const int64_t step = s.sw * NB;  // between neighbouring outputs in the padded row
  for (int64_t ch = 0; ch < s.cg; ++ch) {
    for (int64_t i = 0; i < s.kh; ++i) {
      const T* row = pi.data + ((ch * pi.rows + p * s.sh + i * s.dh) * pi.cols + q0 * s.sw) * NB;
      const T* frow = f + i * s.fs[0] + ch * s.fs[2];
      for (int64_t k = 0; k < s.kw; ++k) {
        const T* xk = row + k * s.dw * NB;
        V fv[CV];
#pragma GCC unroll 4
        for (int c = 0; c < CV; ++c) std::memcpy(&fv[c], frow + k * s.fs[1] + c * L, sizeof(V));
#pragma GCC unroll 8
        for (int j = 0; j < QB; ++j) {
#pragma GCC unroll 4
          for (int b = 0; b < NB; ++b) {
            const T xv = xk[j * step + b];
#pragma GCC unroll 4
            for (int c = 0; c < CV; ++c) acc[j][b][c] += xv * fv[c];
          }
        }
      }
    }
  }
  for (int64_t j = 0; j < qb; ++j)
    for (int b = 0; b < NB; ++b) {
      T* o = out + b * s.os[0] + p * s.os[1] + (q0 + j) * s.os[2];
      for (int c = 0; c < CV; ++c) std::memcpy(o + c * L, &acc[j][b][c], sizeof(V));
    }
}

// A few images at once: one padded copy of all of them, output blocks shared out.
template <typename T, int NB, int CO>
void run(const ConvGeometry& s, const T* x, const T* f, T* out) {
  constexpr int QB = block_width<T, NB, CO>();
  const PaddedImage<T> pi = pad_image<T, NB>(s, x, int64_t(QB) * s.sw);
  const int64_t blocks = (s.wo + QB - 1) / QB;
  parallel_for(s.ho * blocks, [&](int64_t t) {
    const int64_t p = t / blocks, q0 = (t % blocks) * QB;
    output_block<T, NB, CO, QB>(s, pi, f, out, p, q0, std::min<int64_t>(QB, s.wo - q0));
  });
}

// Many images of few channels (a first layer's forward): images shared out, each padded
// into its thread's memory (a few KiB) and all its output blocks computed from there.
template <typename T, int CO>
void run_per_image(const ConvGeometry& s, const T* x, const T* f, T* out) {
  constexpr int QB = block_width<T, 1, CO>();
  ConvGeometry one = s;
  one.n = 1;
  const int64_t blocks = (s.wo + QB - 1) / QB;
  parallel_for(s.n, [&](int64_t b) {
    const PaddedImage<T> pi = pad_image<T, 1>(one, x + b * s.xs[0], int64_t(QB) * s.sw);
    T* ob = out + b * s.os[0];
    for (int64_t t = 0; t < s.ho * blocks; ++t) {
      const int64_t p = t / blocks, q0 = (t % blocks) * QB;
      output_block<T, 1, CO, QB>(one, pi, f, ob, p, q0, std::min<int64_t>(QB, s.wo - q0));
    }
  });
}

// run<T, NB, CO> (NB > 0) or run_per_image<T, CO> (NB == 0) when CO output channels are
// whole vectors of T.
template <typename T, int NB, int CO>
bool run_whole_vectors(const ConvGeometry& s, const T* x, const T* f, T* out) {
  if constexpr (CO % (kVecBytes / int(sizeof(T))) == 0) {
    if constexpr (NB == 0) {
      run_per_image<T, CO>(s, x, f, out);
    } else {
      run<T, NB, CO>(s, x, f, out);
    }
    return true;
  } else {
    return false;
  }
}

template <typename T, int NB>
bool with_cout(const ConvGeometry& s, const T* x, const T* f, T* out) {
  switch (s.cout) {
    case 8: return run_whole_vectors<T, NB, 8>(s, x, f, out);
    case 16: return run_whole_vectors<T, NB, 16>(s, x, f, out);
    case 32: return run_whole_vectors<T, NB, 32>(s, x, f, out);
    default: return false;
  }
}

}  // namespace

// Not inlined into conv2d: inlined there it cost the implicit GEMM's packing loops a
// third of their speed (the optimiser's choices for the caller changed).
template <typename T>
__attribute__((noinline)) bool conv2d_few_images(const ConvGeometry& s, const T* x, const T* f, T* out) {
  // Worth it when the GEMM would be thin and deep: few output rows (n ho wo), a deep sum
  // (kh kw cg), few output channels, contiguous in the filter and the output; an image
  // that the padded copy reads in runs (the filter gradient's views of an NHWC or an NCHW
  // batch: (column, image) or column contiguous; NHWC images of few pixels, copied
  // element by element, ran slower here than in the GEMM); and a padded copy
  // (cg rows cols n) no larger than the image plus its padding.
  if (s.groups != 1 || s.fs[3] != 1 || s.os[3] != 1 || s.sh < 1 || s.sw < 1 || s.dh < 1 || s.dw < 1) return false;
  const int64_t rows_read = (s.ho - 1) * s.sh + (s.kh - 1) * s.dh + 1, cols_read = (s.wo - 1) * s.sw + (s.kw - 1) * s.dw + 1;
  if (rows_read > 2 * s.h + 8 || cols_read > 2 * s.w + 8) return false;
  // Images of 1-4 channels (a first layer): one at a time, whatever the layout.
  if (s.cg <= 4 && s.n > 4) return with_cout<T, 0>(s, x, f, out);
  const int64_t rows = s.n * s.ho * s.wo, depth = s.kh * s.kw * s.cg;
  if (s.n > 4 || rows > 1024 || depth < 1024) return false;
  if (!(s.xs[2] == s.n && (s.xs[0] == 1 || s.n == 1)) && s.xs[2] != 1) return false;
  switch (s.n) {
    case 1: return with_cout<T, 1>(s, x, f, out);
    case 2: return with_cout<T, 2>(s, x, f, out);
    case 3: return with_cout<T, 3>(s, x, f, out);
    case 4: return with_cout<T, 4>(s, x, f, out);
    default: return false;
  }
}

template bool conv2d_few_images<float>(const ConvGeometry&, const float*, const float*, float*);
template bool conv2d_few_images<double>(const ConvGeometry&, const double*, const double*, double*);

}  // namespace cpu
}  // namespace needle
