// Row gather and scatter-add (an embedding lookup and its adjoint), and the
// reading of row numbers that the loss kernels share.
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/convert.h"
#include "kernels.h"

namespace needle {
namespace cpu {

std::vector<int64_t> row_indices(const char* fn, const Buffer& idx, int64_t num_rows) {
  std::vector<int64_t> rows(size_t(idx.size));
  dispatch(idx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = idx.data<T>();
    check_row_indices(fn, idx.dtype, idx.size, num_rows, [&](int64_t r) { return double(widen(x[r])); });
    for (int64_t r = 0; r < idx.size; ++r) rows[size_t(r)] = int64_t(double(widen(x[r])));
  });
  return rows;
}

void GatherRows(const Buffer& a, const Buffer& idx, Buffer* out, int64_t num_rows, int64_t dim) {
  // a is (num_rows, dim) compact, idx is (k,) compact, out is (k, dim) compact: out[r] = a[idx[r]].
  check_same_dtype("gather_rows", {a.dtype, out->dtype});
  check_rows("gather_rows", a.size, out->size, num_rows, dim, idx.size);
  const std::vector<int64_t> rows = row_indices("gather_rows", idx, num_rows);
  const size_t row_bytes = size_t(dim) * size_t(a.itemsize());
  const char* src = a.data<char>();
  char* dst = out->data<char>();
  for (size_t r = 0; r < rows.size(); ++r) std::memcpy(dst + r * row_bytes, src + size_t(rows[r]) * row_bytes, row_bytes);
}

void ScatterAddRows(const Buffer& a, const Buffer& idx, Buffer* out, int64_t num_rows, int64_t dim) {
  // a is (k, dim) compact, idx is (k,) compact, out is (num_rows, dim) compact: out[idx[r]] += a[r], r in order.
  const DType dt = check_same_dtype("scatter_add_rows", {a.dtype, out->dtype});
  check_dtype_in("scatter_add_rows", dt, kNumericMask, "a numeric (not bool) dtype");
  check_rows("scatter_add_rows", out->size, a.size, num_rows, dim, idx.size);
  const std::vector<int64_t> rows = row_indices("scatter_add_rows", idx, num_rows);
  dispatch<kNumericMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    T* o = out->data<T>();
    const T* src = a.data<T>();
    if constexpr (std::is_same_v<T, C>) {
      for (size_t r = 0; r < rows.size(); ++r) {
        T* dst = o + rows[r] * dim;
        const T* s = src + int64_t(r) * dim;
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) dst[j] = T(dst[j] + s[j]);
      }
    } else {
      // Halves add in float and round once per element of the table, however often it is hit.
      std::vector<C> table(size_t(num_rows * dim));
      for (int64_t i = 0; i < num_rows * dim; ++i) table[size_t(i)] = widen(o[i]);
      for (size_t r = 0; r < rows.size(); ++r) {
        C* dst = table.data() + rows[r] * dim;
        const T* s = src + int64_t(r) * dim;
        for (int64_t j = 0; j < dim; ++j) dst[j] += widen(s[j]);
      }
      for (int64_t i = 0; i < num_rows * dim; ++i) o[i] = convert<T>(table[size_t(i)]);
    }
  });
}

}  // namespace cpu
}  // namespace needle
