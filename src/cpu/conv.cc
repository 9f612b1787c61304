// 2-D convolution as an implicit GEMM (see conv.h).
//
// Per group g, C (M x cog) = A (M x K) B (K x cog) with M = n ho wo output
// pixels, K = kh kw cg taps x channels and B the filter. The engine is the
// GEMM's (gemm_engine.h): B is packed into NR-wide strips per KC-deep slab,
// and a register-blocked micro-kernel multiplies an MR-row strip of A by each
// strip of B. Only the packing of A differs from gemm.cc: it reads the image
// itself, one strip of MR output pixels x one slab at a time, in the layout
// whose copies are the longest contiguous runs of the image (plan_layout):
//   rows  (out rows ordered (n, ho, wo)): each pixel's slab is a row of the
//         strip, which the micro-kernel reads in place. With depth in the
//         filter's order (i, k, ch) the runs are channels (NHWC images; with
//         unit dilation a whole tap row is one run); with depth (ch, i, k)
//         they are filter rows along w (NCHW batches read as NHWC views).
//   cols  the strip is stored k-major (MR values per k), each k a copy of
//         runs of rows that differ in one output coordinate: consecutive
//         images of one pixel (out rows ordered (ho, wo, n), contiguous for a
//         unit batch stride: the filter gradient is a convolution of the
//         image with its channel and batch axes swapped, read so without a
//         transposed copy), or neighbouring pixels along w.
// Taps outside the image are written as zeros, so the kernel never branches.
// When such padding taps are a large share of the matrix (small maps), the
// convolution is instead split into boxes of outputs that read the same taps,
// each a product over its live taps only (conv2d_implicit).
//
// Threads: rows are cut into chunks of whole strips that the pool claims
// (threads.h); B is packed once per range of slabs into a buffer they share.
// A product with too few rows to share out (the filter gradient of a small
// layer: kh kw cg rows, n ho wo deep) is cut along K instead: each task sums a
// range of slabs into its own partial C, and the partials are added at the end.
// The boxes of one convolution are chunked together into one parallel region.
#include "conv.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "gemm_engine.h"
#include "kernels.h"
#include "threads.h"

namespace needle {
namespace cpu {
namespace conv_detail {
namespace {

using namespace gemm_detail;

// B is packed for as many slabs at once as fit in this (a 3x3x128x128 filter
// is 576 KiB): one parallel region per range instead of one per slab. It
// bounds the extra memory when B is an output gradient (the filter gradient).
constexpr int64_t kSharedFilterBytes = int64_t(1) << 20;
// Below this a shared B panel is packed by the calling thread alone.
constexpr int64_t kSerialPackBytes = int64_t(256) << 10;
constexpr int64_t kChunksPerThread = 3;
constexpr int64_t kMinChunkStrips = 4;
// Split-K keeps a partial C per task: only for outputs up to this size.
constexpr int64_t kMaxPartialElems = int64_t(1) << 22;

// floor(a / d) and ceil(a / d) for d > 0 and any a (d is usually 1: no division then).
inline int64_t floor_div(int64_t a, int64_t d) {
  if (d == 1) return a;
  return a >= 0 ? a / d : -((-a + d - 1) / d);
}
inline int64_t ceil_div(int64_t a, int64_t d) { return -floor_div(-a, d); }

// Packing writes runs of a few elements (channels, filter taps) in
// increasing address order into scratch buffers with kSpill elements of
// slack at the end. So a run is stored as whole vectors: its last store may
// spill up to a vector past the run, over elements that a later store of the
// same thread writes again (masked stores are slow on some AVX-512 cores;
// masked loads are not, and read nothing outside the run).
constexpr int64_t kSpill = 16;

#if defined(__AVX512F__)
template <typename F> struct Masked;
template <> struct Masked<float> {
  static constexpr int W = 16;
  static __m512 load(const float* s, int64_t n) { return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), s); }
};
template <> struct Masked<double> {
  static constexpr int W = 8;
  static __m512d load(const double* s, int64_t n) { return _mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), s); }
};
#endif

// p[0..n) = 0 (spilling).
template <typename F>
inline void zero(F* p, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<F, float>) {
    if (n <= 8) {
      if (n > 0) _mm256_storeu_ps(p, _mm256_setzero_ps());
      return;
    }
  }
  for (int64_t t = 0; t < n; t += Masked<F>::W) Vec<F>::storeu(p + t, Vec<F>::zero());
#else
  for (int64_t t = 0; t < n; ++t) p[t] = F(0);
#endif
}

// dst[t] = src[t * stride], t < n (spilling for stride 1).
template <typename F>
inline void copy_run(F* __restrict dst, const F* __restrict src, int64_t n, int64_t stride) {
  if (stride == 1) {
#if defined(__AVX512F__)
    constexpr int W = Masked<F>::W;
    if constexpr (std::is_same_v<F, float>) {
      if (n <= 8) {  // a half register: fewer cache lines touched by the store
        _mm256_storeu_ps(dst, _mm256_maskz_loadu_ps(__mmask8((1u << n) - 1), src));
        return;
      }
    }
    for (; n >= W; n -= W, dst += W, src += W) Vec<F>::storeu(dst, Vec<F>::loadu(src));
    if (n > 0) Vec<F>::storeu(dst, Masked<F>::load(src, n));
#else
    if (n > 0) std::memcpy(dst, src, size_t(n) * sizeof(F));
#endif
  } else {
    for (int64_t t = 0; t < n; ++t) dst[t] = src[t * stride];
  }
}

// How a strip of A is packed, chosen from the image's strides (see plan_layout).
enum class Layout {
  kRowsTaps,   // rows layout, depth (i, k, ch): runs along the channels (unit channel stride)
  kRowsWidth,  // rows layout, depth (ch, i, k): runs along a filter row (unit step along w)
  kColsWidth,  // cols layout, rows (b, p, q): runs of neighbouring output pixels (unit step along w)
  kColsBatch,  // cols layout, rows (p, q, b): runs of consecutive images (unit batch stride)
};

// The GEMM of one group: its sizes, the order of its rows and how A is packed.
struct Plan {
  const ConvGeometry* s;
  int64_t M, K, cog;
  bool batch_fastest;  // row m is (p, q, b) with b fastest; else (b, p, q) with q fastest
  Layout layout;
  // Row m of C is at c + m * ldc when `uniform`, else at out pixel (b, p, q) of row m (s->os).
  bool uniform;
  int64_t ldc;
  bool width_depth() const { return layout == Layout::kRowsWidth; }  // depth order (ch, i, k)
  bool rows_layout() const { return layout == Layout::kRowsTaps || layout == Layout::kRowsWidth; }
};

// The packing with the longest contiguous runs for this image.
Layout plan_layout(const ConvGeometry& s, bool batch_fastest) {
  if (batch_fastest) return Layout::kColsBatch;
  if (s.xs[3] == 1 || s.cg == 1) return Layout::kRowsTaps;
  if (s.sw * s.xs[2] == 1 && s.wo > 1) return Layout::kColsWidth;
  if (s.dw * s.xs[2] == 1 && s.kw > 1) return Layout::kRowsWidth;
  return Layout::kRowsTaps;  // gathers: correct for any strides
}

// True when rows ordered by axes (slowest first) of sizes `size` at strides
// `stride` sit at a uniform stride (*step) from the first one.
bool rows_uniform(const int64_t size[3], const int64_t stride[3], int64_t* step) {
  int64_t st = 0, span = 1;
  bool first = true;
  for (int a = 2; a >= 0; --a) {
    if (size[a] == 1) continue;
    if (first) {
      st = stride[a];
      first = false;
    } else if (stride[a] != st * span) {
      return false;
    }
    span *= size[a];
  }
  *step = first ? 0 : st;
  return true;
}

// ---------------------------------------------------------------------------
// Packing A from the image
// ---------------------------------------------------------------------------
// One row of pack_rows_taps for a pixel near the border (or a slab that cuts tap rows).
template <typename F>
void pack_row_taps_edge(const ConvGeometry& s, const F* xb, F* row, int64_t k0, int64_t kc, int64_t h0, int64_t w0,
                        int64_t klo, int64_t khi, bool adjacent) {
  const int64_t tapw = s.kw * s.cg;
  const int64_t k1 = k0 + kc, ia = k0 / tapw, ib = (k1 - 1) / tapw;
  for (int64_t i = ia; i <= ib; ++i) {
    const int64_t row0 = i * tapw;  // k of tap (i, 0), channel 0
    const int64_t ka = std::max(k0, row0), kb = std::min(k1, row0 + tapw);
    const int64_t h = h0 + i * s.dh;
    const int64_t va = std::max(ka, row0 + klo * s.cg), vb = std::min(kb, row0 + khi * s.cg);
    if (h < 0 || h >= s.h || va >= vb) {
      zero(row + (ka - k0), kb - ka);
      continue;
    }
    zero(row + (ka - k0), va - ka);
    const F* xh = xb + h * s.xs[1];
    if (adjacent) {
      copy_run(row + (va - k0), xh + w0 * s.xs[2] + (va - row0), vb - va, int64_t(1));
    } else {
      int64_t tap = (va - row0) / s.cg, ch = (va - row0) - tap * s.cg;
      for (int64_t k = va; k < vb; ++tap, ch = 0) {
        const int64_t len = std::min(vb - k, s.cg - ch);
        copy_run(row + (k - k0), xh + (w0 + tap * s.dw) * s.xs[2] + ch * s.xs[3], len, s.xs[3]);
        k += len;
      }
    }
    zero(row + (vb - k0), kb - vb);
  }
}

// Rows layout: a[r * kc + t] = A[m0 + r][k0 + t] for r < mr, zero rows up to MR.
// Rows are output pixels (b, p, q), q fastest. Depth in the filter's order
// (i, k, ch): a tap row i is kw runs of cg channels, or one run when tap
// (i, k + 1) starts where tap (i, k) ends (unit dilation, w stride = cg).
template <typename F>
void pack_rows_taps(const ConvGeometry& s, const F* x, int64_t g, int64_t m0, int64_t mr, int MR, int64_t k0,
                    int64_t kc, F* __restrict a) {
  const int64_t tapw = s.kw * s.cg;  // depth of one row of filter taps
  const bool unit_c = s.xs[3] == 1;
  const bool adjacent = unit_c && s.dw * s.xs[2] == s.cg;
  const int64_t k1 = k0 + kc, ia = k0 / tapw, ib = (k1 - 1) / tapw;
  const bool whole_rows = k0 % tapw == 0 && k1 % tapw == 0;  // the slab is whole tap rows
  int64_t b = m0 / (s.ho * s.wo), p = (m0 / s.wo) % s.ho, q = m0 % s.wo;
  for (int64_t r = 0; r < mr; ++r) {
    F* row = a + r * kc;  // row[k - k0] for k in [k0, k1)
    const F* xb = x + b * s.xs[0] + g * s.cg * s.xs[3];
    const int64_t h0 = p * s.sh - s.pt, w0 = q * s.sw - s.pl;
    // Taps k with 0 <= w0 + k dw < w: [klo, khi).
    const int64_t klo = std::max<int64_t>(0, ceil_div(-w0, s.dw));
    const int64_t khi = std::min<int64_t>(s.kw, ceil_div(s.w - w0, s.dw));
    if (whole_rows && unit_c && klo == 0 && khi == s.kw && h0 + ia * s.dh >= 0 && h0 + ib * s.dh < s.h) {
      // A pixel away from the border: every tap reads the image, no zeros.
      const F* xw = xb + h0 * s.xs[1] + w0 * s.xs[2];
      for (int64_t i = ia; i <= ib; ++i) {
        F* dst = row + (i * tapw - k0);
        const F* src = xw + i * s.dh * s.xs[1];
        if (adjacent) {
          copy_run(dst, src, tapw, int64_t(1));
        } else {
          for (int64_t k = 0; k < s.kw; ++k) copy_run(dst + k * s.cg, src + k * s.dw * s.xs[2], s.cg, int64_t(1));
        }
      }
    } else {
      pack_row_taps_edge(s, xb, row, k0, kc, h0, w0, klo, khi, adjacent);
    }
    if (++q == s.wo) {
      q = 0;
      if (++p == s.ho) {
        p = 0;
        ++b;
      }
    }
  }
  zero(a + mr * kc, (MR - mr) * kc);
}


// Rows layout with depth in the order (ch, i, k): each (ch, i) is one run
// along a filter row, contiguous for an image with unit w stride (an NCHW
// batch read through its NHWC view) and unit kernel dilation.
template <typename F>
void pack_rows_width(const ConvGeometry& s, const F* x, int64_t g, int64_t m0, int64_t mr, int MR, int64_t k0,
                     int64_t kc, F* __restrict a) {
  const int64_t k1 = k0 + kc, ua = k0 / s.kw, ub = (k1 - 1) / s.kw, jstep = s.dw * s.xs[2];
  const bool whole_units = k0 % s.kw == 0 && k1 % s.kw == 0;
  int64_t b = m0 / (s.ho * s.wo), p = (m0 / s.wo) % s.ho, q = m0 % s.wo;
  for (int64_t r = 0; r < mr; ++r) {
    F* row = a + r * kc;
    const F* xb = x + b * s.xs[0] + g * s.cg * s.xs[3];
    const int64_t h0 = p * s.sh - s.pt, w0 = q * s.sw - s.pl;
    const int64_t klo = std::max<int64_t>(0, ceil_div(-w0, s.dw));
    const int64_t khi = std::min<int64_t>(s.kw, ceil_div(s.w - w0, s.dw));
    int64_t ch = ua / s.kh, i = ua - ch * s.kh - 1;
    if (whole_units && klo == 0 && khi == s.kw && h0 >= 0 && h0 + (s.kh - 1) * s.dh < s.h) {
      // Away from the border: kw taps of every (ch, i) read the image.
      const F* xw = xb + h0 * s.xs[1] + w0 * s.xs[2];
      for (int64_t u = ua; u <= ub; ++u) {
        if (++i == s.kh) {
          i = 0;
          ++ch;
        }
        copy_run(row + (u * s.kw - k0), xw + ch * s.xs[3] + i * s.dh * s.xs[1], s.kw, jstep);
      }
    } else {
    for (int64_t u = ua; u <= ub; ++u) {  // u = (ch, i)
      if (++i == s.kh) {
        i = 0;
        ++ch;
      }
      const int64_t u0 = u * s.kw;
      const int64_t ka = std::max(k0, u0), kb = std::min(k1, u0 + s.kw);
      const int64_t h = h0 + i * s.dh;
      const int64_t va = std::max(ka, u0 + klo), vb = std::min(kb, u0 + khi);
      if (h < 0 || h >= s.h || va >= vb) {
        zero(row + (ka - k0), kb - ka);
        continue;
      }
      zero(row + (ka - k0), va - ka);
      copy_run(row + (va - k0), xb + ch * s.xs[3] + h * s.xs[1] + (w0 + (va - u0) * s.dw) * s.xs[2], vb - va, jstep);
      zero(row + (vb - k0), kb - vb);
    }
    }
    if (++q == s.wo) {
      q = 0;
      if (++p == s.ho) {
        p = 0;
        ++b;
      }
    }
  }
  zero(a + mr * kc, (MR - mr) * kc);
}

// Cols layout: a[t * MR + r] = A[m0 + r][k0 + t], depth (i, k, ch). A strip
// is a few runs of rows that differ in one output coordinate only: runs of
// consecutive images of one pixel (rows (p, q, b), contiguous for a unit
// batch stride: how the filter gradient reads its image), or runs of
// neighbouring pixels of one output row (rows (b, p, q), contiguous when the
// conv's stride along w is one image column).
template <typename F, int MR>
void pack_cols(const Plan& P, const F* x, int64_t g, int64_t m0, int64_t mr, int64_t k0, int64_t kc,
               F* __restrict a) {
  const ConvGeometry& s = *P.s;
  // Row t of a run reads image pixel (h0 + i dh, w0 + t wstep + k dw) at base + t rstep.
  struct Run {
    int64_t r0, len, h0, w0;
    const F* base;
  };
  Run runs[MR];
  int nruns = 0;
  const int64_t wstep = P.batch_fastest ? 0 : s.sw;
  const int64_t rstep = P.batch_fastest ? s.xs[0] : s.sw * s.xs[2];
  const F* xg = x + g * s.cg * s.xs[3];
  if (P.batch_fastest) {
    int64_t b = m0 % s.n, pq = m0 / s.n;
    for (int64_t r = 0; r < mr; ++pq, b = 0) {
      const int64_t len = std::min(mr - r, s.n - b);
      runs[nruns++] = {r, len, (pq / s.wo) * s.sh - s.pt, (pq % s.wo) * s.sw - s.pl, xg + b * s.xs[0]};
      r += len;
    }
  } else {
    int64_t q = m0 % s.wo, bp = m0 / s.wo;
    for (int64_t r = 0; r < mr; ++bp, q = 0) {
      const int64_t len = std::min(mr - r, s.wo - q);
      runs[nruns++] = {r, len, (bp % s.ho) * s.sh - s.pt, q * s.sw - s.pl, xg + (bp / s.ho) * s.xs[0]};
      r += len;
    }
  }
  const int64_t cs = s.xs[3];
  const bool whole = nruns == 1 && mr == MR && rstep == 1;
  int64_t i = k0 / (s.kw * s.cg), k = (k0 / s.cg) % s.kw, ch = k0 % s.cg;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<F, float> && MR <= 16) {
    if (rstep == 1) {
      // Each k of the strip is one register: a masked load per run puts its valid rows
      // in their lanes (masked-off lanes read nothing), zeros elsewhere.
      __mmask16 mask[MR];
      const float* src[MR];
      for (int64_t t = 0; t < kc;) {
        const int64_t nch = std::min(s.cg - ch, kc - t);
        int nu = 0;
        for (int u = 0; u < nruns; ++u) {
          const Run& run = runs[u];
          const int64_t h = run.h0 + i * s.dh, w = run.w0 + k * s.dw;
          if (h < 0 || h >= s.h) continue;
          int64_t ta = 0, tb = run.len;
          if (wstep == 0) {
            if (w < 0 || w >= s.w) continue;
          } else {
            ta = std::max<int64_t>(0, ceil_div(-w, wstep));
            tb = std::min<int64_t>(run.len, ceil_div(s.w - w, wstep));
          }
          if (ta >= tb) continue;
          mask[nu] = __mmask16(((1u << (tb - ta)) - 1) << (run.r0 + ta));
          // Lane r0 + ta + t reads row ta + t of the run.
          src[nu++] = run.base + h * s.xs[1] + (w + ta * wstep) * s.xs[2] + ch * cs - (run.r0 + ta);
        }
        float* o = a + t * MR;
        for (int64_t c = 0; c < nch; ++c) {
          __m512 v = _mm512_setzero_ps();
          for (int u = 0; u < nu; ++u) v = _mm512_mask_loadu_ps(v, mask[u], src[u] + c * cs);
          _mm512_storeu_ps(o + c * MR, v);  // lanes MR.. spill into the next k
        }
        t += nch;
        ch = 0;
        if (++k == s.kw) {
          k = 0;
          ++i;
        }
      }
      return;
    }
  }
#endif
  // Per tap, each run's rows [ta, tb) read inside the image at src (channel ch).
  int64_t ta[MR], tb[MR];
  const F* src[MR];
  for (int64_t t = 0; t < kc;) {
    // One tap (i, k): channels ch.. of this slab.
    const int64_t nch = std::min(s.cg - ch, kc - t);
    for (int u = 0; u < nruns; ++u) {
      const Run& run = runs[u];
      const int64_t h = run.h0 + i * s.dh, w = run.w0 + k * s.dw;
      ta[u] = tb[u] = 0;
      if (h >= 0 && h < s.h) {
        if (wstep == 0) {
          tb[u] = w >= 0 && w < s.w ? run.len : 0;
        } else {
          ta[u] = std::max<int64_t>(0, ceil_div(-w, wstep));
          tb[u] = std::min<int64_t>(run.len, ceil_div(s.w - w, wstep));
        }
      }
      tb[u] = std::max(ta[u], tb[u]);
      src[u] = run.base + h * s.xs[1] + (w + ta[u] * wstep) * s.xs[2] + ch * cs;
    }
    // k by k, runs in row order: every store lands after the ones before it.
    for (int64_t c = 0; c < nch; ++c) {
      F* o = a + (t + c) * MR;
      if (whole && ta[0] == 0 && tb[0] == MR) {
        std::memcpy(o, src[0] + c * cs, MR * sizeof(F));
        continue;
      }
      for (int u = 0; u < nruns; ++u) {
        F* dst = o + runs[u].r0;
        zero(dst, ta[u]);
        copy_run(dst + ta[u], src[u] + c * cs, tb[u] - ta[u], rstep);
        zero(dst + tb[u], runs[u].len - tb[u]);
      }
      zero(o + mr, MR - mr);
    }
    t += nch;
    ch = 0;
    if (++k == s.kw) {
      k = 0;
      ++i;
    }
  }
}

// ---------------------------------------------------------------------------
// Packing B from the filter: B[d][j] = f[i, k, ch, g cog + j] for depth d in
// [k0, k0 + kc) (in the plan's depth order), j < cog, as NR-wide strips
// (kc x NR each, zero-padded).
// ---------------------------------------------------------------------------
template <typename F, int NR>
void pack_filter(const Plan& P, const F* f, int64_t g, int64_t k0, int64_t kc, F* __restrict out) {
  const ConvGeometry& s = *P.s;
  const int64_t cog = P.cog;
  // Depth d walks its three coordinates fastest first: (ch, k, i), or (k, i, ch) for width depth.
  int64_t n0, n1, st0, st1, st2, c0, c1, c2;
  if (P.width_depth()) {
    n0 = s.kw, n1 = s.kh, st0 = s.fs[1], st1 = s.fs[0], st2 = s.fs[2];
    c0 = k0 % s.kw, c1 = (k0 / s.kw) % s.kh, c2 = k0 / (s.kw * s.kh);
  } else {
    n0 = s.cg, n1 = s.kw, st0 = s.fs[2], st1 = s.fs[1], st2 = s.fs[0];
    c0 = k0 % s.cg, c1 = (k0 / s.cg) % s.kw, c2 = k0 / (s.cg * s.kw);
  }
  for (int64_t j0 = 0; j0 < cog; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, cog - j0);
    F* o = out + j0 * kc;
    const F* fj = f + (g * cog + j0) * s.fs[3];
    int64_t d0 = c0, d1 = c1, d2 = c2;
    for (int64_t t = 0; t < kc; ++t) {
      F* d = o + t * NR;
      copy_run(d, fj + d0 * st0 + d1 * st1 + d2 * st2, nr, s.fs[3]);
      zero(d + nr, NR - nr);
      if (++d0 == n0) {
        d0 = 0;
        if (++d1 == n1) {
          d1 = 0;
          ++d2;
        }
      }
    }
  }
}

// One product of a convolution split into boxes: its geometry, plan, filter and C.
template <typename F>
struct Box {
  ConvGeometry s;
  Plan P;
  const F* f;
  F* c;
};

// ---------------------------------------------------------------------------
// The engine for one register tile (MR x NV registers)
// ---------------------------------------------------------------------------
template <typename F, int MR, int NV>
struct Engine {
  static constexpr int NR = NV * Vec<F>::W;

  // Rows [m0, m1) of group g's C (c: its first column), one kc-deep slab at k0
  // whose B strips are packed at bp (strip j at bp + j * kc).
  static void rows(const Plan& P, const F* x, int64_t g, int64_t m0, int64_t m1, int64_t k0, int64_t kc,
                   const F* bp, F* c, bool accumulate) {
    const ConvGeometry& s = *P.s;
    F* abuf = scratch<F>(kConvA, int64_t(MR) * kc + kSpill);
    const bool rl = P.rows_layout();
    const int64_t ars = rl ? kc : 1, acs = rl ? 1 : MR;
    // Out pixel of row ir (for scattered rows): (b, p, q), stepped along the row order.
    int64_t b = 0, p = 0, q = 0;
    if (!P.uniform) {
      if (P.batch_fastest) {
        b = m0 % s.n, q = (m0 / s.n) % s.wo, p = m0 / (s.n * s.wo);
      } else {
        b = m0 / (s.ho * s.wo), p = (m0 / s.wo) % s.ho, q = m0 % s.wo;
      }
    }
    F* crow[MR];
    for (int64_t ir = m0; ir < m1; ir += MR) {
      const int64_t mr = std::min<int64_t>(MR, m1 - ir);
      switch (P.layout) {
        case Layout::kRowsTaps: pack_rows_taps<F>(s, x, g, ir, mr, MR, k0, kc, abuf); break;
        case Layout::kRowsWidth: pack_rows_width<F>(s, x, g, ir, mr, MR, k0, kc, abuf); break;
        default: pack_cols<F, MR>(P, x, g, ir, mr, k0, kc, abuf); break;
      }
      // Where the strip's rows go: evenly strided (written in place) or scattered.
      F* c0 = c + ir * P.ldc;
      int64_t ldc = P.ldc;
      bool even = P.uniform;
      if (!P.uniform) {
        for (int64_t r = 0; r < mr; ++r) {
          crow[r] = c + b * s.os[0] + p * s.os[1] + q * s.os[2];
          if (P.batch_fastest) {
            if (++b == s.n) {
              b = 0;
              if (++q == s.wo) q = 0, ++p;
            }
          } else if (++q == s.wo) {
            q = 0;
            if (++p == s.ho) p = 0, ++b;
          }
        }
        c0 = crow[0];
        ldc = mr > 1 ? crow[1] - crow[0] : P.cog;
        even = ldc >= P.cog;
        for (int64_t r = 2; r < mr && even; ++r) even = crow[r] - crow[r - 1] == ldc;
      }
      for (int64_t jr = 0; jr < P.cog; jr += NR) {
        const int64_t nr = std::min<int64_t>(NR, P.cog - jr);
        if (even && mr == MR && nr == NR) {
          micro_kernel_strided<F, MR, NV>(kc, abuf, ars, acs, bp + jr * kc, c0 + jr, ldc, accumulate);
          continue;
        }
        alignas(64) F tile[MR * NR];
        micro_kernel_strided<F, MR, NV>(kc, abuf, ars, acs, bp + jr * kc, tile, NR, false);
        if (even) {
          write_tile<F, MR, NV>(tile, c0 + jr, ldc, accumulate, mr, nr);
        } else {
          for (int64_t r = 0; r < mr; ++r) write_tile<F, 1, NV>(tile + r * NR, crow[r] + jr, 0, accumulate, 1, nr);
        }
      }
    }
  }

  // C (rows of every group; c: column 0) for the whole product.
  static void run(const Plan& P, const F* x, const F* f, F* c) {
    const ConvGeometry& s = *P.s;
    const int64_t G = s.groups, M = P.M, K = P.K, cog = P.cog;
    const int64_t ks = kc_step<F>(K), nslabs = (K + ks - 1) / ks, npad = round_up(cog, NR);
    const int64_t mstrips = (M + MR - 1) / MR;
    const double work = double(G) * double(M) * double(cog) * double(K);
    const int nt = work >= double(kParallelFlops) && !in_parallel() ? pool_threads() : 1;
    const int64_t min_chunks = G * ((mstrips + kMinChunkStrips - 1) / kMinChunkStrips);
    if (nt > 1 && nslabs >= 2 && min_chunks < 2 * nt && G * M * cog <= kMaxPartialElems) {
      split_k(P, x, f, c, nt);
      return;
    }
    // Chunks of whole strips, about kChunksPerThread per thread, at most an MC block.
    int64_t cm = Blocking<F>::MC_STRIPS;
    if (nt > 1) {
      const int64_t want = int64_t(nt) * kChunksPerThread;
      cm = std::max<int64_t>(kMinChunkStrips, (G * mstrips + want - 1) / want);
      cm = std::min<int64_t>(cm, Blocking<F>::MC_STRIPS);
    }
    const int64_t mchunks = (mstrips + cm - 1) / cm;
    const int64_t slab_elems = ks * npad + kSpill;  // slack: packing tasks may spill
    const int64_t per_range = std::max<int64_t>(1, kSharedFilterBytes / int64_t(sizeof(F)) / (G * slab_elems));
    for (int64_t p0 = 0; p0 < nslabs; p0 += per_range) {
      const int64_t np = std::min(per_range, nslabs - p0);
      // Slab p of group g at bshared + (g * np + p - p0) * slab_elems.
      F* bshared = scratch<F>(kConvB, G * np * slab_elems);
      auto pack = [&](int64_t t) {
        const int64_t g = t / np, p = p0 + t % np, k0 = p * ks;
        pack_filter<F, NR>(P, f, g, k0, std::min(ks, K - k0), bshared + t * slab_elems);
      };
      if (nt > 1 && G * np * slab_elems * int64_t(sizeof(F)) > kSerialPackBytes) {
        parallel_for(G * np, pack, nt);
      } else {
        for (int64_t t = 0; t < G * np; ++t) pack(t);
      }
      auto chunk = [&](int64_t t) {
        const int64_t g = t / mchunks, m0 = (t % mchunks) * cm * MR, m1 = std::min(M, m0 + cm * MR);
        for (int64_t p = p0; p < p0 + np; ++p) {
          const int64_t k0 = p * ks;
          rows(P, x, g, m0, m1, k0, std::min(ks, K - k0), bshared + (g * np + p - p0) * slab_elems, c + g * cog,
               p > 0);
        }
      };
      if (nt > 1) {
        parallel_for(G * mchunks, chunk, nt);
      } else {
        for (int64_t t = 0; t < G * mchunks; ++t) chunk(t);
      }
    }
  }

  // Several products (the boxes of one convolution, each a plan with its filter and C) as
  // one parallel region: tasks are chunks of a box's rows, each packing its box's filter
  // slab by slab into its own panel (a box filter is a few taps of the layer's).
  static void run_boxes(const std::vector<Box<F>>& boxes, const F* x, int nt) {
    struct Task {
      int box;
      int64_t g, m0, m1;
    };
    int64_t strips = 0;
    for (const auto& bx : boxes) strips += bx.P.s->groups * ((bx.P.M + MR - 1) / MR);
    const int64_t want = int64_t(nt) * kChunksPerThread;
    const int64_t cm = std::min<int64_t>(Blocking<F>::MC_STRIPS, std::max<int64_t>(2, (strips + want - 1) / want));
    std::vector<Task> tasks;
    for (int b = 0; b < int(boxes.size()); ++b) {
      const Plan& P = boxes[b].P;
      for (int64_t g = 0; g < P.s->groups; ++g)
        for (int64_t m0 = 0; m0 < P.M; m0 += cm * MR) tasks.push_back({b, g, m0, std::min(P.M, m0 + cm * MR)});
    }
    parallel_for(int64_t(tasks.size()), [&](int64_t t) {
      const Task& task = tasks[size_t(t)];
      const Box<F>& bx = boxes[size_t(task.box)];
      const Plan& P = bx.P;
      const int64_t ks = kc_step<F>(P.K), npad = round_up(P.cog, NR);
      F* bp = scratch<F>(kConvB, ks * npad + kSpill);
      for (int64_t k0 = 0; k0 < P.K; k0 += ks) {
        const int64_t kc = std::min(ks, P.K - k0);
        pack_filter<F, NR>(P, bx.f, task.g, k0, kc, bp);
        rows(P, x, task.g, task.m0, task.m1, k0, kc, bp, bx.c + task.g * P.cog, k0 > 0);
      }
    }, nt);
  }

  // Few rows, deep K: tasks sum ranges of slabs into partial Cs, then add up.
  static void split_k(const Plan& P, const F* x, const F* f, F* c, int nt) {
    const ConvGeometry& s = *P.s;
    const int64_t G = s.groups, M = P.M, K = P.K, cog = P.cog;
    const int64_t ks = kc_step<F>(K), nslabs = (K + ks - 1) / ks, npad = round_up(cog, NR);
    const int64_t kt = std::min<int64_t>(nslabs, 2 * int64_t(nt));
    const int64_t part = M * cog;  // one partial: compact rows of cog
    std::unique_ptr<F[]> partials(new F[size_t(kt * G * part)]);
    const int64_t mc = Blocking<F>::MC_STRIPS * MR;
    Plan Pp = P;  // the partials: compact rows of cog
    Pp.uniform = true;
    Pp.ldc = cog;
    parallel_for(kt * G, [&](int64_t t) {
      const int64_t r = t / G, g = t % G;
      const int64_t pa = r * nslabs / kt, pb = (r + 1) * nslabs / kt;
      F* cp = partials.get() + t * part;
      F* bp = scratch<F>(kConvB, ks * npad + kSpill);
      for (int64_t p = pa; p < pb; ++p) {
        const int64_t k0 = p * ks, kc = std::min(ks, K - k0);
        pack_filter<F, NR>(P, f, g, k0, kc, bp);
        for (int64_t m0 = 0; m0 < M; m0 += mc) rows(Pp, x, g, m0, std::min(M, m0 + mc), k0, kc, bp, cp, p > pa);
      }
    }, nt);
    const int64_t hw = s.ho * s.wo;
    for (int64_t m = 0; m < M; ++m) {
      F* crow = c + m * P.ldc;
      if (!P.uniform) {
        const int64_t b = P.batch_fastest ? m % s.n : m / hw, pq = P.batch_fastest ? m / s.n : m % hw;
        crow = c + b * s.os[0] + (pq / s.wo) * s.os[1] + (pq % s.wo) * s.os[2];
      }
      for (int64_t g = 0; g < G; ++g) {
        F* dst = crow + g * cog;
        const F* src = partials.get() + g * part + m * cog;
        std::memcpy(dst, src, size_t(cog) * sizeof(F));
        for (int64_t r = 1; r < kt; ++r) {
          const F* add = src + r * G * part;
#pragma omp simd
          for (int64_t j = 0; j < cog; ++j) dst[j] += add[j];
        }
      }
    }
  }
};

template <typename F>
void run_plan(const Plan& P, const F* x, const F* f, F* c) {
  using TL = Tile<F>;
  if constexpr (TL::MR_NARROW > 0) {
    if (P.cog <= Vec<F>::W) return Engine<F, TL::MR_NARROW, 1>::run(P, x, f, c);
  }
  Engine<F, TL::MR, TL::NV>::run(P, x, f, c);
}

// The boxes of one convolution: one parallel region over all of them when threads
// pay (a box alone is often too small to share out), else box by box.
template <typename F>
void run_boxes(std::vector<Box<F>>& boxes, const F* x) {
  double work = 0;
  for (auto& bx : boxes) {
    bx.P.s = &bx.s;  // the vector is complete: its geometries stay put
    work += double(bx.s.groups) * double(bx.P.M) * double(bx.P.cog) * double(bx.P.K);
  }
  const int nt = work >= double(kParallelFlops) && !in_parallel() ? pool_threads() : 1;
  if (nt == 1 || boxes.size() == 1) {
    for (const auto& bx : boxes) run_plan(bx.P, x, bx.f, bx.c);
    return;
  }
  using TL = Tile<F>;
  if constexpr (TL::MR_NARROW > 0) {
    if (boxes[0].P.cog <= Vec<F>::W) return Engine<F, TL::MR_NARROW, 1>::run_boxes(boxes, x, nt);
  }
  Engine<F, TL::MR, TL::NV>::run_boxes(boxes, x, nt);
}

// One axis of the output split into runs [o0, o1) of outputs that read the
// same taps [t0, t1) (every other tap reads padding): tap t of output o reads
// input o s + t d - pad, inside when 0 <= it < n. Runs with no tap read zeros.
struct AxisRun {
  int64_t o0, o1, t0, t1;
};
std::vector<AxisRun> axis_runs(int64_t n, int64_t n_out, int64_t k, int64_t s, int64_t d, int64_t pad) {
  std::vector<AxisRun> runs;
  for (int64_t o = 0; o < n_out; ++o) {
    const int64_t r0 = o * s - pad;
    const int64_t t0 = std::max<int64_t>(0, ceil_div(-r0, d)), t1 = std::min<int64_t>(k, ceil_div(n - r0, d));
    const int64_t a = std::min(t0, t1), z = t1;  // empty as (t1, t1)
    if (!runs.empty() && runs.back().t0 == a && runs.back().t1 == z) {
      runs.back().o1 = o + 1;
    } else {
      runs.push_back({o, o + 1, a, z});
    }
  }
  return runs;
}

// Below this share of padding taps in the im2col matrix, the convolution runs
// as one product over zero-filled panels; above it, it is split into boxes of
// outputs that read the same taps, each a product over those taps alone (a
// 3x3 filter on a 4x4 map reads padding in 31% of its taps).
constexpr double kPaddingShareForBoxes = 0.1;

}  // namespace
}  // namespace conv_detail

template <typename T>
void conv2d_implicit(const ConvGeometry& s, const T* x, const T* f, T* out) {
  // x is (n, h, w, c), f is (kh, kw, cg, cout), out is (n, ho, wo, cout); all strided (see conv.h).
  using namespace conv_detail;
  using F = T;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "conv2d_implicit: float or double");
  conv_detail::Plan P{&s, s.n * s.ho * s.wo, s.kh * s.kw * s.cg, s.groups ? s.cout / s.groups : 0, false,
                      Layout::kRowsTaps, true, 0};
  if (P.M == 0 || s.cout == 0) return;
  // Where out's rows go: evenly strided in (n, ho, wo) or in (ho, wo, n) order,
  // else through a compact scratch C.
  int64_t ldc = 0;
  const int64_t nat_size[3] = {s.n, s.ho, s.wo}, nat_stride[3] = {s.os[0], s.os[1], s.os[2]};
  const int64_t bf_size[3] = {s.ho, s.wo, s.n}, bf_stride[3] = {s.os[1], s.os[2], s.os[0]};
  bool in_place = s.os[3] == 1 || s.cout == 1;
  if (in_place && !rows_uniform(nat_size, nat_stride, &ldc)) {
    P.batch_fastest = rows_uniform(bf_size, bf_stride, &ldc);
    in_place = P.batch_fastest;
  }
  if (ldc < s.cout) in_place = in_place && P.M == 1;
  std::vector<F> tmp;
  F* c = out;
  if (!in_place) {
    P.batch_fastest = false;
    tmp.assign(size_t(P.M * s.cout), F(0));
    c = tmp.data();
    ldc = s.cout;
  }
  if (P.K == 0) {
    for (int64_t m = 0; m < P.M; ++m) std::fill(c + m * ldc, c + m * ldc + s.cout, F(0));
  } else {
    // C's geometry: out's, or the compact scratch's.
    ConvGeometry sc = s;
    if (!in_place) {
      sc.os[3] = 1, sc.os[2] = s.cout, sc.os[1] = s.wo * s.cout, sc.os[0] = s.ho * s.wo * s.cout;
    }
    const auto hr = axis_runs(s.h, s.ho, s.kh, s.sh, s.dh, s.pt), wr = axis_runs(s.w, s.wo, s.kw, s.sw, s.dw, s.pl);
    double live = 0;  // share of the taps that read the image
    for (const auto& a : hr)
      for (const auto& e : wr) live += double((a.o1 - a.o0) * (a.t1 - a.t0)) * double((e.o1 - e.o0) * (e.t1 - e.t0));
    live /= double(s.ho * s.kh) * double(s.wo * s.kw);
    if (hr.size() * wr.size() == 1 || 1.0 - live < kPaddingShareForBoxes) {
      P.layout = plan_layout(sc, P.batch_fastest);
      P.uniform = true;
      P.ldc = ldc;
      run_plan(P, x, f, c);
    } else {
      // One product per box of outputs that read the same taps: a sub-convolution of
      // the box's outputs with the filter's live taps, its padding shifted to match.
      std::vector<Box<F>> boxes;
      for (const auto& a : hr) {
        for (const auto& e : wr) {
          ConvGeometry sb = sc;
          sb.ho = a.o1 - a.o0, sb.wo = e.o1 - e.o0, sb.kh = a.t1 - a.t0, sb.kw = e.t1 - e.t0;
          F* cb = c + a.o0 * sc.os[1] + e.o0 * sc.os[2];
          if (sb.kh == 0 || sb.kw == 0) {  // every tap reads padding
            for (int64_t b = 0; b < s.n; ++b)
              for (int64_t p = 0; p < sb.ho; ++p)
                for (int64_t q = 0; q < sb.wo; ++q)
                  std::fill_n(cb + b * sc.os[0] + p * sc.os[1] + q * sc.os[2], s.cout, F(0));
            continue;
          }
          sb.pt = s.pt - a.o0 * s.sh - a.t0 * s.dh, sb.pl = s.pl - e.o0 * s.sw - e.t0 * s.dw;
          Plan Pb{nullptr, s.n * sb.ho * sb.wo, sb.kh * sb.kw * s.cg, P.cog, P.batch_fastest, Layout::kRowsTaps, false,
                  0};
          Pb.layout = plan_layout(sb, Pb.batch_fastest);
          const int64_t size[3] = {Pb.batch_fastest ? sb.ho : s.n, Pb.batch_fastest ? sb.wo : sb.ho,
                                   Pb.batch_fastest ? s.n : sb.wo};
          const int64_t stride[3] = {Pb.batch_fastest ? sc.os[1] : sc.os[0], Pb.batch_fastest ? sc.os[2] : sc.os[1],
                                     Pb.batch_fastest ? sc.os[0] : sc.os[2]};
          Pb.uniform = rows_uniform(size, stride, &Pb.ldc) && (Pb.ldc >= s.cout || Pb.M == 1);
          boxes.push_back({sb, Pb, f + a.t0 * s.fs[0] + e.t0 * s.fs[1], cb});
        }
      }
      if (!boxes.empty()) run_boxes(boxes, x);
    }
  }
  if (!in_place) {
    // tmp rows are (b, p, q): scatter into out's strides.
    int64_t m = 0;
    for (int64_t b = 0; b < s.n; ++b)
      for (int64_t p = 0; p < s.ho; ++p)
        for (int64_t q = 0; q < s.wo; ++q, ++m) {
          T* o = out + b * s.os[0] + p * s.os[1] + q * s.os[2];
          for (int64_t j = 0; j < s.cout; ++j) o[j * s.os[3]] = tmp[size_t(m * s.cout + j)];
        }
  }
}

template void conv2d_implicit<float>(const ConvGeometry&, const float*, const float*, float*);
template void conv2d_implicit<double>(const ConvGeometry&, const double*, const double*, double*);

void Conv2d(const Buffer& x, const Buffer& w, Buffer* out, Shape x_shape, Shape x_strides, int64_t x_offset,
            Shape w_shape, Shape w_strides, int64_t w_offset, Shape out_shape, Shape out_strides, Shape stride,
            Shape padding, Shape dilation, int64_t groups) {
  // x is (n, h, w, c), w is (kh, kw, c / groups, cout), out is (n, ho, wo, cout); all strided.
  const char* fn = "conv2d";
  const DType dt = check_same_dtype(fn, {x.dtype, w.dtype, out->dtype});
  check_dtype_in(fn, dt, kFusedMask, "float32 or float64");
  check_conv2d(fn, x.size, w.size, out->size, x_shape, x_strides, x_offset, w_shape, w_strides, w_offset, out_shape,
               out_strides, stride, padding, dilation, groups);
  if (shape_size(out_shape) == 0) return;
  const ConvGeometry g =
      conv_geometry(x_shape, x_strides, w_shape, w_strides, out_shape, out_strides, stride, padding, dilation, groups);
  dispatch<kFusedMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>() + x_offset;
    const T* wp = w.data<T>() + w_offset;
    if (!conv2d_few_images<T>(g, xp, wp, out->data<T>())) conv2d_implicit<T>(g, xp, wp, out->data<T>());
  });
}

}  // namespace cpu
}  // namespace needle
