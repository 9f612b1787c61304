// Single-precision GEMM for the CPU backend (see cpu_gemm.h).
//
// BLIS-style: for each NC-wide column panel and KC-deep slab, B is packed into
// NR-wide strips (k-major, NR floats per k), then for each MC-tall row block A
// is packed into MR-tall strips (MR floats per k), and a register-blocked
// micro-kernel multiplies one A strip by one B strip into an MR x NR tile of C
// held entirely in vector registers. Packing reads A and B through their row
// and column strides, so transposed views cost nothing extra, and pads the
// ragged edges with zeros, so the micro-kernel never branches on shape; only
// the final write of an edge tile is masked.
//
// Threads: C is cut into chunks of whole register tiles that the threads of
// the pool (cpu_threads.h) claim one at a time; every chunk packs what it
// reads itself, so there is no barrier inside the product, and the caller
// waits only for chunks already started, never for a thread that has not
// woken up yet.
#include "cpu_gemm.h"
#include "cpu_threads.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
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

namespace {

// ---------------------------------------------------------------------------
// Vector abstraction: one register of VW floats, chosen at build time.
// ---------------------------------------------------------------------------
#if defined(__AVX512F__)
using vf = __m512;
constexpr int VW = 16;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_load_ps(p); }     // packed data, 64-byte aligned
inline vf vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vstoreu(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vbcast(const float* p) { return _mm512_set1_ps(*p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
// 12 x 32: 24 accumulators, 2 B loads and 12 broadcasts per k. A second,
// 16-wide 14 x 16 kernel serves products with N <= 16 (conv layers with few
// output channels), where a 32-wide strip would be half zeros.
constexpr int MR = 12, NV = 2;
constexpr int MR_NARROW = 14;
const char* const kKernelName = "avx512 12x32 (+14x16 for N <= 16)";
#elif defined(__AVX2__) && defined(__FMA__)
using vf = __m256;
constexpr int VW = 8;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_load_ps(p); }
inline vf vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vstoreu(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vbcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
// 6 x 16: 12 accumulators, 2 B loads and 6 broadcasts per k (16 ymm registers).
constexpr int MR = 6, NV = 2;
constexpr int MR_NARROW = 0;  // none: 16 columns already fill the strip
const char* const kKernelName = "avx2+fma 6x16";
#else
// Portable: GCC/Clang vector extensions (SSE2 on any x86-64, NEON on ARM).
typedef float vf __attribute__((vector_size(16)));
constexpr int VW = 4;
inline vf vzero() { return vf{0.0f, 0.0f, 0.0f, 0.0f}; }
inline vf vload(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline vf vloadu(const float* p) { vf v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void vstoreu(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf vbcast(const float* p) { const float x = *p; return vf{x, x, x, x}; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
// 4 x 8: 8 accumulators, fits the 16 registers of SSE2 / NEON's 32.
constexpr int MR = 4, NV = 2;
constexpr int MR_NARROW = 0;
const char* const kKernelName = "portable 4x8";
#endif

// Cache blocking, tuned on a Xeon with 48 KiB L1d and 2 MiB L2 per core
// (KC 128..512 x MC 96..384 swept; 384 x 384 was best at 1024-2048): the
// MC x KC block of A (576 KiB) stays in L2, a KC x NR strip of B is reused by
// every A strip of the block from L1/L2, the KC x NC panel streams from L3.
constexpr int64_t KC = 384;
constexpr int64_t MC_STRIPS = 32;  // MC = MC_STRIPS * MR
constexpr int64_t NC = 2048;

constexpr int64_t kDirectAStrips = 2;
constexpr int64_t kChunksPerThread = 3;
constexpr int64_t kMinChunkStrips = 4;

// Below this many multiply-adds (~10 us on one core) a product runs on one
// thread: waking a worker costs microseconds, more on a busy machine.
constexpr int64_t kParallelFlops = int64_t(1) << 21;

// ---------------------------------------------------------------------------
// Micro-kernel: C[MR x NR] (+)= Ap (MR x kc, k-major) * Bp (kc x NR, k-major).
// ---------------------------------------------------------------------------
// A is read at ap[i * ars + k * acs]: packed strips (ars = 1, acs = MR), or
// rows of A in place (ars = row stride, acs = 1) when a product has so few
// columns that packing A would cost more than the multiply.
template <int MR, int NV>
inline void micro_kernel_strided(int64_t kc, const float* __restrict ap, int64_t ars, int64_t acs,
                                 const float* __restrict bp, float* c, int64_t ldc, bool accumulate) {
  constexpr int NR = NV * VW;
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = vzero();

  for (int64_t k = 0; k < kc; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = vload(bp + j * VW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf a = vbcast(ap + i * ars);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = vfma(a, b[j], acc[i][j]);
    }
    ap += acs;
    bp += NR;
  }

#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* p = c + i * ldc + j * VW;
      vstoreu(p, accumulate ? vadd(vloadu(p), acc[i][j]) : acc[i][j]);
    }
  }
}

template <int MR, int NV>
inline void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, float* c, int64_t ldc,
                         bool accumulate) {
  micro_kernel_strided<MR, NV>(kc, ap, 1, MR, bp, c, ldc, accumulate);
}

// Adds (or writes) the valid mr x nr corner of a scratch tile into C.
template <int MR, int NV>
inline void write_tile(const float* tile, float* c, int64_t ldc, bool accumulate, int64_t mr, int64_t nr) {
  constexpr int NR = NV * VW;
  for (int64_t i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    const float* ti = tile + i * NR;
    if (accumulate) {
      for (int64_t j = 0; j < nr; ++j) ci[j] += ti[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = ti[j];
    }
  }
}

// An edge tile (mr < MR or nr < NR): run the full kernel into a scratch tile,
// then write back only the valid mr x nr corner.
template <int MR, int NV>
inline void edge_kernel(int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, bool accumulate,
                        int64_t mr, int64_t nr) {
  constexpr int NR = NV * VW;
  alignas(64) float tile[MR * NR];
  micro_kernel<MR, NV>(kc, ap, bp, tile, NR, false);
  write_tile<MR, NV>(tile, c, ldc, accumulate, mr, nr);
}

// ---------------------------------------------------------------------------
// Packing (zero-padded to whole strips)
// ---------------------------------------------------------------------------
// B[k][j] = b[k * rsb + j * csb], k < kc, j < nc  ->  strips of NR columns,
// each kc x NR row-major. Unit column stride (B as stored) copies rows of NR;
// unit row stride (a transposed view) walks each column contiguously.
template <int NV>
void pack_b(int64_t kc, int64_t nc, const float* b, int64_t rsb, int64_t csb, float* __restrict out) {
  constexpr int NR = NV * VW;
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j0);
    float* o = out + j0 * kc;
    const float* bj = b + j0 * csb;
    if (nr == NR && csb == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = bj + k * rsb;
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) vstoreu(o + k * NR + j * VW, vloadu(src + j * VW));
      }
    } else if (csb == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = bj + k * rsb;
        float* dst = o + k * NR;
        int64_t j = 0;
        for (; j < nr; ++j) dst[j] = src[j];
        for (; j < NR; ++j) dst[j] = 0.0f;
      }
    } else {
      for (int64_t j = 0; j < nr; ++j) {
        const float* src = bj + j * csb;
        for (int64_t k = 0; k < kc; ++k) o[k * NR + j] = src[k * rsb];
      }
      for (int64_t j = nr; j < NR; ++j)
        for (int64_t k = 0; k < kc; ++k) o[k * NR + j] = 0.0f;
    }
  }
}

// A[i][k] = a[i * rsa + k * csa], i < mc, k < kc  ->  strips of MR rows, each
// stored k-major (MR floats per k). Row-major A (csa == 1) is transposed in
// MR x 8 blocks so that both the reads and the writes stay sequential.
template <int MR>
void pack_a(int64_t mc, int64_t kc, const float* a, int64_t rsa, int64_t csa, float* __restrict out) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    float* o = out + i0 * kc;
    const float* ai = a + i0 * rsa;
    if (csa == 1) {
      if (mr == MR) {
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            const float* src = ai + i * rsa + k;
#pragma GCC unroll 8
            for (int kk = 0; kk < 8; ++kk) o[(k + kk) * MR + i] = src[kk];
          }
        }
        for (; k < kc; ++k)
          for (int i = 0; i < MR; ++i) o[k * MR + i] = ai[i * rsa + k];
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          int64_t i = 0;
          for (; i < mr; ++i) o[k * MR + i] = ai[i * rsa + k];
          for (; i < MR; ++i) o[k * MR + i] = 0.0f;
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = ai + k * csa;
        float* dst = o + k * MR;
        int64_t i = 0;
        for (; i < mr; ++i) dst[i] = src[i * rsa];
        for (; i < MR; ++i) dst[i] = 0.0f;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Per-thread scratch for the packed panels (grown on demand, never shrunk).
// ---------------------------------------------------------------------------
struct Scratch {
  float* ptr = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(ptr); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(ptr);
      ptr = nullptr;
      cap = 0;
      const size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      ptr = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (ptr == nullptr) throw std::bad_alloc();
      cap = n;
    }
    return ptr;
  }
};

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One thread's share: rows [m0, m1) and columns [n0, n1) of C, all of K.
template <int MR, int NV>
void gemm_block(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, const float* A, int64_t rsa, int64_t csa,
                const float* B, int64_t rsb, int64_t csb, float* C, int64_t ldc, float* apack, float* bpack) {
  constexpr int NR = NV * VW;
  constexpr int64_t MC = MC_STRIPS * MR;
  // Each A strip is reused by every NR-wide strip of the panel: with only
  // one or two of them, reading A in place beats packing it.
  const bool direct_a = csa == 1 && n1 - n0 <= kDirectAStrips * NR;
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool accumulate = pc > 0;
      pack_b<NV>(kc, nc, B + pc * rsb + jc * csb, rsb, csb, bpack);
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min(MC, m1 - ic);
        const float* a = A + ic * rsa + pc * csa;
        if (direct_a) {
          // Whole strips read A in place; a ragged last strip is packed.
          const int64_t full = mc / MR * MR;
          if (full < mc) pack_a<MR>(mc - full, kc, a + full * rsa, rsa, csa, apack);
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int64_t nr = std::min<int64_t>(NR, nc - jr);
            const float* bp = bpack + jr * kc;
            for (int64_t ir = 0; ir < full; ir += MR) {
              float* c = C + (ic + ir) * ldc + jc + jr;
              if (nr == NR) {
                micro_kernel_strided<MR, NV>(kc, a + ir * rsa, rsa, 1, bp, c, ldc, accumulate);
              } else {
                alignas(64) float tile[MR * NR];
                micro_kernel_strided<MR, NV>(kc, a + ir * rsa, rsa, 1, bp, tile, NR, false);
                write_tile<MR, NV>(tile, c, ldc, accumulate, MR, nr);
              }
            }
            if (full < mc)
              edge_kernel<MR, NV>(kc, apack, bp, C + (ic + full) * ldc + jc + jr, ldc, accumulate, mc - full, nr);
          }
          continue;
        }
        pack_a<MR>(mc, kc, a, rsa, csa, apack);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          const float* bp = bpack + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            float* c = C + (ic + ir) * ldc + jc + jr;
            if (mr == MR && nr == NR) {
              micro_kernel<MR, NV>(kc, apack + ir * kc, bp, c, ldc, accumulate);
            } else {
              edge_kernel<MR, NV>(kc, apack + ir * kc, bp, c, ldc, accumulate, mr, nr);
            }
          }
        }
      }
    }
  }
}

template <int MR, int NV>
void gemm_thread(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, const float* A, int64_t rsa, int64_t csa,
                 const float* B, int64_t rsb, int64_t csb, float* C, int64_t ldc) {
  constexpr int NR = NV * VW;
  constexpr int64_t MC = MC_STRIPS * MR;
  if (m0 >= m1 || n0 >= n1) return;
  static thread_local Scratch apack, bpack;
  const int64_t kc = std::min(KC, K);
  float* ap = apack.get(size_t(round_up(std::min(MC, m1 - m0), MR) * kc));
  float* bp = bpack.get(size_t(round_up(std::min(NC, n1 - n0), NR) * kc));
  gemm_block<MR, NV>(m0, m1, n0, n1, K, A, rsa, csa, B, rsb, csb, C, ldc, ap, bp);
}

// Products too thin to fill a register tile: one row or one column of C.
// C (1 x N) = a (1 x K) @ B: accumulate rows of B when they are contiguous.
void gemv_row(int64_t N, int64_t K, const float* A, int64_t csa, const float* B, int64_t rsb, int64_t csb, float* C) {
  if (csb == 1) {
    std::fill(C, C + N, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float a = A[k * csa];
      const float* b = B + k * rsb;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) C[j] += a * b[j];
    }
  } else {
    for (int64_t j = 0; j < N; ++j) {
      const float* b = B + j * csb;
      float acc = 0.0f;
      if (csa == 1 && rsb == 1) {
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; ++k) acc += A[k] * b[k];
      } else {
        for (int64_t k = 0; k < K; ++k) acc += A[k * csa] * b[k * rsb];
      }
      C[j] = acc;
    }
  }
}

// Splits C into chunks of whole register tiles and hands them to the threads
// dynamically: a thread that loses its core to another process only delays the
// chunk it holds, the others take the rest. Chunks are at least kMinChunkStrips
// strips tall (a chunk packs its own slices of A and B, so a thin chunk would
// pack B over and over) and at most one MC x NC block.
template <int MR, int NV>
void gemm_parallel(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B,
                   int64_t rsb, int64_t csb, float* C, int64_t ldc) {
  constexpr int NR = NV * VW;
  const int64_t mstrips = (M + MR - 1) / MR, nstrips = (N + NR - 1) / NR;
  int nt = M * N * K >= kParallelFlops ? pool_threads() : 1;
  if (nt == 1 || mstrips * nstrips == 1) {
    gemm_thread<MR, NV>(0, M, 0, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
    return;
  }
  // Aim for kChunksPerThread chunks per thread, splitting M first.
  const int64_t want = int64_t(nt) * kChunksPerThread;
  int64_t cm = std::max<int64_t>((mstrips + want - 1) / want, std::min<int64_t>(kMinChunkStrips, mstrips));
  cm = std::min<int64_t>(cm, MC_STRIPS);
  const int64_t mchunks = (mstrips + cm - 1) / cm;
  const int64_t nsplit = std::max<int64_t>(1, (want + mchunks - 1) / mchunks);
  int64_t cn = std::max<int64_t>(1, (nstrips + nsplit - 1) / nsplit);
  cn = std::min<int64_t>(cn, std::max<int64_t>(1, NC / NR));
  const int64_t nchunks = (nstrips + cn - 1) / cn;
  parallel_for(mchunks * nchunks, [&](int64_t t) {
    const int64_t ci = t / nchunks, cj = t % nchunks;
    const int64_t m0 = ci * cm * MR, m1 = std::min(M, m0 + cm * MR);
    const int64_t n0 = cj * cn * NR, n1 = std::min(N, n0 + cn * NR);
    gemm_thread<MR, NV>(m0, m1, n0, n1, K, A, rsa, csa, B, rsb, csb, C, ldc);
  });
}

}  // namespace

// ---------------------------------------------------------------------------
// Fast path
// ---------------------------------------------------------------------------
void sgemm(int64_t M, int64_t N, int64_t K,
           const float* A, int64_t rsa, int64_t csa,
           const float* B, int64_t rsb, int64_t csb,
           float* C, int64_t ldc) {
  // A is (M, K) strided (rsa, csa), B is (K, N) strided (rsb, csb), C is (M, N)
  // with row stride ldc and unit column stride.
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  if (M == 1) {
    gemv_row(N, K, A, csa, B, rsb, csb, C);
    return;
  }
  if (N == 1) {
    // C (M x 1) = A @ b: the same as a row product of b^T A^T, written with
    // stride ldc; computed directly, one dot product per row.
    for (int64_t i = 0; i < M; ++i) {
      const float* a = A + i * rsa;
      float acc = 0.0f;
      if (csa == 1 && rsb == 1) {
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; ++k) acc += a[k] * B[k];
      } else {
        for (int64_t k = 0; k < K; ++k) acc += a[k * csa] * B[k * rsb];
      }
      C[i * ldc] = acc;
    }
    return;
  }

#if defined(__AVX512F__)
  if (N <= VW) {
    gemm_parallel<MR_NARROW, 1>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
    return;
  }
#endif
  gemm_parallel<MR, NV>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
}

const char* sgemm_kernel_name() { return kKernelName; }

}  // namespace cpu
}  // namespace needle
