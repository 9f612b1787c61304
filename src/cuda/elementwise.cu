// Elementwise functions: one functor per op (functors.cuh), stamped over the
// ewise / scalar / unary loops and over the dtypes. float32 keeps its fast path
// (float4 loads and stores on aligned buffers); the other dtypes run one generic
// grid-stride loop that computes in compute_t<T> (float for the halves) and
// rounds once on the store. Comparisons write bool and pick their functor with
// a warp-uniform switch, which keeps the instantiations to one per dtype.
#include <memory>
#include <type_traits>

#include "common/convert.h"
#include "cuda/functors.cuh"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

// ---- float32 fast path ----

// Binary op with a second operand either from memory (ByValue = false) or a constant.
template <class Op, bool ByValue>
struct BinaryApply {
  Op op;
  const float* b;
  float val;
  __device__ __forceinline__ float operator()(const float* a, int64_t i) const {
    return op(a[i], ByValue ? val : b[i]);
  }
  __device__ __forceinline__ float4 vec(const float* a, int64_t i4) const {
    const float4 x = reinterpret_cast<const float4*>(a)[i4];
    const float4 y = ByValue ? make_float4(val, val, val, val) : reinterpret_cast<const float4*>(b)[i4];
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
template <typename T, class Op, bool ByValue>
__global__ void binary_kernel(const T* a, const T* b, compute_t<T> val, T* out, int64_t n, Op op) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) {
    compute_t<T> y;
    if constexpr (ByValue) y = val;
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
template <typename T, bool ByValue>
__global__ void compare_kernel(const T* a, const T* b, compute_t<T> val, bool* out, int64_t n, CompareOp op) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) {
    compute_t<T> y;
    if constexpr (ByValue) y = val;
    else y = widen(b[i]);
    out[i] = compare(op, widen(a[i]), y);
  }
}

// a, out (n,) compact of a floating T other than float32.
template <typename T, class Op>
__global__ void unary_kernel(const T* a, T* out, int64_t n, Op op) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) out[i] = convert<T>(op(widen(a[i])));
}

// out = op(a, b) (b non-null) or op(a, val), all of one dtype in Mask; false when an
// integer exponent was negative.
template <unsigned Mask, class Op>
bool run_binary(const char* name, Op op, const Array& a, const Array* b, const Scalar& val, Array& out) {
  const int64_t n = out.size;
  if (n == 0) return true;
  bool ok = true;
  dispatch<Mask>(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T v = scalar_as<T>(val);  // the scalar in a's dtype (then its compute type)
    if constexpr (std::is_same_v<T, float>) {
      if (b != nullptr)
        launch_f32(name, a.data<float>(), b->data<float>(), out.data<float>(), n,
                   BinaryApply<Op, false>{op, b->data<float>(), 0.f});
      else
        launch_f32(name, a.data<float>(), nullptr, out.data<float>(), n, BinaryApply<Op, true>{op, nullptr, v});
    } else {
      constexpr bool kIntPower = std::is_same_v<Op, PowerOp> && kWrapInt<T>;
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
      CHECK_LAUNCH(name);
      ok = !(negative && negative->read());
    }
  });
  return ok;
}

template <class Op>
void run_unary(const char* name, Op op, const Array& a, Array& out) {
  const int64_t n = out.size;
  if (n == 0) return;
  dispatch<kFloatingMask>(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      launch_f32(name, a.data<float>(), nullptr, out.data<float>(), n, UnaryApply<Op>{op});
    } else {
      unary_kernel<T, Op><<<grid_for(n), kThreads>>>(a.data<T>(), out.data<T>(), n, op);
      CHECK_LAUNCH(name);
    }
  });
}

// ---- row broadcast: out = f(full, row) with row a (cols,) run broadcast over the rows ----
// div on floating T only; a warp-uniform branch on op, one kernel per dtype.
template <typename T>
__global__ void ewise_rows_kernel(const T* x, const T* y, T* out, int64_t n, int64_t cols, RowOp op, bool swap) {
  using C = compute_t<T>;
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) {
    const C r = widen(y[i % cols]), u = widen(x[i]);
    const C p = swap ? r : u, q = swap ? u : r;
    C v;
    if (op == RowOp::kAdd) {
      v = AddOp{}(p, q);
    } else if (op == RowOp::kMul) {
      v = MulOp{}(p, q);
    } else {
      if constexpr (std::is_floating_point_v<C>) v = DivOp{}(p, q);
      else v = p;  // unreachable: the host rejects div on other dtypes
    }
    out[i] = convert<T>(v);
  }
}

}  // namespace

bool launch_binary(const char* name, BinaryOp op, const Array& a, const Array* b, Scalar val, Array& out) {
  switch (op) {
    case BinaryOp::kAdd: return run_binary<kAllMask>(name, AddOp{}, a, b, val, out);
    case BinaryOp::kMul: return run_binary<kAllMask>(name, MulOp{}, a, b, val, out);
    case BinaryOp::kDiv: return run_binary<kFloatingMask>(name, DivOp{}, a, b, val, out);
    case BinaryOp::kPower: return run_binary<kNumericMask>(name, PowerOp{}, a, b, val, out);
    case BinaryOp::kMaximum: return run_binary<kAllMask>(name, MaximumOp{}, a, b, val, out);
    case BinaryOp::kReluGrad: return run_binary<kFloatingMask>(name, ReluGradOp{}, a, b, val, out);
  }
  return true;
}

void launch_compare(const char* name, CompareOp op, const Array& a, const Array* b, Scalar val, Array& out) {
  const int64_t n = out.size;
  if (n == 0) return;
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const compute_t<T> v = widen(scalar_as<T>(val));  // the scalar in a's dtype first, as numpy converts it
    if (b != nullptr)
      compare_kernel<T, false><<<grid_for(n), kThreads>>>(a.data<T>(), b->data<T>(), v, out.data<bool>(), n, op);
    else
      compare_kernel<T, true><<<grid_for(n), kThreads>>>(a.data<T>(), nullptr, v, out.data<bool>(), n, op);
    CHECK_LAUNCH(name);
  });
}

void launch_unary(const char* name, UnaryOp op, const Array& a, Array& out) {
  switch (op) {
    case UnaryOp::kLog: return run_unary(name, LogOp{}, a, out);
    case UnaryOp::kExp: return run_unary(name, ExpOp{}, a, out);
    case UnaryOp::kTanh: return run_unary(name, TanhOp{}, a, out);
  }
}

void launch_rows(RowOp op, const Array& full, const Array& row, int64_t row_offset, Array& out, int64_t cols,
                 bool swap) {
  const int64_t n = out.size;
  if (n == 0) return;
  dispatch(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ewise_rows_kernel<T><<<grid_for(n), kThreads>>>(full.data<T>(), row.data<T>() + row_offset, out.data<T>(), n,
                                                    cols, op, swap);
    CHECK_LAUNCH("ewise_rows_kernel");
  });
}

}  // namespace cuda
}  // namespace needle
