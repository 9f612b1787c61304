// GEMM over strided operands for the CPU backend, for every numeric dtype.
//
// C (M x N, row stride ldc, unit column stride) = A (M x K) @ B (K x N), where
// A[i][k] = A[i * rsa + k * csa] and B[k][j] = B[k * rsb + j * csb] (strides in
// elements, >= 0; 0 broadcasts). Packing reads operands through their strides,
// so transposed and broadcast views need no copy. K == 0 writes zeros.
//
// Instantiated for T = float, double, half_t, bfloat16_t, int32_t, int64_t,
// uint8_t (bool is rejected before it gets here). Halves are multiplied in
// float32 and rounded once into C; integers wrap around modulo 2^bits.
#pragma once
#include <cstdint>

#include "common/half.h"

namespace needle {
namespace cpu {

// The fast path: packed, register-blocked, multi-threaded (see gemm.cc).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
          const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc);

// The reference: a plain triple loop, accumulating in the compute type (float
// for float32 and the halves, double for float64, int64 for the integers).
template <typename T>
void gemm_naive(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc);

// Name of the float32 micro-kernel the fast path dispatches to on this CPU.
const char* sgemm_kernel_name();

}  // namespace cpu
}  // namespace needle
