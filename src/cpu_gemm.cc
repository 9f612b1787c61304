// Single-precision GEMM for the CPU backend (see cpu_gemm.h).
#include "cpu_gemm.h"

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace needle {
namespace cpu {

// ---------------------------------------------------------------------------
// Reference
// ---------------------------------------------------------------------------
void sgemm_naive(int64_t M, int64_t N, int64_t K,
                 const float* A, int64_t rsa, int64_t csa,
                 const float* B, int64_t rsb, int64_t csb,
                 float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += A[i * rsa + k * csa] * B[k * rsb + j * csb];
      C[i * ldc + j] = acc;
    }
  }
}

// ---------------------------------------------------------------------------
// Blocked path: pack a K-slab of B row-contiguously, then stream rows of A.
// ---------------------------------------------------------------------------
namespace {
constexpr int64_t KC = 256;
constexpr int64_t NC = 1024;
}  // namespace

void sgemm(int64_t M, int64_t N, int64_t K,
           const float* A, int64_t rsa, int64_t csa,
           const float* B, int64_t rsb, int64_t csb,
           float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
  std::vector<float> bpack(static_cast<size_t>(KC * NC));
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = 0; j < nc; ++j) bpack[k * nc + j] = B[(pc + k) * rsb + (jc + j) * csb];
      const float* bp = bpack.data();
#pragma omp parallel for schedule(static) if (M * nc * kc > (1 << 18))
      for (int64_t i = 0; i < M; ++i) {
        float* c = C + i * ldc + jc;
        for (int64_t k = 0; k < kc; ++k) {
          const float a = A[i * rsa + (pc + k) * csa];
          const float* b = bp + k * nc;
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) c[j] += a * b[j];
        }
      }
    }
  }
}

const char* sgemm_kernel_name() { return "blocked-autovec"; }

}  // namespace cpu
}  // namespace needle
