// Elementwise functions: one functor per op, stamped over the ewise / scalar /
// row-broadcast loops and over the dtypes. Halves compute in float and round
// once on the store; integers wrap like unsigned C arithmetic; comparisons
// write bool. exp, log and tanh of float run on the vector layer (simd.h).
#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/convert.h"
#include "common/functors.h"
#include "kernels.h"
#include "simd.h"
#include "threads.h"

namespace needle {
namespace cpu {

namespace {

// ---- the loops: out[i] = f(a[i], b[i]) or f(a[i], v), R the result's storage type ----
template <typename T, typename R, typename F>
void ewise_loop(const T* x, const T* y, R* o, int64_t n, F f) {
  parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = convert<R>(f(widen(x[i]), widen(y[i])));
  });
}

template <typename T, typename R, typename C, typename F>
void scalar_loop(const T* x, C v, R* o, int64_t n, F f) {
  parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = convert<R>(f(widen(x[i]), v));
  });
}

// Integer power has no value for a negative exponent (numpy raises too).
template <typename T>
void check_exponents(const char* fn, const T* y, int64_t n) {
  if constexpr (std::is_signed_v<T> && std::is_integral_v<T>) {
    for (int64_t i = 0; i < n; ++i)
      if (y[i] < 0) throw_negative_int_power(fn);
  }
}

template <unsigned Mask, typename F>
void binary(const char* fn, const Buffer& a, const Buffer& b, Buffer* out, F f, const char* what) {
  const DType dt = check_same_dtype(fn, {a.dtype, b.dtype, out->dtype});
  check_dtype_in(fn, dt, Mask, what);
  check_same_size(fn, a.size, out->size);
  check_same_size(fn, b.size, out->size);
  dispatch<Mask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<F, PowerOp>) check_exponents(fn, b.data<T>(), b.size);
    ewise_loop(a.data<T>(), b.data<T>(), out->data<T>(), out->size, f);
  });
}

template <unsigned Mask, typename F>
void with_scalar(const char* fn, const Buffer& a, Scalar val, Buffer* out, F f, const char* what) {
  const DType dt = check_same_dtype(fn, {a.dtype, out->dtype});
  check_dtype_in(fn, dt, Mask, what);
  check_same_size(fn, a.size, out->size);
  dispatch<Mask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T v = scalar_as<T>(val);  // the scalar in a's dtype, then its compute type
    if constexpr (std::is_same_v<F, PowerOp>) check_exponents(fn, &v, 1);
    scalar_loop(a.data<T>(), widen(v), out->data<T>(), out->size, f);
  });
}

template <typename F>
void compare(const char* fn, const Buffer& a, const Buffer& b, Buffer* out, F f) {
  const DType dt = check_same_dtype(fn, {a.dtype, b.dtype});
  check_dtype_is(fn, "out", out->dtype, DType::kBool);
  check_same_size(fn, a.size, out->size);
  check_same_size(fn, b.size, out->size);
  dispatch(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ewise_loop(a.data<T>(), b.data<T>(), out->data<bool>(), out->size, f);
  });
}

template <typename F>
void compare_scalar(const char* fn, const Buffer& a, Scalar val, Buffer* out, F f) {
  check_dtype_is(fn, "out", out->dtype, DType::kBool);
  check_same_size(fn, a.size, out->size);
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    scalar_loop(a.data<T>(), widen(scalar_as<T>(val)), out->data<bool>(), out->size, f);
  });
}

constexpr const char* kNumeric = "a numeric (not bool) dtype";
constexpr const char* kFloating = "a floating dtype";

// a ** val for float: the exponents of BatchNorm, Adam and the power rule (2, 1,
// 0.5, -0.5, -1, small integers) skip powf, which does not vectorise. Each fast
// path rounds like powf does up to the last bit (double intermediates), and keeps
// powf's special cases (pow(-0, 0.5) = +0, pow(-inf, 0.5) = +inf, pow(-0, -0.5) = +inf).
bool float_power_fast(const Buffer& a, double val, Buffer* out) {
  const float* x = a.data<float>();
  float* o = out->data<float>();
  const int64_t n = out->size;
  auto run = [&](auto f) {
    parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) o[i] = f(x[i]);
    });
    return true;
  };
  const float v = float(val);
  if (v == 1.0f) return run([](float t) { return t; });
  if (v == 2.0f) return run([](float t) { return t * t; });
  if (v == 3.0f) return run([](float t) { return float(double(t) * double(t) * double(t)); });
  if (v == -1.0f) return run([](float t) { return 1.0f / t; });
  if (v == -2.0f) return run([](float t) { return float(1.0 / (double(t) * double(t))); });
  if (v == 0.5f) return run([](float t) { return t == -INFINITY ? INFINITY : std::sqrt(t) + 0.0f; });
  if (v == -0.5f)
    return run([](float t) { return t == 0.0f ? INFINITY : t == -INFINITY ? 0.0f : float(1.0 / std::sqrt(double(t))); });
  return false;
}

// ---- exp, log, tanh ----
template <typename T>
T libm(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::kLog: return std::log(x);
    case UnaryOp::kExp: return std::exp(x);
    default: return std::tanh(x);
  }
}

// out[i] = op(x[i]) for n floats on one thread; the vector path's ragged tail goes
// through the same vector code on a padded copy, so a result does not depend on
// its position.
void unary_floats(UnaryOp op, const float* x, float* o, int64_t n) {
#ifdef NEEDLE_VEC_MATH
  auto run = [&](auto f) {
    int64_t i = 0;
    for (; i + Vec::W <= n; i += Vec::W) Vec::store(o + i, f(Vec::load(x + i)));
    if (i < n) {
      alignas(64) float buf[Vec::W] = {};
      std::memcpy(buf, x + i, size_t(n - i) * sizeof(float));
      Vec::store(buf, f(Vec::load(buf)));
      std::memcpy(o + i, buf, size_t(n - i) * sizeof(float));
    }
  };
  switch (op) {
    case UnaryOp::kLog: run(vlog); break;
    case UnaryOp::kExp: run(vexp); break;
    default: run(vtanh); break;
  }
#else
  for (int64_t i = 0; i < n; ++i) o[i] = libm(op, x[i]);
#endif
}

}  // namespace

void EwiseBinary(const char* fn, BinaryOp op, const Buffer& a, const Buffer& b, Buffer* out) {
  switch (op) {
    case BinaryOp::kAdd: return binary<kAllMask>(fn, a, b, out, AddOp{}, "");
    case BinaryOp::kMul: return binary<kAllMask>(fn, a, b, out, MulOp{}, "");
    case BinaryOp::kDiv: return binary<kFloatingMask>(fn, a, b, out, DivOp{}, kFloating);
    case BinaryOp::kPower: return binary<kNumericMask>(fn, a, b, out, PowerOp{}, kNumeric);
    case BinaryOp::kMaximum: return binary<kAllMask>(fn, a, b, out, MaximumOp{}, "");
    case BinaryOp::kReluGrad: return binary<kFloatingMask>(fn, a, b, out, ReluGradOp{}, kFloating);
  }
}

void ScalarBinary(const char* fn, BinaryOp op, const Buffer& a, Scalar val, Buffer* out) {
  switch (op) {
    case BinaryOp::kAdd: return with_scalar<kAllMask>(fn, a, val, out, AddOp{}, "");
    case BinaryOp::kMul: return with_scalar<kAllMask>(fn, a, val, out, MulOp{}, "");
    case BinaryOp::kDiv: return with_scalar<kFloatingMask>(fn, a, val, out, DivOp{}, kFloating);
    case BinaryOp::kPower:
      if (a.dtype == DType::kFloat32 && out->dtype == DType::kFloat32 && a.size == out->size &&
          float_power_fast(a, val.f, out))
        return;
      return with_scalar<kNumericMask>(fn, a, val, out, PowerOp{}, kNumeric);
    case BinaryOp::kMaximum: return with_scalar<kAllMask>(fn, a, val, out, MaximumOp{}, "");
    case BinaryOp::kReluGrad: break;
  }
  throw std::invalid_argument(std::string(fn) + ": the operation has no scalar form");
}

void EwiseCompare(const char* fn, CompareOp op, const Buffer& a, const Buffer& b, Buffer* out) {
  switch (op) {
    case CompareOp::kEq: return compare(fn, a, b, out, EqOp{});
    case CompareOp::kNe: return compare(fn, a, b, out, NeOp{});
    case CompareOp::kLt: return compare(fn, a, b, out, LtOp{});
    case CompareOp::kLe: return compare(fn, a, b, out, LeOp{});
    case CompareOp::kGt: return compare(fn, a, b, out, GtOp{});
    case CompareOp::kGe: return compare(fn, a, b, out, GeOp{});
  }
}

void ScalarCompare(const char* fn, CompareOp op, const Buffer& a, Scalar val, Buffer* out) {
  switch (op) {
    case CompareOp::kEq: return compare_scalar(fn, a, val, out, EqOp{});
    case CompareOp::kNe: return compare_scalar(fn, a, val, out, NeOp{});
    case CompareOp::kLt: return compare_scalar(fn, a, val, out, LtOp{});
    case CompareOp::kLe: return compare_scalar(fn, a, val, out, LeOp{});
    case CompareOp::kGt: return compare_scalar(fn, a, val, out, GtOp{});
    case CompareOp::kGe: return compare_scalar(fn, a, val, out, GeOp{});
  }
}

void EwiseUnary(const char* fn, UnaryOp op, const Buffer& a, Buffer* out) {
  const DType dt = check_same_dtype(fn, {a.dtype, out->dtype});
  check_dtype_in(fn, dt, kFloatingMask, kFloating);
  check_same_size(fn, a.size, out->size);
  dispatch<kFloatingMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = a.data<T>();
    T* o = out->data<T>();
    parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
      if constexpr (std::is_same_v<T, float>) {
        unary_floats(op, x + lo, o + lo, hi - lo);
      } else if constexpr (std::is_same_v<T, double>) {
        for (int64_t i = lo; i < hi; ++i) o[i] = libm(op, x[i]);
      } else {
        // Halves: through float in blocks, on the float path.
        constexpr int64_t kChunk = 256;
        float buf[kChunk];
        for (int64_t i0 = lo; i0 < hi; i0 += kChunk) {
          const int64_t len = std::min(kChunk, hi - i0);
          for (int64_t i = 0; i < len; ++i) buf[i] = widen(x[i0 + i]);
          unary_floats(op, buf, buf, len);
          for (int64_t i = 0; i < len; ++i) o[i0 + i] = convert<T>(buf[i]);
        }
      }
    });
  });
}

void EwiseMathReference(const std::string& op, const Buffer& a, Buffer* out) {
  const char* fn = "ewise_math_reference";
  check_dtype_is(fn, "a", a.dtype, DType::kFloat32);
  check_dtype_is(fn, "out", out->dtype, DType::kFloat32);
  check_same_size(fn, a.size, out->size);
  UnaryOp u;
  if (op == "exp") u = UnaryOp::kExp;
  else if (op == "log") u = UnaryOp::kLog;
  else if (op == "tanh") u = UnaryOp::kTanh;
  else throw std::invalid_argument("ewise_math_reference: unknown op " + op);
  const float* x = a.data<float>();
  float* o = out->data<float>();
  parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) o[i] = libm(u, x[i]);
  });
}

namespace {

// a is (rows, cols) compact, b is a (cols,) row read from b + b_offset and
// broadcast over the rows: out = f(a, b) (or f(b, a) when swap). A broadcast
// operand (bias, BatchNorm statistics) without materialising it.
template <unsigned Mask, typename F>
void rows_loop(const Buffer& a, const Buffer& b, int64_t b_offset, Buffer* out, int64_t cols, bool swap, F f,
               const char* what) {
  const char* fn = "ewise_rows";
  const DType dt = check_same_dtype(fn, {a.dtype, b.dtype, out->dtype});
  check_dtype_in(fn, dt, Mask, what);
  check_row_broadcast(fn, a.size, b.size, b_offset, out->size, cols);
  dispatch<Mask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = a.data<T>();
    const T* y = b.data<T>() + b_offset;
    T* o = out->data<T>();
    parallel_range(a.size / cols, std::max<int64_t>(1, kParallelThreshold / cols), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* xr = x + i * cols;
        T* orow = o + i * cols;
        if (swap) {
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) orow[j] = convert<T>(f(widen(y[j]), widen(xr[j])));
        } else {
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) orow[j] = convert<T>(f(widen(xr[j]), widen(y[j])));
        }
      }
    });
  });
}

}  // namespace

void EwiseRows(const std::string& op, const Buffer& full, const Buffer& row, int64_t row_offset, Buffer* out,
               int64_t cols, bool swap) {
  switch (parse_row_op(op)) {
    case 0: return rows_loop<kAllMask>(full, row, row_offset, out, cols, swap, AddOp{}, "");
    case 1: return rows_loop<kAllMask>(full, row, row_offset, out, cols, swap, MulOp{}, "");
    default: return rows_loop<kFloatingMask>(full, row, row_offset, out, cols, swap, DivOp{}, "div with a floating dtype");
  }
}

}  // namespace cpu
}  // namespace needle
