// The GEMM engine's shared pieces: the register-blocked micro-kernels over
// packed (or in-place) operands with their edge tiles, the depth of the KC
// slabs, and the per-thread scratch buffers. Used by the plain GEMM (gemm.cc)
// and the implicit-GEMM convolution (conv.cc), which differ only in how they
// pack A and B. Included by those two files only.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "gemm_kernels.h"

namespace needle {
namespace cpu {
namespace gemm_detail {

// Below this many multiply-adds (~10 us on one core) a product runs on one
// thread: waking a worker costs microseconds, more on a busy machine.
constexpr int64_t kParallelFlops = int64_t(1) << 21;

// ---------------------------------------------------------------------------
// Micro-kernel: C[MR x NR] (+)= Ap (MR x kc, k-major) * Bp (kc x NR, k-major).
// ---------------------------------------------------------------------------
// A is read at ap[i * ars + k * acs]: packed strips (ars = 1, acs = MR), or
// rows of A in place (ars = row stride, acs = 1) when a product has so few
// columns that packing A would cost more than the multiply.
template <typename F, int MR, int NV>
inline void micro_kernel_strided(int64_t kc, const F* __restrict ap, int64_t ars, int64_t acs,
                                 const F* __restrict bp, F* c, int64_t ldc, bool accumulate) {
  using V = Vec<F>;
  using vf = typename V::v;
  constexpr int VW = V::W, NR = NV * VW;
  // The C tile is read (or written) only after the k loop: fetch its lines
  // now, so that the misses (C is often larger than L2) overlap the FMAs.
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __builtin_prefetch(c + i * ldc, 1, 3);
    __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
  }
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();

  for (int64_t k = 0; k < kc; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = V::load(bp + j * VW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf a = V::bcast(ap + i * ars);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(a, b[j], acc[i][j]);
    }
    ap += acs;
    bp += NR;
  }

#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      F* p = c + i * ldc + j * VW;
      V::storeu(p, accumulate ? V::add(V::loadu(p), acc[i][j]) : acc[i][j]);
    }
  }
}

template <typename F, int MR, int NV>
inline void micro_kernel(int64_t kc, const F* __restrict ap, const F* __restrict bp, F* c, int64_t ldc,
                         bool accumulate) {
  micro_kernel_strided<F, MR, NV>(kc, ap, 1, MR, bp, c, ldc, accumulate);
}

// Adds (or writes) the valid mr x nr corner of a scratch tile into C.
template <typename F, int MR, int NV>
inline void write_tile(const F* tile, F* c, int64_t ldc, bool accumulate, int64_t mr, int64_t nr) {
  constexpr int NR = NV * Vec<F>::W;
  for (int64_t i = 0; i < mr; ++i) {
    F* ci = c + i * ldc;
    const F* ti = tile + i * NR;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) ci[j] += ti[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = ti[j];
    }
  }
}

// An edge tile (mr < MR or nr < NR): run the full kernel into a scratch tile,
// then write back only the valid mr x nr corner.
template <typename F, int MR, int NV>
inline void edge_kernel(int64_t kc, const F* ap, const F* bp, F* c, int64_t ldc, bool accumulate, int64_t mr,
                        int64_t nr) {
  constexpr int NR = NV * Vec<F>::W;
  alignas(64) F tile[MR * NR];
  micro_kernel<F, MR, NV>(kc, ap, bp, tile, NR, false);
  write_tile<F, MR, NV>(tile, c, ldc, accumulate, mr, nr);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Depth of the KC slabs for a K-deep product: as few slabs as KC allows, of
// equal depth (a multiple of 4, at most KC), so that no thin last slab pays a
// full pass over C for a few multiply-adds (K = 2048: 6 x 344, not 5 x 384 +
// 128).
template <typename F>
int64_t kc_step(int64_t K) {
  constexpr int64_t KC = Blocking<F>::KC;
  const int64_t slabs = (K + KC - 1) / KC;
  return std::min(KC, round_up((K + slabs - 1) / slabs, 4));
}

// ---------------------------------------------------------------------------
// Per-thread scratch (grown on demand, never shrunk), one buffer per role and
// shared by all dtypes: no thread ever holds two users of one role at once.
// ---------------------------------------------------------------------------
enum Role { kPackA, kPackB, kSharedB, kPrivateB, kCTile, kConvA, kConvB, kConvC, kNumRoles };
// A buffer of at least `bytes` for this thread's `role` (gemm.cc); valid until the
// thread asks for the same role again.
void* scratch_bytes(Role role, size_t bytes);

template <typename F>
F* scratch(Role role, int64_t n) {
  return static_cast<F*>(scratch_bytes(role, size_t(n) * sizeof(F)));
}

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace needle
