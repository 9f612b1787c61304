// Reductions over contiguous runs: sum (floats keep their dtype, halves add in
// float, integers and bool into int64) and max (NaN propagates; bool is any).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "column_sums.h"
#include "common/convert.h"
#include "kernels.h"
#include "threads.h"

namespace needle {
namespace cpu {

namespace {

// What a sum of T adds in: float for float and the halves, double for double,
// uint64 (wrapping, read back as int64) for integers and bool.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double,
                                 std::conditional_t<std::is_floating_point_v<compute_t<T>>, float, uint64_t>>;

// The sum's storage type: T for floating types, int64 for the rest.
template <typename T>
using sum_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, T, int64_t>;

// Sum of n contiguous values: 4 x 16 independent partial sums so the adds
// pipeline and vectorise without -ffast-math reassociation.
template <typename T>
acc_t<T> sum_contiguous(const T* x, int64_t n) {
  using A = acc_t<T>;
  constexpr int L = 64;
  A part[L] = {};
  int64_t k = 0;
  for (; k + L <= n; k += L) {
#pragma omp simd
    for (int j = 0; j < L; ++j) part[j] += A(widen(x[k + j]));
  }
  A acc = 0;
  for (; k < n; ++k) acc += A(widen(x[k]));
  for (int j = 0; j < L; ++j) acc += part[j];
  return acc;
}

template <typename C>
inline C max_of(C acc, C x) {
  if constexpr (std::is_floating_point_v<C>) return (x > acc || x != x) ? x : acc;  // a NaN, once seen, stays
  else return x > acc ? x : acc;
}

template <typename T>
T max_contiguous(const T* x, int64_t n) {
  using C = compute_t<T>;
  C acc = widen(x[0]);
  int64_t k = 1;
  constexpr int L = 32;
  if (n >= 2 * L) {
    C part[L];
    for (int j = 0; j < L; ++j) part[j] = widen(x[j]);
    for (k = L; k + L <= n; k += L) {
#pragma omp simd
      for (int j = 0; j < L; ++j) part[j] = max_of(part[j], C(widen(x[k + j])));
    }
    acc = part[0];
    for (int j = 1; j < L; ++j) acc = max_of(acc, part[j]);
  }
  for (; k < n; ++k) acc = max_of(acc, C(widen(x[k])));
  return convert<T>(acc);
}

}  // namespace

void ReduceSum(const Buffer& a, Buffer* out, int64_t reduce_size) {
  // a is (out.size, reduce_size) compact; out[i] = sum of row i.
  check_dtype_is("reduce_sum", "out", out->dtype, sum_dtype(a.dtype));
  check_reduce("reduce_sum", a.size, out->size, reduce_size);
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using S = sum_t<T>;
    const T* x = a.data<T>();
    S* o = out->data<S>();
    const int64_t rows = out->size;
    if (rows == 1) {
      // One long row: per-thread partial sums over fixed pieces, added in order.
      const int64_t pieces =
          reduce_size > 4 * kParallelThreshold ? std::min<int64_t>(64, reduce_size / kParallelThreshold) : 1;
      std::vector<acc_t<T>> part(size_t(pieces), 0);
      parallel_for(pieces, [&](int64_t t) {
        const int64_t lo = reduce_size * t / pieces, hi = reduce_size * (t + 1) / pieces;
        part[size_t(t)] = sum_contiguous(x + lo, hi - lo);
      });
      acc_t<T> acc = 0;
      for (auto p : part) acc += p;
      o[0] = convert<S>(acc);
      return;
    }
    parallel_range(rows, std::max<int64_t>(1, kParallelThreshold / reduce_size), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = convert<S>(sum_contiguous(x + i * reduce_size, reduce_size));
    });
  });
}

void ReduceSumMiddle(const Buffer& a, Buffer* out, int64_t outer, int64_t reduce, int64_t inner) {
  // a is (outer, reduce, inner) compact; out (outer, inner) = sum over the middle axis.
  // The sum over leading axes (bias and BatchNorm gradients) without a transposed copy:
  // column sums (column_sums.h) over tiles of up to 256 columns.
  check_dtype_is("reduce_sum_middle", "out", out->dtype, sum_dtype(a.dtype));
  check_reduce_middle("reduce_sum_middle", a.size, out->size, outer, reduce, inner);
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using S = sum_t<T>;
    using A = acc_t<T>;
    constexpr int64_t kCols = 256;
    const T* x = a.data<T>();
    S* o = out->data<S>();
    const int64_t col_tiles = (inner + kCols - 1) / kCols;
    const int64_t grain =
        std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(1, reduce * std::min(inner, kCols)));
    auto tiles = [&](auto width) {
      constexpr int64_t W = decltype(width)::value;  // inner, when one tile of a common width
      parallel_range(outer * col_tiles, grain, [&](int64_t lo, int64_t hi) {
        A total[kCols];
        for (int64_t t = lo; t < hi; ++t) {
          const int64_t oi = t / col_tiles, c0 = (t % col_tiles) * kCols, nc = W ? W : std::min(kCols, inner - c0);
          const T* base = x + oi * reduce * inner + c0;
          std::fill(total, total + nc, A(0));
          add_column_sums<A, A, W>(0, reduce, nc, total,
                                   [base, inner](int64_t r, int64_t j) { return A(widen(base[r * inner + j])); });
          S* dst = o + oi * inner + c0;
          for (int64_t j = 0; j < nc; ++j) dst[j] = convert<S>(total[j]);
        }
      });
    };
    with_width(col_tiles == 1 ? inner : 0, tiles);
  });
}

void ReduceMax(const Buffer& a, Buffer* out, int64_t reduce_size) {
  // a is (out.size, reduce_size) compact; out[i] = max of row i.
  check_dtype_is("reduce_max", "out", out->dtype, a.dtype);
  check_reduce("reduce_max", a.size, out->size, reduce_size);
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = a.data<T>();
    T* o = out->data<T>();
    parallel_range(out->size, std::max<int64_t>(1, kParallelThreshold / reduce_size), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = max_contiguous(x + i * reduce_size, reduce_size);
    });
  });
}

}  // namespace cpu
}  // namespace needle
