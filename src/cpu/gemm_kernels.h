// The per-ISA pieces of the CPU GEMM (gemm.cc): one vector register of each
// compute type, the register tile and cache blocking per compute type, and
// the conversions between storage types and compute types that packing and
// the final write of C use. Everything else in gemm.cc is written once over
// these. Included by gemm.cc only.
//
// Storage -> compute type: float -> float, double -> double, float16 and
// bfloat16 -> float (converted while packing, the float micro-kernel runs,
// the float tile is rounded once when C is written), int32 and uint8 ->
// uint32, int64 -> uint64. Unsigned arithmetic wraps modulo 2^bits, and a sum
// modulo 2^32 truncated to 32 or 8 bits is the sum modulo 2^64 truncated the
// same way, so int32/uint8 results equal accumulating in int64 and truncating.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/half.h"

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace needle {
namespace cpu {
namespace gemm_detail {

template <typename T> struct AccOf { using type = T; };
template <> struct AccOf<half_t> { using type = float; };
template <> struct AccOf<bfloat16_t> { using type = float; };
template <> struct AccOf<int32_t> { using type = uint32_t; };
template <> struct AccOf<int64_t> { using type = uint64_t; };
template <> struct AccOf<uint8_t> { using type = uint32_t; };
template <typename T> using acc_t = typename AccOf<T>::type;

// C is written in place as its compute type when both have the same width
// (float, double, and int32/int64 as their unsigned twins, which may alias
// them); otherwise a compute-type tile is converted to T once K is done.
template <typename T> constexpr bool kInPlace = sizeof(T) == sizeof(acc_t<T>);

// ---------------------------------------------------------------------------
// Vec<F>: one register of W values of compute type F, chosen at build time.
// load() is for packed data (aligned to a whole register); loadu/storeu any.
// ---------------------------------------------------------------------------
template <typename F> struct Vec;

#if defined(__AVX512F__)
template <> struct Vec<float> {
  using v = __m512;
  static constexpr int W = 16;
  static v zero() { return _mm512_setzero_ps(); }
  static v load(const float* p) { return _mm512_load_ps(p); }
  static v loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, v x) { _mm512_storeu_ps(p, x); }
  static v bcast(const float* p) { return _mm512_set1_ps(*p); }
  static v fma(v a, v b, v c) { return _mm512_fmadd_ps(a, b, c); }
  static v add(v a, v b) { return _mm512_add_ps(a, b); }
};
template <> struct Vec<double> {
  using v = __m512d;
  static constexpr int W = 8;
  static v zero() { return _mm512_setzero_pd(); }
  static v load(const double* p) { return _mm512_load_pd(p); }
  static v loadu(const double* p) { return _mm512_loadu_pd(p); }
  static void storeu(double* p, v x) { _mm512_storeu_pd(p, x); }
  static v bcast(const double* p) { return _mm512_set1_pd(*p); }
  static v fma(v a, v b, v c) { return _mm512_fmadd_pd(a, b, c); }
  static v add(v a, v b) { return _mm512_add_pd(a, b); }
};
constexpr int kVecBytes = 64;
#elif defined(__AVX2__) && defined(__FMA__)
template <> struct Vec<float> {
  using v = __m256;
  static constexpr int W = 8;
  static v zero() { return _mm256_setzero_ps(); }
  static v load(const float* p) { return _mm256_load_ps(p); }
  static v loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, v x) { _mm256_storeu_ps(p, x); }
  static v bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static v fma(v a, v b, v c) { return _mm256_fmadd_ps(a, b, c); }
  static v add(v a, v b) { return _mm256_add_ps(a, b); }
};
template <> struct Vec<double> {
  using v = __m256d;
  static constexpr int W = 4;
  static v zero() { return _mm256_setzero_pd(); }
  static v load(const double* p) { return _mm256_load_pd(p); }
  static v loadu(const double* p) { return _mm256_loadu_pd(p); }
  static void storeu(double* p, v x) { _mm256_storeu_pd(p, x); }
  static v bcast(const double* p) { return _mm256_broadcast_sd(p); }
  static v fma(v a, v b, v c) { return _mm256_fmadd_pd(a, b, c); }
  static v add(v a, v b) { return _mm256_add_pd(a, b); }
};
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;  // SSE2 on any x86-64, NEON on ARM
#endif

// GCC/Clang vector extensions, one register wide: the portable float and
// double registers and the integer ones on every ISA (a * b + c is a
// multiply-low and an add; wrap-around is the unsigned semantics we want).
template <typename F> struct VecExt {
  typedef F v __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / int(sizeof(F));
  static v zero() { return v{} ; }
  static v load(const F* p) { return *reinterpret_cast<const v*>(p); }
  static v loadu(const F* p) { v x; std::memcpy(&x, p, sizeof(x)); return x; }
  static void storeu(F* p, v x) { std::memcpy(p, &x, sizeof(x)); }
  static v bcast(const F* p) { return v{} + *p; }
  static v fma(v a, v b, v c) { return a * b + c; }
  static v add(v a, v b) { return a + b; }
};
#if !defined(__AVX512F__) && !(defined(__AVX2__) && defined(__FMA__))
template <> struct Vec<float> : VecExt<float> {};
template <> struct Vec<double> : VecExt<double> {};
#endif
template <> struct Vec<uint32_t> : VecExt<uint32_t> {};
template <> struct Vec<uint64_t> : VecExt<uint64_t> {};

// ---------------------------------------------------------------------------
// Register tiles: MR rows x NV registers of C live in registers. A second,
// one-register-wide tile of MR_NARROW rows (0: none) serves N <= W.
// ---------------------------------------------------------------------------
template <typename F> struct Tile;
#if defined(__AVX512F__)
// 12 x 2 registers: 24 accumulators, 2 B loads and 12 broadcasts per k (of
// the 32 zmm). The 14 x 1 tile serves products with N <= W (conv layers with
// few output channels), where a two-register strip would be half zeros.
template <typename F> struct Tile { static constexpr int MR = 12, NV = 2, MR_NARROW = 14; };
#elif defined(__AVX2__) && defined(__FMA__)
// 6 x 2 registers: 12 accumulators, 2 B loads and 6 broadcasts per k (16 ymm).
template <typename F> struct Tile { static constexpr int MR = 6, NV = 2, MR_NARROW = 0; };
#else
// 4 x 2 registers: 8 accumulators, fits the 16 registers of SSE2 / NEON's 32.
template <typename F> struct Tile { static constexpr int MR = 4, NV = 2, MR_NARROW = 0; };
#endif

#if defined(__AVX512F__)
const char* const kKernelName = "avx512 12x32 (+14x16 for N <= 16)";
#elif defined(__AVX2__) && defined(__FMA__)
const char* const kKernelName = "avx2+fma 6x16";
#else
const char* const kKernelName = "portable 4x8";
#endif

// ---------------------------------------------------------------------------
// Cache blocking per compute type. float: tuned on a Xeon with 48 KiB L1d and
// 2 MiB L2 per core (KC 128..512 x MC 96..384 swept; 384 x 384 was best at
// 1024-2048): the MC x KC block of A (576 KiB) stays in L2, a KC x NR strip
// of B is reused by every A strip of the block from L1/L2, the KC x NC panel
// streams from L3. double: the same strip bytes in L1 (KC x NR x 8) and the
// same block of A in L2 (MC x KC x 8 = 576 KiB at MR = 12); KC 256..512 x MC
// 96..384 and an 8 x 24 tile were all within noise of this on a 2-core
// AVX-512 machine (Zen 5), at or above OpenBLAS's dgemm.
// ---------------------------------------------------------------------------
template <typename F> struct Blocking {
  static constexpr int64_t KC = 384;
  static constexpr int64_t MC_STRIPS = 32;  // MC = MC_STRIPS * MR
  static constexpr int64_t NC = 2048;
};
template <> struct Blocking<double> {
  static constexpr int64_t KC = 384;
  static constexpr int64_t MC_STRIPS = 16;
  static constexpr int64_t NC = 2048;
};
template <> struct Blocking<uint64_t> : Blocking<double> {};

// ---------------------------------------------------------------------------
// Storage <-> compute conversions
// ---------------------------------------------------------------------------
template <typename F, typename T>
inline F to_acc(T x) { return static_cast<F>(x); }  // same type, or integer wrap-around
template <>
inline float to_acc<float, half_t>(half_t x) {
#if defined(__F16C__)
  return _cvtsh_ss(x.bits);
#else
  return f16_to_float(x);
#endif
}
template <>
inline float to_acc<float, bfloat16_t>(bfloat16_t x) { return bf16_to_float(x); }

template <typename T, typename F>
inline T from_acc(F x) { return static_cast<T>(x); }  // same type, or truncation
template <>
inline half_t from_acc<half_t, float>(float x) {
#if defined(__F16C__)
  return half_t{uint16_t(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT))};
#else
  return float_to_f16(x);
#endif
}
template <>
inline bfloat16_t from_acc<bfloat16_t, float>(float x) { return float_to_bf16(x); }

#if defined(__AVX512F__)
constexpr __mmask16 kAll16 = 0xffff;
#endif

// One register of compute type F from W consecutive values of T.
template <typename T, typename F = acc_t<T>>
inline typename Vec<F>::v load_cvt(const T* p) {
  if constexpr (std::is_same_v<T, F>) {
    return Vec<F>::loadu(p);
  }
#if defined(__AVX512F__)
  else if constexpr (std::is_same_v<T, half_t>) {
    // (The maskz forms with every lane set: the unmasked ones trip a false
    // -Wmaybe-uninitialized in GCC 12's headers.)
    return _mm512_maskz_cvtph_ps(kAll16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll16, w, 16));
  }
#elif defined(__AVX2__) && defined(__FMA__)
#if defined(__F16C__)
  else if constexpr (std::is_same_v<T, half_t>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
#endif
  else if constexpr (std::is_same_v<T, bfloat16_t>) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
#endif
  else {
    alignas(64) F tmp[Vec<F>::W];
    for (int i = 0; i < Vec<F>::W; ++i) tmp[i] = to_acc<F>(p[i]);
    return Vec<F>::load(tmp);
  }
}

// Eight consecutive values of T as F (packing row-major A, 8 k at a time).
template <typename T, typename F = acc_t<T>>
inline void load8(const T* p, F* out) {
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, half_t>) {
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    return;
  }
#endif
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) out[i] = to_acc<F>(p[i]);
}

// dst[0..n) = src[0..n) rounded (halves, to nearest even) or truncated (uint8).
template <typename T, typename F>
inline void store_row(const F* src, T* dst, int64_t n) {
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, half_t>) {
    for (; j + 16 <= n; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                          _mm512_maskz_cvtps_ph(kAll16, _mm512_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
  }
#elif defined(__F16C__)
  if constexpr (std::is_same_v<T, half_t>) {
    for (; j + 8 <= n; j += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; j < n; ++j) dst[j] = from_acc<T>(src[j]);
}

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace needle
