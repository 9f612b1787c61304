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
// the pool (cpu_threads.h) claim one at a time. When C is cut along M, B is
// packed once, in slices claimed the same way, into a buffer the chunks share
// (a chunk never waits for a slice: one still being packed elsewhere it packs
// privately); otherwise each chunk packs what it reads itself. Either way the
// caller waits only for work already started, never for a thread that has not
// woken up yet, and no thread ever spins.
#include "gemm.h"
#include "threads.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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
// Threads share one packed copy of B when C is cut along M: it is packed in
// about kPackTasksPerThread slices per thread, and is at most kSharedBFloats
// floats (32 MiB); wider products are done in column groups of that size.
constexpr int64_t kPackTasksPerThread = 4;
// With B shared, smaller chunks cost no repacking of B: more of them shorten
// the wait for the last one when a thread runs slow (10 beat 3 and 6 at
// 256..2048 with 2 threads), and narrow ones read A in place.
constexpr int64_t kSharedChunksPerThread = 10;
constexpr int64_t kSharedBFloats = int64_t(1) << 23;

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
constexpr size_t kHugePage = size_t(1) << 21;

struct Scratch {
  float* ptr = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(ptr); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(ptr);
      ptr = nullptr;
      cap = 0;
      // Panels of a MiB or more sit on 2 MiB pages where the kernel allows
      // (packed B of a 2048-wide product spans thousands of 4 KiB pages).
      const bool huge = n * sizeof(float) >= (size_t(1) << 20);
      const size_t align = huge ? kHugePage : 64;
      const size_t bytes = (n * sizeof(float) + align - 1) / align * align;
      ptr = static_cast<float*>(std::aligned_alloc(align, bytes));
      if (ptr == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (huge) madvise(ptr, bytes, MADV_HUGEPAGE);
#endif
      cap = n;
    }
    return ptr;
  }
};

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Depth of the KC slabs for a K-deep product: as few slabs as KC allows, of
// equal depth (a multiple of 4, at most KC), so that no thin last slab pays a
// full pass over C for a few multiply-adds (K = 2048: 6 x 344, not 5 x 384 +
// 128).
int64_t kc_step(int64_t K) {
  const int64_t slabs = (K + KC - 1) / KC;
  return std::min(KC, round_up((K + slabs - 1) / slabs, 4));
}

// Rows [m0, m1) of C, columns [jc, jc + nc), one KC-deep slab (rows pc..pc+kc
// of B) whose panel is already packed: bstrip(jr) is the packed kc x NR strip
// of columns jc + jr.
template <int MR, int NV, class BStrip>
void gemm_panel(int64_t m0, int64_t m1, int64_t jc, int64_t nc, int64_t pc, int64_t kc, bool direct_a,
                const float* A, int64_t rsa, int64_t csa, const BStrip& bstrip, float* C, int64_t ldc,
                float* apack) {
  constexpr int NR = NV * VW;
  constexpr int64_t MC = MC_STRIPS * MR;
  const bool accumulate = pc > 0;
  for (int64_t ic = m0; ic < m1; ic += MC) {
    const int64_t mc = std::min(MC, m1 - ic);
    const float* a = A + ic * rsa + pc * csa;
    if (direct_a) {
      // Whole strips read A in place; a ragged last strip is packed.
      const int64_t full = mc / MR * MR;
      if (full < mc) pack_a<MR>(mc - full, kc, a + full * rsa, rsa, csa, apack);
      for (int64_t jr = 0; jr < nc; jr += NR) {
        const int64_t nr = std::min<int64_t>(NR, nc - jr);
        const float* bp = bstrip(jr);
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
      const float* bp = bstrip(jr);
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

// Each A strip is reused by every NR-wide strip of a panel: with only one or
// two of them, reading A in place beats packing it.
template <int NV>
bool direct_a_for(int64_t csa, int64_t width) {
  return csa == 1 && width <= kDirectAStrips * NV * VW;
}

// One thread's share: rows [m0, m1) and columns [n0, n1) of C, all of K,
// packing B panel by panel itself.
template <int MR, int NV>
void gemm_block(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, const float* A, int64_t rsa, int64_t csa,
                const float* B, int64_t rsb, int64_t csb, float* C, int64_t ldc, float* apack, float* bpack) {
  const bool direct_a = direct_a_for<NV>(csa, n1 - n0);
  const int64_t ks = kc_step(K);
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += ks) {
      const int64_t kc = std::min(ks, K - pc);
      pack_b<NV>(kc, nc, B + pc * rsb + jc * csb, rsb, csb, bpack);
      gemm_panel<MR, NV>(m0, m1, jc, nc, pc, kc, direct_a, A, rsa, csa,
                         [bpack, kc](int64_t jr) { return bpack + jr * kc; }, C, ldc, apack);
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

// How C is cut into chunks of whole register tiles: cm x cn strips each.
struct Chunks {
  int64_t cm, cn, mchunks, nchunks;
};

// Aims for kChunksPerThread chunks per thread, splitting M first. Chunks are
// at least kMinChunkStrips strips tall and at most one MC x NC block.
template <int MR, int NV>
Chunks plan_chunks(int64_t M, int64_t N, int nt, int64_t per_thread = kChunksPerThread) {
  constexpr int NR = NV * VW;
  const int64_t mstrips = (M + MR - 1) / MR, nstrips = (N + NR - 1) / NR;
  const int64_t want = int64_t(nt) * per_thread;
  Chunks c;
  c.cm = std::max<int64_t>((mstrips + want - 1) / want, std::min<int64_t>(kMinChunkStrips, mstrips));
  c.cm = std::min<int64_t>(c.cm, MC_STRIPS);
  c.mchunks = (mstrips + c.cm - 1) / c.cm;
  const int64_t nsplit = std::max<int64_t>(1, (want + c.mchunks - 1) / c.mchunks);
  c.cn = std::max<int64_t>(1, (nstrips + nsplit - 1) / nsplit);
  c.cn = std::min<int64_t>(c.cn, std::max<int64_t>(1, NC / NR));
  c.nchunks = (nstrips + c.cn - 1) / c.cn;
  return c;
}

// Columns [g0, g0 + gn) of C with B packed once for all threads. B is cut
// into slices (ss strips of one KC-deep panel), each packed into a buffer
// shared by all threads by whichever thread claims it first. One parallel_for
// runs a packing task per slice, then the chunks of C. Nobody ever waits for a
// slice: a chunk that needs one still being packed by another thread (say, one
// that lost its core to another process) packs a private copy of it and goes
// on, so the caller still waits only for chunks already started.
template <int MR, int NV>
void gemm_shared_b(int64_t M, int64_t g0, int64_t gn, int64_t K, const float* A, int64_t rsa, int64_t csa,
                   const float* B, int64_t rsb, int64_t csb, float* C, int64_t ldc, int nt) {
  constexpr int NR = NV * VW;
  constexpr int64_t MC = MC_STRIPS * MR;
  enum : int { kFree = 0, kPacking = 1, kReady = 2 };
  const Chunks ch = plan_chunks<MR, NV>(M, gn, nt, kSharedChunksPerThread);
  const int64_t nstrips = (gn + NR - 1) / NR, npad = nstrips * NR;
  const int64_t ks = kc_step(K), npanels = (K + ks - 1) / ks;
  const int64_t want = int64_t(nt) * kPackTasksPerThread;
  const int64_t ss = std::min(nstrips, std::max<int64_t>(1, (npanels * nstrips + want - 1) / want));
  const int64_t nslices = (nstrips + ss - 1) / ss, ptasks = npanels * nslices;
  // Panel p (rows p * ks.. of B) starts at p * ks * npad; its strip of columns
  // j (a multiple of NR) at + j * kc. A private copy keeps the same layout.
  static thread_local Scratch shared;
  float* const bshared = shared.get(size_t(npad * K));
  std::unique_ptr<std::atomic<int>[]> state(new std::atomic<int>[size_t(ptasks)]);
  for (int64_t i = 0; i < ptasks; ++i) state[i].store(kFree, std::memory_order_relaxed);
  auto pack_slice = [&](int64_t p, int64_t sl, float* panel) {
    const int64_t pc = p * ks, kc = std::min(ks, K - pc);
    const int64_t j0 = sl * ss * NR, j1 = std::min(gn, j0 + ss * NR);
    pack_b<NV>(kc, j1 - j0, B + pc * rsb + (g0 + j0) * csb, rsb, csb, panel + j0 * kc);
  };
  // Packs slice sl of panel p into the shared buffer if nobody has claimed it.
  auto try_claim = [&](int64_t p, int64_t sl) {
    std::atomic<int>& st = state[p * nslices + sl];
    int expected = kFree;
    if (!st.compare_exchange_strong(expected, kPacking, std::memory_order_acquire)) return expected == kReady;
    pack_slice(p, sl, bshared + p * ks * npad);
    st.store(kReady, std::memory_order_release);
    return true;
  };
  parallel_for(ptasks + ch.mchunks * ch.nchunks, [&](int64_t t) {
    if (t < ptasks) {
      try_claim(t / nslices, t % nslices);
      return;
    }
    t -= ptasks;
    const int64_t ci = t / ch.nchunks, cj = t % ch.nchunks;
    const int64_t m0 = ci * ch.cm * MR, m1 = std::min(M, m0 + ch.cm * MR);
    const int64_t n0 = cj * ch.cn * NR, n1 = std::min(gn, n0 + ch.cn * NR);
    static thread_local Scratch apack, bprivate;
    float* ap = apack.get(size_t(round_up(std::min(MC, m1 - m0), MR) * std::min(KC, K)));
    const bool direct_a = direct_a_for<NV>(csa, n1 - n0);
    const int64_t sl0 = n0 / NR / ss, sl1 = (n1 - 1) / NR / ss + 1;
    // Per slice of this chunk: the panel it is read from (shared or private).
    const float* local_base[64];
    std::unique_ptr<const float*[]> heap_base;
    const float** base = local_base;
    if (sl1 - sl0 > 64) {
      heap_base.reset(new const float*[size_t(sl1 - sl0)]);
      base = heap_base.get();
    }
    for (int64_t p = 0; p < npanels; ++p) {
      const int64_t pc = p * ks, kc = std::min(ks, K - pc);
      float* const panel = bshared + pc * npad;
      for (int64_t sl = sl0; sl < sl1; ++sl) {
        if (state[p * nslices + sl].load(std::memory_order_acquire) == kReady || try_claim(p, sl)) {
          base[sl - sl0] = panel;
        } else {
          float* priv = bprivate.get(size_t(npad * std::min(KC, K)));
          pack_slice(p, sl, priv);
          base[sl - sl0] = priv;
        }
      }
      for (int64_t jc = n0; jc < n1; jc += NC) {
        const int64_t nc = std::min(NC, n1 - jc);
        auto bstrip = [&](int64_t jr) {
          const int64_t j = jc + jr;
          return base[j / NR / ss - sl0] + j * kc;
        };
        gemm_panel<MR, NV>(m0, m1, g0 + jc, nc, pc, kc, direct_a, A, rsa, csa, bstrip, C, ldc, ap);
      }
    }
  });
}

// Splits C into chunks of whole register tiles and hands them to the threads
// dynamically: a thread that loses its core to another process only delays the
// chunk it holds, the others take the rest. When C is cut along M, B is packed
// once into a shared buffer (gemm_shared_b), in column groups of at most
// kSharedBFloats; otherwise (one row of chunks, or a B too deep to share) each
// chunk packs the slices of A and B it reads itself.
template <int MR, int NV>
void gemm_parallel(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B,
                   int64_t rsb, int64_t csb, float* C, int64_t ldc) {
  constexpr int NR = NV * VW;
  const int64_t mstrips = (M + MR - 1) / MR, nstrips = (N + NR - 1) / NR;
  const int nt = M * N * K >= kParallelFlops && !in_parallel() ? pool_threads() : 1;
  if (nt == 1 || mstrips * nstrips == 1) {
    gemm_thread<MR, NV>(0, M, 0, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
    return;
  }
  const Chunks ch = plan_chunks<MR, NV>(M, N, nt);
  const int64_t group = kSharedBFloats / K / NR * NR;  // widest shared panel
  if (ch.mchunks > 1 && group >= std::min(N, NC)) {
    for (int64_t g0 = 0; g0 < N; g0 += group)
      gemm_shared_b<MR, NV>(M, g0, std::min(group, N - g0), K, A, rsa, csa, B, rsb, csb, C, ldc, nt);
    return;
  }
  parallel_for(ch.mchunks * ch.nchunks, [&](int64_t t) {
    const int64_t ci = t / ch.nchunks, cj = t % ch.nchunks;
    const int64_t m0 = ci * ch.cm * MR, m1 = std::min(M, m0 + ch.cm * MR);
    const int64_t n0 = cj * ch.cn * NR, n1 = std::min(N, n0 + ch.cn * NR);
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
