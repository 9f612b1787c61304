// Single-precision GEMM over strided operands for the CPU backend.
//
// C (M x N, row-major, leading dimension ldc) = A (M x K) @ B (K x N), where
// A[i][k] = A[i * rsa + k * csa] and B[k][j] = B[k * rsb + j * csb]: packing
// reads operands through their strides, so transposed views need no copy.
#pragma once
#include <cstdint>

namespace needle {
namespace cpu {

// The fast path: packed, register-blocked, multi-threaded (see cpu_gemm.cc).
void sgemm(int64_t M, int64_t N, int64_t K,
           const float* A, int64_t rsa, int64_t csa,
           const float* B, int64_t rsb, int64_t csb,
           float* C, int64_t ldc);

// The reference: a plain triple loop with a float accumulator per element.
void sgemm_naive(int64_t M, int64_t N, int64_t K,
                 const float* A, int64_t rsa, int64_t csa,
                 const float* B, int64_t rsb, int64_t csb,
                 float* C, int64_t ldc);

// Name of the micro-kernel the fast path dispatches to on this CPU.
const char* sgemm_kernel_name();

}  // namespace cpu
}  // namespace needle
