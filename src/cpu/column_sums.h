// Sums down the columns of a row-major block, shared by batch norm (fused.cc) and the sum
// over leading axes (reduce.cc: bias gradients): rows are added into per-column partial
// sums in blocks of 64, and each block's sums into the running totals, so the error grows
// with 64 + n / 64, not with n.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace needle {
namespace cpu {

// f(std::integral_constant<int64_t, W>) with W = cols for the channel counts of common
// layers, else W = 0 (a runtime width). With W known the per-row loops compile to
// straight vector code: with 16 columns a runtime-bounded loop spent more on its bounds
// than on its one vector of work (a (8192, 16) batch norm ran at a fifth of an add's
// speed over the same memory).
template <class F>
void with_width(int64_t cols, F f) {
  switch (cols) {
    case 16: return f(std::integral_constant<int64_t, 16>{});
    case 32: return f(std::integral_constant<int64_t, 32>{});
    case 64: return f(std::integral_constant<int64_t, 64>{});
    case 128: return f(std::integral_constant<int64_t, 128>{});
    default: return f(std::integral_constant<int64_t, 0>{});
  }
}

// acc[j] += sum of term(r, j) over rows [lo, hi), for j < cols: block sums in B, totals in
// Acc. W is cols when known at compile time (with_width), else 0; a narrow known width
// sums four rows at a time into separate partial rows, so that consecutive rows do not
// wait on one another's additions.
template <typename B, typename Acc, int64_t W, typename Term>
void add_column_sums(int64_t lo, int64_t hi, int64_t cols, Acc* acc, Term term) {
  constexpr int64_t kRows = 64, kCols = 256;
  constexpr int64_t kLanes = W && W <= 64 ? 4 : 1;
  static_assert(W <= kCols, "a compile-time width fits one column block");
  B blk[kLanes * kCols];
  for (int64_t c0 = 0; c0 < cols; c0 += kCols) {
    const int64_t nc = W ? W : std::min(kCols, cols - c0);
    for (int64_t r0 = lo; r0 < hi; r0 += kRows) {
      const int64_t r1 = std::min(hi, r0 + kRows);
      std::fill(blk, blk + kLanes * nc, B(0));
      int64_t r = r0;
      for (; r + kLanes <= r1; r += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) blk[l * nc + j] += term(r + l, c0 + j);
        }
      }
      for (; r < r1; ++r) {
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) blk[j] += term(r, c0 + j);
      }
      for (int64_t l = 1; l < kLanes; ++l)
        for (int64_t j = 0; j < nc; ++j) blk[j] += blk[l * nc + j];
      for (int64_t j = 0; j < nc; ++j) acc[c0 + j] += Acc(blk[j]);
    }
  }
}

}  // namespace cpu
}  // namespace needle
