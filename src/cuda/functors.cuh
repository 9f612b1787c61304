// Device functors shared by the kernel families: one per elementwise op, on the
// compute type C (float for the halves, the storage type otherwise), and the
// warp / block reductions built on them. Each mirrors numpy semantics: IEEE
// division, pow NaN for a negative base with a fractional exponent,
// NaN-propagating maximum, integers wrapping like unsigned C arithmetic, bool
// add/mul/maximum as or/and/or.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/convert.h"

namespace needle {
namespace cuda {

template <typename C>
constexpr bool kWrapInt = std::is_integral_v<C> && std::is_signed_v<C>;

struct AddOp {
  template <typename C>
  __device__ __forceinline__ C operator()(C x, C y) const {
    if constexpr (kWrapInt<C>) return C(std::make_unsigned_t<C>(x) + std::make_unsigned_t<C>(y));
    else return static_cast<C>(x + y);
  }
};
struct MulOp {
  template <typename C>
  __device__ __forceinline__ C operator()(C x, C y) const {
    if constexpr (kWrapInt<C>) return C(std::make_unsigned_t<C>(x) * std::make_unsigned_t<C>(y));
    else return static_cast<C>(x * y);
  }
};
struct DivOp {  // floating types only
  template <typename C>
  __device__ __forceinline__ C operator()(C x, C y) const { return x / y; }
};
struct PowerOp {
  // Set (when non-null) if an integer exponent is negative: there is no integer result
  // and numpy raises; the host reads the flag after the kernel and raises ValueError.
  int* negative = nullptr;
  template <typename C>
  __device__ __forceinline__ C operator()(C x, C y) const {
    if constexpr (std::is_same_v<C, float>) {
      return powf(x, y);
    } else if constexpr (std::is_same_v<C, double>) {
      return pow(x, y);
    } else {
      if constexpr (std::is_signed_v<C>) {
        if (y < 0) {
          *negative = 1;
          return C(0);
        }
      }
      // Square-and-multiply in unsigned arithmetic wraps like repeated products.
      using U = std::make_unsigned_t<C>;
      U result = 1, base = U(x);
      for (U e = U(y); e; e >>= 1) {
        if (e & 1u) result = U(result * base);
        base = U(base * base);
      }
      return C(result);
    }
  }
};
struct MaximumOp {
  // np.maximum propagates NaN from either side; fmaxf would drop it.
  template <typename C>
  __device__ __forceinline__ C operator()(C x, C y) const { return (x > y || x != x) ? x : y; }
};

// Comparisons write bool.
struct EqOp { template <typename C> __device__ __forceinline__ bool operator()(C x, C y) const { return x == y; } };
struct NeOp { template <typename C> __device__ __forceinline__ bool operator()(C x, C y) const { return x != y; } };
struct LtOp { template <typename C> __device__ __forceinline__ bool operator()(C x, C y) const { return x < y; } };
struct LeOp { template <typename C> __device__ __forceinline__ bool operator()(C x, C y) const { return x <= y; } };
struct GtOp { template <typename C> __device__ __forceinline__ bool operator()(C x, C y) const { return x > y; } };
struct GeOp { template <typename C> __device__ __forceinline__ bool operator()(C x, C y) const { return x >= y; } };

// Transcendentals: float and double (halves compute in float).
struct LogOp {
  __device__ __forceinline__ float operator()(float x) const { return logf(x); }
  __device__ __forceinline__ double operator()(double x) const { return log(x); }
};
struct ExpOp {
  __device__ __forceinline__ float operator()(float x) const { return expf(x); }
  __device__ __forceinline__ double operator()(double x) const { return exp(x); }
};
struct TanhOp {
  __device__ __forceinline__ float operator()(float x) const { return tanhf(x); }
  __device__ __forceinline__ double operator()(double x) const { return tanh(x); }
};

// ---- reductions ----
struct SumReduce {
  template <typename C>
  __device__ __forceinline__ static C identity() { return C(0); }
  template <typename C>
  __device__ __forceinline__ static C combine(C x, C y) { return AddOp{}(x, y); }
};
struct MaxReduce {
  template <typename C>
  __device__ __forceinline__ static C identity() {
    if constexpr (std::is_floating_point_v<C>) return C(-INFINITY);
    else if constexpr (std::is_same_v<C, int64_t>) return INT64_MIN;
    else if constexpr (std::is_same_v<C, int32_t>) return INT32_MIN;
    else return C(0);  // uint8, bool
  }
  template <typename C>
  __device__ __forceinline__ static C combine(C x, C y) { return MaximumOp{}(x, y); }
};

// Lane exchange for every accumulator type (types narrower than int travel as int).
template <typename C>
__device__ __forceinline__ C shfl_xor(C v, int o) {
  if constexpr (sizeof(C) < 4) return static_cast<C>(__shfl_xor_sync(0xffffffffu, static_cast<int>(v), o));
  else return __shfl_xor_sync(0xffffffffu, v, o);
}

template <class R, typename C>
__device__ __forceinline__ C warp_reduce(C v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = R::combine(v, shfl_xor(v, o));
  return v;
}

// The one block reduction: R over one value per thread (blockDim.x a multiple of 32,
// <= 1024), returned to every thread. partial holds >= 32 values; called by all
// threads of the block (the first barrier guards partial against a previous call).
template <class R, typename C>
__device__ C block_reduce(C v, C* partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce<R>(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? partial[lane] : R::template identity<C>();
    v = warp_reduce<R>(v);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

}  // namespace cuda
}  // namespace needle
