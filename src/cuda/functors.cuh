// Device-only functors: the transcendentals (device intrinsics) and the warp /
// block reductions. The arithmetic and comparison functors, shared with the CPU
// kernels, are in common/functors.h.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/convert.h"
#include "common/functors.h"

namespace needle {
namespace cuda {

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
