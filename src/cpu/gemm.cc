// GEMM for every numeric dtype on the CPU (see gemm.h).
//
// BLIS-style: for each NC-wide column panel and KC-deep slab, B is packed into
// NR-wide strips (k-major, NR values per k), then for each MC-tall row block A
// is packed into MR-tall strips (MR values per k), and a register-blocked
// micro-kernel multiplies one A strip by one B strip into an MR x NR tile of C
// held entirely in vector registers. Packing reads A and B through their row
// and column strides, so transposed views cost nothing extra, and pads the
// ragged edges with zeros, so the micro-kernel never branches on shape; only
// the final write of an edge tile is masked.
//
// One engine serves every dtype: it is written over the storage type T and
// its compute type F = acc_t<T> (gemm_kernels.h: float for float32 and the
// halves, double, uint32 for int32 and uint8, uint64 for int64). Packing
// converts T to F as it reads, so the micro-kernels see F only. Where C is
// not stored as F (halves, uint8), each chunk of C of at most MC x NC is
// computed over all of K into an F scratch tile and converted once.
//
// Threads: C is cut into chunks of whole register tiles that the threads of
// the pool (threads.h) claim one at a time. When C is cut along M, B is
// packed once, in slices claimed the same way, into a buffer the chunks share
// (a chunk never waits for a slice: one still being packed elsewhere it packs
// privately); otherwise each chunk packs what it reads itself. Either way the
// caller waits only for work already started, never for a thread that has not
// woken up yet, and no thread ever spins.
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#include "common/convert.h"
#include "common/dtypes.h"
#include "gemm_engine.h"
#include "gemm_kernels.h"
#include "threads.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace needle {
namespace cpu {

// ---------------------------------------------------------------------------
// Reference
// ---------------------------------------------------------------------------
namespace {
// The naive loop's accumulator: the compute type, and uint64 (int64 with
// defined wrap-around) for the integers.
template <typename T> struct NaiveAcc { using type = compute_t<T>; };
template <> struct NaiveAcc<int32_t> { using type = uint64_t; };
template <> struct NaiveAcc<int64_t> { using type = uint64_t; };
template <> struct NaiveAcc<uint8_t> { using type = uint64_t; };
}  // namespace

template <typename T>
void gemm_naive(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc) {
  // A is (M, K) strided, B is (K, N) strided, C is (M, N) with row stride ldc.
  using Acc = typename NaiveAcc<T>::type;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      Acc acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        if constexpr (std::is_integral_v<T>) {
          // Sign-extend to int64, then multiply modulo 2^64.
          acc += Acc(int64_t(A[i * rsa + k * csa])) * Acc(int64_t(B[k * rsb + j * csb]));
        } else {
          acc += Acc(widen(A[i * rsa + k * csa])) * Acc(widen(B[k * rsb + j * csb]));
        }
      }
      if constexpr (std::is_integral_v<T>) {
        C[i * ldc + j] = static_cast<T>(acc);  // modulo 2^bits
      } else {
        C[i * ldc + j] = convert<T>(acc);
      }
    }
  }
}

namespace gemm_detail {
namespace {

constexpr int64_t kDirectAStrips = 2;
constexpr int64_t kChunksPerThread = 3;
constexpr int64_t kMinChunkStrips = 4;
// Threads share one packed copy of B when C is cut along M: it is packed in
// about kPackTasksPerThread slices per thread, and is at most kSharedBBytes
// (32 MiB); wider products are done in column groups of that size.
constexpr int64_t kPackTasksPerThread = 4;
// With B shared, smaller chunks cost no repacking of B, and more of them shorten
// the wait for the last one when a thread runs slow; but a chunk narrower than C
// packs its rows of A once per column chunk. 4 per thread keeps whole rows at
// 2048^3 (2 threads: 0.95-1.0 of numpy, against 0.92-0.94 with 10 and 6) and
// matched 10 at 256..1024.
constexpr int64_t kSharedChunksPerThread = 4;
constexpr int64_t kSharedBBytes = int64_t(1) << 25;

// ---------------------------------------------------------------------------
// Packing (zero-padded to whole strips, converted to the compute type)
// ---------------------------------------------------------------------------
// B[k][j] = b[k * rsb + j * csb], k < kc, j < nc  ->  strips of NR columns,
// each kc x NR row-major. Unit column stride (B as stored) copies rows of NR;
// unit row stride (a transposed view) walks each column contiguously.
template <typename T, int NV, typename F = acc_t<T>>
void pack_b(int64_t kc, int64_t nc, const T* b, int64_t rsb, int64_t csb, F* __restrict out) {
  using V = Vec<F>;
  constexpr int VW = V::W, NR = NV * VW;
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j0);
    F* o = out + j0 * kc;
    const T* bj = b + j0 * csb;
    if (nr == NR && csb == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = bj + k * rsb;
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) V::storeu(o + k * NR + j * VW, load_cvt<T>(src + j * VW));
      }
    } else if (csb == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = bj + k * rsb;
        F* dst = o + k * NR;
        int64_t j = 0;
        for (; j < nr; ++j) dst[j] = to_acc<F>(src[j]);
        for (; j < NR; ++j) dst[j] = F(0);
      }
    } else {
      for (int64_t j = 0; j < nr; ++j) {
        const T* src = bj + j * csb;
        for (int64_t k = 0; k < kc; ++k) o[k * NR + j] = to_acc<F>(src[k * rsb]);
      }
      for (int64_t j = nr; j < NR; ++j)
        for (int64_t k = 0; k < kc; ++k) o[k * NR + j] = F(0);
    }
  }
}

// A[i][k] = a[i * rsa + k * csa], i < mc, k < kc  ->  strips of MR rows, each
// stored k-major (MR values per k). Row-major A (csa == 1) is transposed in
// MR x 8 blocks so that both the reads and the writes stay sequential.
template <typename T, int MR, typename F = acc_t<T>>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t rsa, int64_t csa, F* __restrict out) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    F* o = out + i0 * kc;
    const T* ai = a + i0 * rsa;
    if (csa == 1) {
      if (mr == MR) {
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            F src[8];
            load8(ai + i * rsa + k, src);
#pragma GCC unroll 8
            for (int kk = 0; kk < 8; ++kk) o[(k + kk) * MR + i] = src[kk];
          }
        }
        for (; k < kc; ++k)
          for (int i = 0; i < MR; ++i) o[k * MR + i] = to_acc<F>(ai[i * rsa + k]);
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          int64_t i = 0;
          for (; i < mr; ++i) o[k * MR + i] = to_acc<F>(ai[i * rsa + k]);
          for (; i < MR; ++i) o[k * MR + i] = F(0);
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = ai + k * csa;
        F* dst = o + k * MR;
        int64_t i = 0;
        for (; i < mr; ++i) dst[i] = to_acc<F>(src[i * rsa]);
        for (; i < MR; ++i) dst[i] = F(0);
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Per-thread scratch (gemm_engine.h): grown on demand, never shrunk.
// ---------------------------------------------------------------------------
namespace {
constexpr size_t kHugePage = size_t(1) << 21;

struct Scratch {
  void* ptr = nullptr;
  size_t cap = 0;  // bytes
  ~Scratch() { std::free(ptr); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(ptr);
      ptr = nullptr;
      cap = 0;
      // Panels of a MiB or more sit on 2 MiB pages where the kernel allows
      // (packed B of a 2048-wide product spans thousands of 4 KiB pages).
      const bool huge = bytes >= (size_t(1) << 20);
      const size_t align = huge ? kHugePage : 64;
      const size_t rounded = (bytes + align - 1) / align * align;
      ptr = std::aligned_alloc(align, rounded);
      if (ptr == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (huge) madvise(ptr, rounded, MADV_HUGEPAGE);
#endif
      cap = bytes;
    }
    return ptr;
  }
};

}  // namespace

void* scratch_bytes(Role role, size_t bytes) {
  static thread_local Scratch buffers[kNumRoles];
  return buffers[role].get(bytes);
}

namespace {

// Runs body(c, ldc_c) on the m x n chunk of C at c0, seen as compute type F:
// C itself when T is stored as F, else a scratch tile (at most MC x NC) that
// is rounded or truncated into C once body has added up all of K.
template <typename T, class Body>
void with_c_tile(T* c0, int64_t ldc, int64_t m, int64_t n, const Body& body) {
  using F = acc_t<T>;
  if constexpr (kInPlace<T>) {
    body(reinterpret_cast<F*>(c0), ldc);
  } else {
    F* tile = scratch<F>(kCTile, m * n);
    body(tile, n);
    for (int64_t i = 0; i < m; ++i) store_row(tile + i * n, c0 + i * ldc, n);
  }
}

// An m-row block of C (at c) and nc columns, one kc-deep slab: rows of A from
// a (already at column pc), the slab's panel of B already packed: bstrip(jr)
// is the packed kc x NR strip of columns jr...
template <typename T, int MR, int NV, class BStrip, typename F = acc_t<T>>
void gemm_panel(int64_t m, int64_t nc, int64_t kc, bool accumulate, bool direct_a, const T* A, int64_t rsa,
                int64_t csa, const BStrip& bstrip, F* C, int64_t ldc, F* apack) {
  constexpr int NR = NV * Vec<F>::W;
  constexpr int64_t MC = Blocking<F>::MC_STRIPS * MR;
  for (int64_t ic = 0; ic < m; ic += MC) {
    const int64_t mc = std::min(MC, m - ic);
    const T* a = A + ic * rsa;
    if constexpr (std::is_same_v<T, F>) {
      if (direct_a) {
        // Whole strips read A in place; a ragged last strip is packed.
        const int64_t full = mc / MR * MR;
        if (full < mc) pack_a<T, MR>(mc - full, kc, a + full * rsa, rsa, csa, apack);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          const F* bp = bstrip(jr);
          for (int64_t ir = 0; ir < full; ir += MR) {
            F* c = C + (ic + ir) * ldc + jr;
            if (nr == NR) {
              micro_kernel_strided<F, MR, NV>(kc, a + ir * rsa, rsa, 1, bp, c, ldc, accumulate);
            } else {
              alignas(64) F tile[MR * NR];
              micro_kernel_strided<F, MR, NV>(kc, a + ir * rsa, rsa, 1, bp, tile, NR, false);
              write_tile<F, MR, NV>(tile, c, ldc, accumulate, MR, nr);
            }
          }
          if (full < mc)
            edge_kernel<F, MR, NV>(kc, apack, bp, C + (ic + full) * ldc + jr, ldc, accumulate, mc - full, nr);
        }
        continue;
      }
    }
    pack_a<T, MR>(mc, kc, a, rsa, csa, apack);
    for (int64_t jr = 0; jr < nc; jr += NR) {
      const int64_t nr = std::min<int64_t>(NR, nc - jr);
      const F* bp = bstrip(jr);
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int64_t mr = std::min<int64_t>(MR, mc - ir);
        F* c = C + (ic + ir) * ldc + jr;
        if (mr == MR && nr == NR) {
          micro_kernel<F, MR, NV>(kc, apack + ir * kc, bp, c, ldc, accumulate);
        } else {
          edge_kernel<F, MR, NV>(kc, apack + ir * kc, bp, c, ldc, accumulate, mr, nr);
        }
      }
    }
  }
}

// Each A strip is reused by every NR-wide strip of a panel: with only one or
// two of them, reading A in place beats packing it (when A is stored as F).
template <typename T, int NV>
bool direct_a_for(int64_t csa, int64_t width) {
  return std::is_same_v<T, acc_t<T>> && csa == 1 && width <= kDirectAStrips * NV * Vec<acc_t<T>>::W;
}

// An m x n block of C (at C, as F), all of K, packing B panel by panel.
template <typename T, int MR, int NV, typename F = acc_t<T>>
void gemm_block(int64_t m, int64_t n, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B, int64_t rsb,
                int64_t csb, F* C, int64_t ldc, F* apack, F* bpack) {
  constexpr int64_t NC = Blocking<F>::NC;
  const bool direct_a = direct_a_for<T, NV>(csa, n);
  const int64_t ks = kc_step<F>(K);
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t nc = std::min(NC, n - jc);
    for (int64_t pc = 0; pc < K; pc += ks) {
      const int64_t kc = std::min(ks, K - pc);
      pack_b<T, NV>(kc, nc, B + pc * rsb + jc * csb, rsb, csb, bpack);
      gemm_panel<T, MR, NV>(m, nc, kc, pc > 0, direct_a, A + pc * csa, rsa, csa,
                            [bpack, kc](int64_t jr) { return bpack + jr * kc; }, C + jc, ldc, apack);
    }
  }
}

// One thread's share: rows [m0, m1) and columns [n0, n1) of C, all of K.
template <typename T, int MR, int NV>
void gemm_thread(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, const T* A, int64_t rsa, int64_t csa,
                 const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc) {
  using F = acc_t<T>;
  constexpr int NR = NV * Vec<F>::W;
  constexpr int64_t MC = Blocking<F>::MC_STRIPS * MR, NC = Blocking<F>::NC;
  if (m0 >= m1 || n0 >= n1) return;
  const int64_t kc = std::min(Blocking<F>::KC, K);
  F* ap = scratch<F>(kPackA, round_up(std::min(MC, m1 - m0), MR) * kc);
  F* bp = scratch<F>(kPackB, round_up(std::min(NC, n1 - n0), NR) * kc);
  // In place: the whole share at once. Otherwise MC x NC tiles of C, each
  // over all of K before it is converted.
  const int64_t mt = kInPlace<T> ? m1 - m0 : MC, nt = kInPlace<T> ? n1 - n0 : NC;
  for (int64_t i0 = m0; i0 < m1; i0 += mt) {
    for (int64_t j0 = n0; j0 < n1; j0 += nt) {
      const int64_t mb = std::min(mt, m1 - i0), nb = std::min(nt, n1 - j0);
      with_c_tile(C + i0 * ldc + j0, ldc, mb, nb, [&](F* c, int64_t ldcc) {
        gemm_block<T, MR, NV>(mb, nb, K, A + i0 * rsa, rsa, csa, B + j0 * csb, rsb, csb, c, ldcc, ap, bp);
      });
    }
  }
}

// Products too thin to fill a register tile: one row or one column of C.
// C (1 x N) = a (1 x K) @ B: accumulate rows of B when they are contiguous.
template <typename T>
void gemv_row(int64_t N, int64_t K, const T* A, int64_t csa, const T* B, int64_t rsb, int64_t csb, T* C) {
  using F = acc_t<T>;
  with_c_tile(C, 0, 1, N, [&](F* c, int64_t) {
    if (csb == 1) {
      std::fill(c, c + N, F(0));
      for (int64_t k = 0; k < K; ++k) {
        const F a = to_acc<F>(A[k * csa]);
        const T* b = B + k * rsb;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) c[j] += a * to_acc<F>(b[j]);
      }
    } else {
      for (int64_t j = 0; j < N; ++j) {
        const T* b = B + j * csb;
        F acc = F(0);
        if (csa == 1 && rsb == 1) {
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < K; ++k) acc += to_acc<F>(A[k]) * to_acc<F>(b[k]);
        } else {
          for (int64_t k = 0; k < K; ++k) acc += to_acc<F>(A[k * csa]) * to_acc<F>(b[k * rsb]);
        }
        c[j] = acc;
      }
    }
  });
}

// C (M x 1) = A @ b: one dot product per row, written with stride ldc.
template <typename T>
void gemv_col(int64_t M, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B, int64_t rsb, T* C,
              int64_t ldc) {
  using F = acc_t<T>;
  for (int64_t i = 0; i < M; ++i) {
    const T* a = A + i * rsa;
    F acc = F(0);
    if (csa == 1 && rsb == 1) {
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += to_acc<F>(a[k]) * to_acc<F>(B[k]);
    } else {
      for (int64_t k = 0; k < K; ++k) acc += to_acc<F>(a[k * csa]) * to_acc<F>(B[k * rsb]);
    }
    C[i * ldc] = from_acc<T>(acc);
  }
}

// How C is cut into chunks of whole register tiles: cm x cn strips each.
struct Chunks {
  int64_t cm, cn, mchunks, nchunks;
};

// Aims for kChunksPerThread chunks per thread, splitting M first. Chunks are
// at least kMinChunkStrips strips tall and at most one MC x NC block.
template <typename F, int MR, int NV>
Chunks plan_chunks(int64_t M, int64_t N, int nt, int64_t per_thread = kChunksPerThread) {
  constexpr int NR = NV * Vec<F>::W;
  const int64_t mstrips = (M + MR - 1) / MR, nstrips = (N + NR - 1) / NR;
  const int64_t want = int64_t(nt) * per_thread;
  Chunks c;
  c.cm = std::max<int64_t>((mstrips + want - 1) / want, std::min<int64_t>(kMinChunkStrips, mstrips));
  c.cm = std::min<int64_t>(c.cm, Blocking<F>::MC_STRIPS);
  c.mchunks = (mstrips + c.cm - 1) / c.cm;
  const int64_t nsplit = std::max<int64_t>(1, (want + c.mchunks - 1) / c.mchunks);
  c.cn = std::max<int64_t>(1, (nstrips + nsplit - 1) / nsplit);
  c.cn = std::min<int64_t>(c.cn, std::max<int64_t>(1, Blocking<F>::NC / NR));
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
template <typename T, int MR, int NV>
void gemm_shared_b(int64_t M, int64_t g0, int64_t gn, int64_t K, const T* A, int64_t rsa, int64_t csa,
                   const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc, int nt) {
  using F = acc_t<T>;
  constexpr int NR = NV * Vec<F>::W;
  constexpr int64_t MC = Blocking<F>::MC_STRIPS * MR, KC = Blocking<F>::KC, NC = Blocking<F>::NC;
  enum : int { kFree = 0, kPacking = 1, kReady = 2 };
  const Chunks ch = plan_chunks<F, MR, NV>(M, gn, nt, kSharedChunksPerThread);
  const int64_t nstrips = (gn + NR - 1) / NR, npad = nstrips * NR;
  const int64_t ks = kc_step<F>(K), npanels = (K + ks - 1) / ks;
  const int64_t want = int64_t(nt) * kPackTasksPerThread;
  const int64_t ss = std::min(nstrips, std::max<int64_t>(1, (npanels * nstrips + want - 1) / want));
  const int64_t nslices = (nstrips + ss - 1) / ss, ptasks = npanels * nslices;
  // Panel p (rows p * ks.. of B) starts at p * ks * npad; its strip of columns
  // j (a multiple of NR) at + j * kc. A private copy keeps the same layout.
  F* const bshared = scratch<F>(kSharedB, npad * K);
  std::unique_ptr<std::atomic<int>[]> state(new std::atomic<int>[size_t(ptasks)]);
  for (int64_t i = 0; i < ptasks; ++i) state[i].store(kFree, std::memory_order_relaxed);
  auto pack_slice = [&](int64_t p, int64_t sl, F* panel) {
    const int64_t pc = p * ks, kc = std::min(ks, K - pc);
    const int64_t j0 = sl * ss * NR, j1 = std::min(gn, j0 + ss * NR);
    pack_b<T, NV>(kc, j1 - j0, B + pc * rsb + (g0 + j0) * csb, rsb, csb, panel + j0 * kc);
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
    F* ap = scratch<F>(kPackA, round_up(std::min(MC, m1 - m0), MR) * std::min(KC, K));
    const bool direct_a = direct_a_for<T, NV>(csa, n1 - n0);
    const int64_t sl0 = n0 / NR / ss, sl1 = (n1 - 1) / NR / ss + 1;
    // Per slice of this chunk: the panel it is read from (shared or private).
    const F* local_base[64];
    std::unique_ptr<const F*[]> heap_base;
    const F** base = local_base;
    if (sl1 - sl0 > 64) {
      heap_base.reset(new const F*[size_t(sl1 - sl0)]);
      base = heap_base.get();
    }
    with_c_tile(C + m0 * ldc + g0 + n0, ldc, m1 - m0, n1 - n0, [&](F* c, int64_t ldcc) {
      for (int64_t p = 0; p < npanels; ++p) {
        const int64_t pc = p * ks, kc = std::min(ks, K - pc);
        F* const panel = bshared + pc * npad;
        for (int64_t sl = sl0; sl < sl1; ++sl) {
          if (state[p * nslices + sl].load(std::memory_order_acquire) == kReady || try_claim(p, sl)) {
            base[sl - sl0] = panel;
          } else {
            F* priv = scratch<F>(kPrivateB, npad * std::min(KC, K));
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
          gemm_panel<T, MR, NV>(m1 - m0, nc, kc, p > 0, direct_a, A + m0 * rsa + pc * csa, rsa, csa, bstrip,
                                c + (jc - n0), ldcc, ap);
        }
      }
    });
  });
}

// Splits C into chunks of whole register tiles and hands them to the threads
// dynamically: a thread that loses its core to another process only delays the
// chunk it holds, the others take the rest. When C is cut along M, B is packed
// once into a shared buffer (gemm_shared_b), in column groups of at most
// kSharedBBytes; otherwise (one row of chunks, or a B too deep to share) each
// chunk packs the slices of A and B it reads itself.
template <typename T, int MR, int NV>
void gemm_parallel(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B,
                   int64_t rsb, int64_t csb, T* C, int64_t ldc) {
  using F = acc_t<T>;
  constexpr int NR = NV * Vec<F>::W;
  const int64_t mstrips = (M + MR - 1) / MR, nstrips = (N + NR - 1) / NR;
  const int nt = M * N * K >= kParallelFlops && !in_parallel() ? pool_threads() : 1;
  if (nt == 1 || mstrips * nstrips == 1) {
    gemm_thread<T, MR, NV>(0, M, 0, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
    return;
  }
  const Chunks ch = plan_chunks<F, MR, NV>(M, N, nt);
  const int64_t group = kSharedBBytes / int64_t(sizeof(F)) / K / NR * NR;  // widest shared panel
  if (ch.mchunks > 1 && group >= std::min(N, Blocking<F>::NC)) {
    for (int64_t g0 = 0; g0 < N; g0 += group)
      gemm_shared_b<T, MR, NV>(M, g0, std::min(group, N - g0), K, A, rsa, csa, B, rsb, csb, C, ldc, nt);
    return;
  }
  parallel_for(ch.mchunks * ch.nchunks, [&](int64_t t) {
    const int64_t ci = t / ch.nchunks, cj = t % ch.nchunks;
    const int64_t m0 = ci * ch.cm * MR, m1 = std::min(M, m0 + ch.cm * MR);
    const int64_t n0 = cj * ch.cn * NR, n1 = std::min(N, n0 + ch.cn * NR);
    gemm_thread<T, MR, NV>(m0, m1, n0, n1, K, A, rsa, csa, B, rsb, csb, C, ldc);
  });
}

}  // namespace
}  // namespace gemm_detail

// ---------------------------------------------------------------------------
// Fast path
// ---------------------------------------------------------------------------
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
          const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc) {
  // A is (M, K) strided (rsa, csa), B is (K, N) strided (rsb, csb), C is (M, N)
  // with row stride ldc and unit column stride.
  using namespace gemm_detail;
  using TL = Tile<acc_t<T>>;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T{});
    return;
  }
  if (M == 1) {
    gemv_row(N, K, A, csa, B, rsb, csb, C);
    return;
  }
  if (N == 1) {
    gemv_col(M, K, A, rsa, csa, B, rsb, C, ldc);
    return;
  }
  if constexpr (TL::MR_NARROW > 0) {
    if (N <= Vec<acc_t<T>>::W) {
      gemm_parallel<T, TL::MR_NARROW, 1>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
      return;
    }
  }
  gemm_parallel<T, TL::MR, TL::NV>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc);
}

const char* sgemm_kernel_name() { return gemm_detail::kKernelName; }

#define NEEDLE_GEMM_INSTANTIATE(T)                                                                          \
  template void gemm<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, int64_t, int64_t, T*, \
                        int64_t);                                                                           \
  template void gemm_naive<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, int64_t,      \
                              int64_t, T*, int64_t);
NEEDLE_GEMM_INSTANTIATE(float)
NEEDLE_GEMM_INSTANTIATE(double)
NEEDLE_GEMM_INSTANTIATE(half_t)
NEEDLE_GEMM_INSTANTIATE(bfloat16_t)
NEEDLE_GEMM_INSTANTIATE(int32_t)
NEEDLE_GEMM_INSTANTIATE(int64_t)
NEEDLE_GEMM_INSTANTIATE(uint8_t)
#undef NEEDLE_GEMM_INSTANTIATE

}  // namespace cpu
}  // namespace needle
