// Host-side checks of every backend call, shared by the CPU and the CUDA
// modules so that one bad input raises one exception type on every device:
//   ValueError (std::invalid_argument): sizes that do not fit, negative dims,
//       64-bit overflow of a view's extent;
//   IndexError (std::out_of_range): a view or an index reaching outside its buffer;
//   TypeError (pybind11::type_error): a dtype the function does not take.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dtypes.h"

namespace needle {

using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

inline std::string cat(std::initializer_list<std::string> parts) {
  std::string s;
  for (const auto& p : parts) s += p;
  return s;
}

inline std::string num(int64_t v) { return std::to_string(v); }

// ---- dtypes ----
inline DType parse_dtype(const char* fn, const std::string& name) {
  DType dt;
  if (!dtype_from_name(name, &dt))
    throw pybind11::type_error(cat({fn, ": unsupported dtype '", name, "'; supported: ", kDTypeList}));
  return dt;
}

// Every dtype in dts equal; returns it.
inline DType check_same_dtype(const char* fn, std::initializer_list<DType> dts) {
  const DType first = *dts.begin();
  for (DType dt : dts) {
    if (dt != first) {
      std::string names;
      for (DType d : dts) names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
      throw pybind11::type_error(cat({fn, ": buffers of dtypes ", names, " must share one dtype"}));
    }
  }
  return first;
}

// dt is in mask; what says what the function needs ("a floating dtype").
inline void check_dtype_in(const char* fn, DType dt, unsigned mask, const char* what) {
  if ((dtype_bit(dt) & mask) == 0) throw pybind11::type_error(cat({fn, ": needs ", what, ", got ", dtype_name(dt)}));
}

inline void check_dtype_is(const char* fn, const char* which, DType dt, DType want) {
  if (dt != want)
    throw pybind11::type_error(cat({fn, ": ", which, " must be ", dtype_name(want), ", got ", dtype_name(dt)}));
}

// The one dtype of a fused kernel's float buffers (softmax-xent, norms, optimizer
// steps): float32 or float64.
inline DType check_fused_dtype(const char* fn, std::initializer_list<DType> dts) {
  const DType dt = check_same_dtype(fn, dts);
  check_dtype_in(fn, dt, kFusedMask, "float32 or float64");
  return dt;
}

// The one dtype of a product's operands and output: any but bool.
inline DType check_matmul_dtype(const char* fn, DType a, DType b, DType out) {
  const DType dt = check_same_dtype(fn, {a, b, out});
  check_dtype_in(fn, dt, kNumericMask, "a numeric (not bool) dtype");
  return dt;
}

// ---- sizes ----
// The product of sizes that come from Python ints; a product that leaves int64 is a
// ValueError, never a wrapped value that could slip past the size checks below. A
// zero factor makes the product 0 whatever the others are.
inline int64_t checked_product(const char* fn, std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d == 0) return 0;
  int64_t p = 1;
  for (int64_t d : dims)
    if (__builtin_mul_overflow(p, d, &p)) throw std::invalid_argument(cat({fn, ": sizes overflow 64-bit indexing"}));
  return p;
}

// Elements of a view that check_view accepted (0 for an empty one, however large its other dims).
inline int64_t shape_size(const Shape& shape) {
  int64_t p = 1;
  for (int64_t d : shape)
    if (d == 0) return 0;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(p, d, &p)) throw std::invalid_argument("shape " + shape_str(shape) + " overflows 64-bit indexing");
  return p;
}

// Array(size, dtype): negative sizes, and sizes whose bytes leave 63 bits, are ValueErrors.
inline void check_array_size(int64_t size, int itemsize) {
  if (size < 0) throw std::invalid_argument(cat({"Array size must be >= 0, got ", num(size)}));
  if (static_cast<uint64_t>(size) > static_cast<uint64_t>(INT64_MAX) / (2u * static_cast<unsigned>(itemsize)))
    throw std::invalid_argument(cat({"Array size ", num(size), " is too large"}));
}

// ewise_setitem: the compact source holds at least the view's elements.
inline void check_setitem_source(const char* fn, const Shape& shape, int64_t n, int64_t source) {
  if (n > source)
    throw std::invalid_argument(
        cat({fn, ": view of shape ", shape_str(shape), " needs ", num(n), " elements, source has ", num(source)}));
}

// scalar_setitem: size is prod(shape).
inline void check_setitem_count(const char* fn, const Shape& shape, int64_t size, int64_t n) {
  if (size != n) throw std::invalid_argument(cat({fn, ": size ", num(size), " does not match shape ", shape_str(shape)}));
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

// A numbered kernel k of `count` (the matmul ladder).
inline void check_kernel_index(const char* fn, int k, int count) {
  if (k < 0 || k >= count)
    throw std::invalid_argument(cat({fn, ": kernel must be in [0, ", num(count - 1), "], got ", num(k)}));
}

inline void check_same_size(const char* fn, int64_t a, int64_t out) {
  if (a != out) throw std::invalid_argument(cat({fn, ": input has ", num(a), " elements, out has ", num(out)}));
}

// A strided view (shape, strides, offset) lies inside a buffer of buffer_size
// elements. Products and reaches are overflow-checked: a wrapped product could
// pass the bounds test and let a kernel walk outside the buffer.
inline void check_view(const char* fn, const Shape& shape, const Shape& strides, int64_t offset,
                       int64_t buffer_size) {
  if (shape.size() != strides.size())
    throw std::invalid_argument(
        cat({fn, ": shape ", shape_str(shape), " and strides ", shape_str(strides), " differ in length"}));
  bool empty = false;
  for (int64_t n : shape) {
    if (n < 0) throw std::invalid_argument(cat({fn, ": negative dim in shape ", shape_str(shape)}));
    empty = empty || n == 0;
  }
  if (empty) return;
  int64_t size = 1, lo = offset, hi = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t reach;
    if (__builtin_mul_overflow(size, shape[i], &size) || __builtin_mul_overflow(shape[i] - 1, strides[i], &reach) ||
        __builtin_add_overflow(reach < 0 ? lo : hi, reach, reach < 0 ? &lo : &hi))
      throw std::invalid_argument(cat({fn, ": view of shape ", shape_str(shape), ", strides ", shape_str(strides),
                                       " overflows 64-bit indexing"}));
  }
  if (lo < 0 || hi >= buffer_size)
    throw std::out_of_range(cat({fn, ": view of shape ", shape_str(shape), ", strides ", shape_str(strides),
                                 ", offset ", num(offset), " reaches elements [", num(lo), ", ", num(hi),
                                 "] outside a buffer of ", num(buffer_size)}));
}


inline void check_matmul_sizes(const char* fn, int64_t a, int64_t b, int64_t out, int64_t m, int64_t n, int64_t p) {
  if (m < 0 || n < 0 || p < 0) throw std::invalid_argument(cat({fn, ": negative dimension"}));
  if (a < checked_product(fn, {m, n}) || b < checked_product(fn, {n, p}) || out < checked_product(fn, {m, p}))
    throw std::invalid_argument(cat({fn, ": buffers of ", num(a), ", ", num(b), ", ", num(out),
                                     " elements are too small for (", num(m), " x ", num(n), ") @ (", num(n), " x ",
                                     num(p), ")"}));
}

// Batched strided operands: a (batch, m, n) by sa from oa, b (batch, n, p) by sb
// from ob, out (batch, m, p) compact.
inline void check_bmm(const char* fn, int64_t a_size, int64_t b_size, int64_t out_size, int64_t batch, int64_t m,
                      int64_t n, int64_t p, const Shape& sa, int64_t oa, const Shape& sb, int64_t ob) {
  if (sa.size() != 3 || sb.size() != 3)
    throw std::invalid_argument(cat({fn, ": a_strides and b_strides need 3 entries (batch, row, col)"}));
  if (batch < 0 || m < 0 || n < 0 || p < 0) throw std::invalid_argument(cat({fn, ": negative dimension"}));
  check_view(fn, {batch, m, n}, sa, oa, a_size);
  check_view(fn, {batch, n, p}, sb, ob, b_size);
  const int64_t need = checked_product(fn, {batch, m, p});
  if (out_size != need) throw std::invalid_argument(cat({fn, ": out has ", num(out_size), " elements, need ", num(need)}));
}

inline void check_reduce(const char* fn, int64_t a, int64_t out, int64_t reduce_size) {
  if (reduce_size < 1) throw std::invalid_argument(cat({fn, ": reduce_size must be >= 1"}));
  if (a < checked_product(fn, {out, reduce_size}))
    throw std::invalid_argument(
        cat({fn, ": input has ", num(a), " elements, need ", num(out), " x ", num(reduce_size)}));
}

inline void check_reduce_middle(const char* fn, int64_t a, int64_t out, int64_t outer, int64_t reduce,
                                int64_t inner) {
  if (outer < 0 || reduce < 1 || inner < 1) throw std::invalid_argument(cat({fn, ": bad sizes"}));
  if (a < checked_product(fn, {outer, reduce, inner}) || out < checked_product(fn, {outer, inner}))
    throw std::invalid_argument(cat({fn, ": arrays are smaller than (outer, reduce, inner)"}));
}

inline void check_row_broadcast(const char* fn, int64_t full, int64_t row, int64_t row_offset, int64_t out,
                                int64_t cols) {
  check_same_size(fn, full, out);
  if (cols < 1 || full % cols || row_offset < 0 || row_offset + cols > row)
    throw std::invalid_argument(cat({fn, ": bad row broadcast (cols ", num(cols), ")"}));
}

inline void check_rows(const char* fn, int64_t table, int64_t rows, int64_t num_rows, int64_t dim, int64_t k) {
  if (num_rows < 0 || dim < 0 || table < checked_product(fn, {num_rows, dim}) || rows != checked_product(fn, {k, dim}))
    throw std::invalid_argument(cat({fn, ": buffers of ", num(table), " and ", num(rows), " elements do not fit (",
                                     num(num_rows), ", ", num(dim), ") and (", num(k), ", ", num(dim), ")"}));
}

// Row numbers: any integer dtype, or floats holding integers (the course's
// float32-encoded labels); each must lie in [0, num_rows). value(i) reads index i
// as a double (exact for every index a buffer can address).
template <typename Value>
void check_row_indices(const char* fn, DType dt, int64_t count, int64_t num_rows, Value value) {
  if (dt == DType::kBool) throw pybind11::type_error(cat({fn, ": indices must be integers, got bool"}));
  for (int64_t r = 0; r < count; ++r) {
    const double v = value(r);
    if (!(v >= 0.0 && v < double(num_rows)) || v != double(int64_t(v))) {
      std::ostringstream os;
      os << fn << ": row index " << v << " is not an integer in [0, " << num_rows << ")";
      throw std::out_of_range(os.str());
    }
  }
}

inline void check_bn(const char* fn, int64_t rows, int64_t cols, std::initializer_list<int64_t> full,
                     std::initializer_list<int64_t> vecs) {
  if (rows < 0 || cols < 0) throw std::invalid_argument(cat({fn, ": bad sizes (", num(rows), ", ", num(cols), ")"}));
  bool ok = true;
  const int64_t elements = checked_product(fn, {rows, cols});
  for (int64_t a : full) ok = ok && a >= elements;
  for (int64_t v : vecs) ok = ok && v >= cols;
  if (!ok)
    throw std::invalid_argument(
        cat({fn, ": buffers do not fit (", num(rows), ", ", num(cols), ") and (", num(cols), ",)"}));
}

inline void check_step(const char* fn, int64_t out, std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes)
    if (s != out) throw std::invalid_argument(cat({fn, ": a buffer has ", num(s), " elements, out has ", num(out)}));
}

inline void check_softmax_xent(const char* fn, int64_t a, int64_t labels, int64_t lse, int64_t loss, int64_t n,
                               int64_t k) {
  if (n < 0 || k < 0 || a < checked_product(fn, {n, k}) || lse != n || loss != 1)
    throw std::invalid_argument(cat({fn, ": buffers of ", num(a), ", ", num(lse), ", ", num(loss),
                                     " elements do not fit (", num(n), ", ", num(k), ") logits, (n,) lse and (1,) ",
                                     "loss"}));
  if (labels != n) throw std::invalid_argument(cat({fn, ": ", num(labels), " labels for ", num(n), " rows"}));
}

inline void check_softmax_xent_grad(const char* fn, int64_t a, int64_t labels, int64_t lse, int64_t g, int64_t out,
                                    int64_t n, int64_t k) {
  if (n < 0 || k < 0 || a < checked_product(fn, {n, k}) || out != checked_product(fn, {n, k}) || lse != n || g != 1)
    throw std::invalid_argument(cat({fn, ": buffers of ", num(a), ", ", num(lse), ", ", num(g), ", ", num(out),
                                     " elements do not fit (", num(n), ", ", num(k), ") logits, (n,) lse, (1,) g and ",
                                     "(n, k) out"}));
  if (labels != n) throw std::invalid_argument(cat({fn, ": ", num(labels), " labels for ", num(n), " rows"}));
}

// The elements of a view are distinct (nothing to race on when a kernel writes
// it): sorted by |stride|, each axis steps past everything the smaller ones reach.
inline void check_distinct_elements(const char* fn, const char* which, const Shape& shape, const Shape& strides) {
  std::vector<std::pair<int64_t, int64_t>> axes;  // (|stride|, size) of axes longer than 1
  for (size_t a = 0; a < shape.size(); ++a)
    if (shape[a] > 1) axes.push_back({strides[a] < 0 ? -strides[a] : strides[a], shape[a]});
  std::sort(axes.begin(), axes.end());
  int64_t reach = 0;  // elements spanned by the smaller axes, minus one
  for (const auto& ax : axes) {
    if (ax.first <= reach)
      throw std::invalid_argument(cat({fn, ": ", which, " view of shape ", shape_str(shape), ", strides ",
                                       shape_str(strides), " has overlapping elements"}));
    reach += ax.first * (ax.second - 1);
  }
}

// conv2d: x (n, h, w, c), w (kh, kw, c / groups, cout) and out (n, ho, wo, cout)
// are views inside their buffers (out from offset 0, with distinct elements);
// stride and dilation are pairs >= 1, padding a (top, left) pair of any sign.
inline void check_conv2d(const char* fn, int64_t x_size, int64_t w_size, int64_t out_size, const Shape& x_shape,
                         const Shape& x_strides, int64_t x_offset, const Shape& w_shape, const Shape& w_strides,
                         int64_t w_offset, const Shape& out_shape, const Shape& out_strides, const Shape& stride,
                         const Shape& padding, const Shape& dilation, int64_t groups) {
  if (x_shape.size() != 4 || w_shape.size() != 4 || out_shape.size() != 4)
    throw std::invalid_argument(cat({fn, ": x, w and out must be 4-D (n, h, w, c), (kh, kw, c/groups, cout) and ",
                                     "(n, ho, wo, cout), got ", shape_str(x_shape), ", ", shape_str(w_shape), " and ",
                                     shape_str(out_shape)}));
  if (stride.size() != 2 || padding.size() != 2 || dilation.size() != 2)
    throw std::invalid_argument(cat({fn, ": stride, padding and dilation must be pairs, got ", shape_str(stride),
                                     ", ", shape_str(padding), " and ", shape_str(dilation)}));
  if (stride[0] < 1 || stride[1] < 1 || dilation[0] < 1 || dilation[1] < 1 || groups < 1)
    throw std::invalid_argument(cat({fn, ": stride ", shape_str(stride), ", dilation ", shape_str(dilation),
                                     " and groups ", num(groups), " must be >= 1"}));
  check_view(fn, x_shape, x_strides, x_offset, x_size);
  check_view(fn, w_shape, w_strides, w_offset, w_size);
  check_view(fn, out_shape, out_strides, 0, out_size);
  if (x_shape[3] != w_shape[2] * groups || w_shape[3] % groups || out_shape[0] != x_shape[0] ||
      out_shape[3] != w_shape[3])
    throw std::invalid_argument(cat({fn, ": x ", shape_str(x_shape), ", w ", shape_str(w_shape), " and out ",
                                     shape_str(out_shape), " with groups=", num(groups), " do not fit: need c = ",
                                     "w[2] * groups, cout = w[3] divisible by groups, and out (n, ho, wo, cout)"}));
  check_distinct_elements(fn, "out", out_shape, out_strides);
  // Tap rows reach p * s + i * d - pad: keep every such index inside int64.
  for (int a = 0; a < 2; ++a) {
    const int64_t pad = padding[a] < 0 ? -padding[a] : padding[a];
    int64_t reach;
    if (padding[a] == INT64_MIN ||
        __builtin_add_overflow(checked_product(fn, {out_shape[1 + a], stride[a]}),
                               checked_product(fn, {w_shape[a], dilation[a]}), &reach) ||
        __builtin_add_overflow(reach, pad, &reach))
      throw std::invalid_argument(cat({fn, ": stride, dilation and padding overflow 64-bit indexing"}));
  }
}

// Integer power: a negative exponent has no integer result (numpy raises too).
inline void throw_negative_int_power(const char* fn) {
  throw std::invalid_argument(cat({fn, ": integers to negative integer powers are not allowed"}));
}

}  // namespace needle
