// Host-side checks the CUDA module needs beyond src/common/checks.h, with the
// same error policy (ValueError = std::invalid_argument, IndexError =
// std::out_of_range, TypeError = pybind11::type_error). Candidates for the
// common header: nothing here is CUDA-specific except check_max_dims.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "common/checks.h"

namespace needle {
namespace cuda {

// Array(size, dtype): negative sizes, and sizes whose bytes leave 63 bits, are ValueErrors.
inline void check_array_size(int64_t size, int itemsize) {
  if (size < 0) throw std::invalid_argument(cat({"Array size must be >= 0, got ", num(size)}));
  if (static_cast<uint64_t>(size) > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / (2u * itemsize))
    throw std::invalid_argument(cat({"Array size ", num(size), " is too large"}));
}

// The product of sizes that come from Python ints; a product that leaves int64 is a
// ValueError, not a wrapped value that could slip past the size checks (which
// multiply unchecked). A zero factor makes the product 0 whatever the others are.
inline int64_t checked_product(const char* fn, std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d == 0) return 0;
  int64_t p = 1;
  for (int64_t d : dims)
    if (__builtin_mul_overflow(p, d, &p))
      throw std::invalid_argument(cat({fn, ": sizes overflow 64-bit indexing"}));
  return p;
}

// The kernels take strided views by value with at most `limit` dims (after size-1
// dims are dropped and contiguous neighbours merged).
inline void check_max_dims(const char* fn, int ndim, int limit, const Shape& shape) {
  if (ndim > limit)
    throw std::invalid_argument(cat({fn, ": view of shape ", shape_str(shape), " needs ", num(ndim),
                                     " dims, more than the CUDA backend's ", num(limit)}));
}

// ewise_setitem: the compact source holds at least the view's elements.
inline void check_setitem_source(const char* fn, const Shape& shape, int64_t n, int64_t source) {
  if (n > source)
    throw std::invalid_argument(cat({fn, ": view of shape ", shape_str(shape), " needs ", num(n),
                                     " elements, source has ", num(source)}));
}

// scalar_setitem: size is prod(shape).
inline void check_setitem_count(const char* fn, const Shape& shape, int64_t size, int64_t n) {
  if (size != n)
    throw std::invalid_argument(cat({fn, ": size ", num(size), " does not match shape ", shape_str(shape)}));
}

// from_numpy: the source has the buffer's dtype and element count.
inline void check_from_numpy(bool same_dtype, const std::string& source_dtype, DType dt, int64_t source_size,
                             int64_t out_size) {
  if (!same_dtype)
    throw pybind11::type_error(
        cat({"from_numpy: source dtype ", source_dtype, " differs from the buffer's ", dtype_name(dt)}));
  if (source_size != out_size)
    throw std::invalid_argument(
        cat({"from_numpy: source has ", num(source_size), " elements, buffer has ", num(out_size)}));
}

// ewise_rows: op is "add", "mul" or "div" (returned as 0, 1, 2).
inline int parse_row_op(const std::string& op) {
  if (op == "add") return 0;
  if (op == "mul") return 1;
  if (op == "div") return 2;
  throw std::invalid_argument("ewise_rows: unknown op " + op);
}

// set_matmul_kernel: k names one of `count` kernels.
inline void check_kernel_index(const char* fn, int k, int count) {
  if (k < 0 || k >= count)
    throw std::invalid_argument(cat({fn, ": kernel must be in [0, ", num(count - 1), "], got ", num(k)}));
}

}  // namespace cuda
}  // namespace needle
