// Elementwise functions: one functor per op (functors.cuh), stamped over the
// ewise / scalar / unary loops and over the dtypes. float32 keeps its fast path
// (float4 loads and stores on aligned buffers); the other dtypes run one generic
// grid-stride loop that computes in compute_t<T> (float for the halves) and
// rounds once on the store. Comparisons write bool and pick their functor with
// a warp-uniform switch, which keeps the instantiations to one per dtype.
#include <memory>
#include <type_traits>

#include "common/convert.h"
#include "cuda/checks_cuda.cuh"
#include "cuda/functors.cuh"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

// ---- float32 fast path ----

// Binary op with a second operand either from memory (Scalar = false) or a constant.
template <class Op, bool Scalar>
struct BinaryApply {
  Op op;
  const float* b;
  float val;
  __device__ __forceinline__ float operator()(const float* a, int64_t i) const {
    return op(a[i], Scalar ? val : b[i]);
  }
  __device__ __forceinline__ float4 vec(const float* a, int64_t i4) const {
    const float4 x = reinterpret_cast<const float4*>(a)[i4];
    const float4 y = Scalar ? make_float4(val, val, val, val) : reinterpret_cast<const float4*>(b)[i4];
    return make_float4(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w));
  }
};

template <class Op>
struct UnaryApply {
  Op op;
  __device__ __forceinline__ float operator()(const float* a, int64_t i) const { return op(a[i]); }
  __device__ __forceinline__ float4 vec(const float* a, int64_t i4) const {
    const float4 x = reinterpret_cast<const float4*>(a)[i4];
    return make_float4(op(x.x), op(x.y), op(x.z), op(x.w));
  }
};

// a, (b,) out are (n,) compact float32. With vec set every pointer is 16-byte aligned:
// the body moves float4s and the last n % 4 elements go through the scalar tail.
template <class Apply>
__global__ void elementwise_f32_kernel(const float* a, float* out, int64_t n, Apply f, bool vec) {
  const int64_t tid = grid_tid(), stride = grid_stride();
  int64_t start = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = tid; i < n4; i += stride) reinterpret_cast<float4*>(out)[i] = f.vec(a, i);
    start = n4 * 4;
  }
  for (int64_t i = start + tid; i < n; i += stride) out[i] = f(a, i);
}

template <class Apply>
void launch_f32(const char* name, const float* a, const float* b, float* out, int64_t n, const Apply& f) {
  const bool vec = aligned16(a) && aligned16(out) && (b == nullptr || aligned16(b));
  elementwise_f32_kernel<Apply><<<grid_for(vec ? ceil_div(n, 4) : n), kThreads>>>(a, out, n, f, vec);
  CHECK_LAUNCH(name);
}

// ---- every other dtype ----

// a, (b,) out are (n,) compact of T: out[i] = op(a[i], b[i] or val) in compute_t<T>.
template <typename T, class Op, bool Scalar>
__global__ void binary_kernel(const T* a, const T* b, compute_t<T> val, T* out, int64_t n, Op op) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) {
    compute_t<T> y;
    if constexpr (Scalar) y = val;
    else y = widen(b[i]);
    out[i] = convert<T>(op(widen(a[i]), y));
  }
}

template <typename C>
__device__ __forceinline__ bool compare(CompareOp op, C x, C y) {
  switch (op) {
    case CompareOp::kEq: return EqOp{}(x, y);
    case CompareOp::kNe: return NeOp{}(x, y);
    case CompareOp::kLt: return LtOp{}(x, y);
    case CompareOp::kLe: return LeOp{}(x, y);
    case CompareOp::kGt: return GtOp{}(x, y);
    default: return GeOp{}(x, y);
  }
}

// a, (b,) are (n,) compact of T, out (n,) compact bool.
template <typename T, bool Scalar>
__global__ void compare_kernel(const T* a, const T* b, compute_t<T> val, bool* out, int64_t n, CompareOp op) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) {
    compute_t<T> y;
    if constexpr (Scalar) y = val;
    else y = widen(b[i]);
    out[i] = compare(op, widen(a[i]), y);
  }
}

// a, out (n,) compact of a floating T other than float32.
template <typename T, class Op>
__global__ void unary_kernel(const T* a, T* out, int64_t n, Op op) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) out[i] = convert<T>(op(widen(a[i])));
}

constexpr const char* kNumeric = "a numeric (not bool) dtype";
constexpr const char* kFloating = "a floating dtype";

// out = op(a, b) (b non-null) or op(a, val), all of one dtype in Mask.
template <unsigned Mask, class Op>
void run_binary(const char* fn, Op op, const Array& a, const Array* b, double val, Array& out, const char* what) {
  const DType dt = b != nullptr ? check_same_dtype(fn, {a.dtype, b->dtype, out.dtype})
                                : check_same_dtype(fn, {a.dtype, out.dtype});
  check_dtype_in(fn, dt, Mask, what);
  check_same_size(fn, a.size, out.size);
  if (b != nullptr) check_same_size(fn, b->size, out.size);
  dispatch<Mask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr bool kIntPower = std::is_same_v<Op, PowerOp> && kWrapInt<T>;
    const T v = scalar_as<T>(val);  // the scalar in a's dtype (then its compute type)
    if constexpr (kIntPower) {
      if (b == nullptr && v < 0) throw_negative_int_power(fn);
    }
    const int64_t n = out.size;
    if (n == 0) return;
    if constexpr (std::is_same_v<T, float>) {
      if (b != nullptr)
        launch_f32(fn, a.data<float>(), b->data<float>(), out.data<float>(), n,
                   BinaryApply<Op, false>{op, b->data<float>(), 0.f});
      else
        launch_f32(fn, a.data<float>(), nullptr, out.data<float>(), n, BinaryApply<Op, true>{op, nullptr, v});
    } else {
      std::unique_ptr<DeviceFlag> negative;
      Op f = op;
      if constexpr (kIntPower) {
        if (b != nullptr) {
          negative = std::make_unique<DeviceFlag>();
          f.negative = negative->ptr();
        }
      }
      const unsigned grid = grid_for(n);
      if (b != nullptr)
        binary_kernel<T, Op, false><<<grid, kThreads>>>(a.data<T>(), b->data<T>(), widen(v), out.data<T>(), n, f);
      else
        binary_kernel<T, Op, true><<<grid, kThreads>>>(a.data<T>(), nullptr, widen(v), out.data<T>(), n, f);
      CHECK_LAUNCH(fn);
      if (negative && negative->read()) throw_negative_int_power(fn);
    }
  });
}

void run_binary_op(const char* fn, BinaryOp op, const Array& a, const Array* b, double val, Array& out) {
  switch (op) {
    case BinaryOp::kAdd: return run_binary<kAllMask>(fn, AddOp{}, a, b, val, out, "");
    case BinaryOp::kMul: return run_binary<kAllMask>(fn, MulOp{}, a, b, val, out, "");
    case BinaryOp::kDiv: return run_binary<kFloatingMask>(fn, DivOp{}, a, b, val, out, kFloating);
    case BinaryOp::kPower: return run_binary<kNumericMask>(fn, PowerOp{}, a, b, val, out, kNumeric);
    case BinaryOp::kMaximum: return run_binary<kAllMask>(fn, MaximumOp{}, a, b, val, out, "");
  }
}

// out (bool) = op(a, b) (b non-null) or op(a, val converted to a's dtype).
void run_compare(const char* fn, CompareOp op, const Array& a, const Array* b, double val, Array& out) {
  if (b != nullptr) check_same_dtype(fn, {a.dtype, b->dtype});
  check_dtype_is(fn, "out", out.dtype, DType::kBool);
  check_same_size(fn, a.size, out.size);
  if (b != nullptr) check_same_size(fn, b->size, out.size);
  const int64_t n = out.size;
  if (n == 0) return;
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const compute_t<T> v = widen(scalar_as<T>(val));
    if (b != nullptr)
      compare_kernel<T, false><<<grid_for(n), kThreads>>>(a.data<T>(), b->data<T>(), v, out.data<bool>(), n, op);
    else
      compare_kernel<T, true><<<grid_for(n), kThreads>>>(a.data<T>(), nullptr, v, out.data<bool>(), n, op);
    CHECK_LAUNCH(fn);
  });
}

template <class Op>
void run_unary(const char* fn, Op op, const Array& a, Array& out) {
  const DType dt = check_same_dtype(fn, {a.dtype, out.dtype});
  check_dtype_in(fn, dt, kFloatingMask, kFloating);
  check_same_size(fn, a.size, out.size);
  const int64_t n = out.size;
  if (n == 0) return;
  dispatch<kFloatingMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      launch_f32(fn, a.data<float>(), nullptr, out.data<float>(), n, UnaryApply<Op>{op});
    } else {
      unary_kernel<T, Op><<<grid_for(n), kThreads>>>(a.data<T>(), out.data<T>(), n, op);
      CHECK_LAUNCH(fn);
    }
  });
}

// ---- row broadcast: out = f(full, row) with row a (cols,) run broadcast over the rows ----
// op: 0 add, 1 mul, 2 div (floating T only); a warp-uniform switch, one kernel per dtype.
template <typename T>
__global__ void ewise_rows_kernel(const T* x, const T* y, T* out, int64_t n, int64_t cols, int op, bool swap) {
  using C = compute_t<T>;
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) {
    const C r = widen(y[i % cols]), u = widen(x[i]);
    const C p = swap ? r : u, q = swap ? u : r;
    C v;
    if (op == 0) {
      v = AddOp{}(p, q);
    } else if (op == 1) {
      v = MulOp{}(p, q);
    } else {
      if constexpr (std::is_floating_point_v<C>) v = DivOp{}(p, q);
      else v = p;  // unreachable: the host rejects div on other dtypes
    }
    out[i] = convert<T>(v);
  }
}

}  // namespace

void ewise_binary(const char* fn, BinaryOp op, const Array& a, const Array& b, Array& out) {
  run_binary_op(fn, op, a, &b, 0.0, out);
}

void scalar_binary(const char* fn, BinaryOp op, const Array& a, double val, Array& out) {
  run_binary_op(fn, op, a, nullptr, val, out);
}

void ewise_compare(const char* fn, CompareOp op, const Array& a, const Array& b, Array& out) {
  run_compare(fn, op, a, &b, 0.0, out);
}

void scalar_compare(const char* fn, CompareOp op, const Array& a, double val, Array& out) {
  run_compare(fn, op, a, nullptr, val, out);
}

void ewise_unary(const char* fn, UnaryOp op, const Array& a, Array& out) {
  switch (op) {
    case UnaryOp::kLog: return run_unary(fn, LogOp{}, a, out);
    case UnaryOp::kExp: return run_unary(fn, ExpOp{}, a, out);
    case UnaryOp::kTanh: return run_unary(fn, TanhOp{}, a, out);
  }
}

// full is (rows, cols) compact, row is the (cols,) run at row[row_offset:]; out
// (rows, cols) compact gets op(full, row), or op(row, full) when swap.
void ewise_rows(const std::string& op, const Array& full, const Array& row, int64_t row_offset, Array& out,
                int64_t cols, bool swap) {
  const char* fn = "ewise_rows";
  const int code = parse_row_op(op);
  const DType dt = check_same_dtype(fn, {full.dtype, row.dtype, out.dtype});
  if (code == 2) check_dtype_in(fn, dt, kFloatingMask, "a floating dtype for div");
  check_row_broadcast(fn, full.size, row.size, row_offset, out.size, cols);
  const int64_t n = out.size;
  if (n == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ewise_rows_kernel<T><<<grid_for(n), kThreads>>>(full.data<T>(), row.data<T>() + row_offset, out.data<T>(), n,
                                                    cols, code, swap);
    CHECK_LAUNCH("ewise_rows_kernel");
  });
}

}  // namespace cuda
}  // namespace needle
