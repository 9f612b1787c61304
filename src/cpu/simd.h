// The one vector layer of the CPU kernels: a register of floats (AVX-512 or
// AVX2+FMA, chosen at build time) and vexp / vlog / vtanh on it. Builds without
// AVX2 define no NEEDLE_VEC_MATH and use the libm loops.
#pragma once
#include <cmath>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace needle {
namespace cpu {

// exp, log, tanh vectorised, beside the libm loops that stay their reference.
// Cephes' single-precision algorithms, 8 (AVX2) or 16 (AVX-512) lanes wide with FMA:
// exp: n = round(x / ln 2), r = x - n ln 2 in two parts, a degree-5 polynomial, then
// the scale 2^n applied as 2^(n/2) * 2^(n - n/2) so that results near overflow and in
// the denormal range round once, like expf. log: x = m 2^e with m in [sqrt(1/2),
// sqrt(2)), a degree-9 polynomial in m - 1 (denormal inputs rescaled by 2^23 first).
// tanh: an odd degree-11 polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above.
// Special values are set explicitly: exp(NaN) = NaN, exp(+-inf) = inf / 0 (and
// overflow to inf, underflow through denormals to 0); log(0) = -inf, log(x < 0) = NaN,
// log(inf) = inf; tanh(+-inf) = +-1, tanh(-0) = -0. Within 2 ulp of libm over the float
// range (tests/test_cpu_kernels.py). The libm loops stay the reference and the path of
// builds without AVX2.
#if defined(__AVX512F__)
struct Vec {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  static constexpr int W = 16;
  static F set(float v) { return _mm512_set1_ps(v); }
  static I seti(int v) { return _mm512_set1_epi32(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(F a) { return _mm512_cvtps_epi32(a); }  // a already integral
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I andi(I a, I b) { return _mm512_and_si512(a, b); }
  static I ori(I a, I b) { return _mm512_or_si512(a, b); }
  static I shl23(I a) { return _mm512_slli_epi32(a, 23); }
  static I sra1(I a) { return _mm512_srai_epi32(a, 1); }
  static I srl23(I a) { return _mm512_srli_epi32(a, 23); }
  static F asf(I a) { return _mm512_castsi512_ps(a); }
  static I asi(F a) { return _mm512_castps_si512(a); }
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M not_ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_NGE_UQ); }  // a < b or unordered
  static M is_nan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static F sel(M m, F yes, F no) { return _mm512_mask_blend_ps(m, no, yes); }
  static I seli(M m, I yes, I no) { return _mm512_mask_blend_epi32(m, no, yes); }
  static F sqrt(F a) { return _mm512_sqrt_ps(a); }
  static float sum(F a) { return _mm512_reduce_add_ps(a); }
  static float hmax(F a) { return _mm512_reduce_max_ps(a); }
  static bool any(M m) { return m != 0; }
};
#define NEEDLE_VEC_MATH 1
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  using F = __m256;
  using I = __m256i;
  using M = __m256;
  static constexpr int W = 8;
  static F set(float v) { return _mm256_set1_ps(v); }
  static I seti(int v) { return _mm256_set1_epi32(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(F a) { return _mm256_cvtps_epi32(a); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I andi(I a, I b) { return _mm256_and_si256(a, b); }
  static I ori(I a, I b) { return _mm256_or_si256(a, b); }
  static I shl23(I a) { return _mm256_slli_epi32(a, 23); }
  static I sra1(I a) { return _mm256_srai_epi32(a, 1); }
  static I srl23(I a) { return _mm256_srli_epi32(a, 23); }
  static F asf(I a) { return _mm256_castsi256_ps(a); }
  static I asi(F a) { return _mm256_castps_si256(a); }
  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M not_ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_NGE_UQ); }
  static M is_nan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static F sel(M m, F yes, F no) { return _mm256_blendv_ps(no, yes, m); }
  static I seli(M m, I yes, I no) { return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(no), _mm256_castsi256_ps(yes), m)); }
  static F sqrt(F a) { return _mm256_sqrt_ps(a); }
  static float sum(F a) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
  }
  static float hmax(F a) {
    __m128 t = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    t = _mm_max_ps(t, _mm_movehl_ps(t, t));
    t = _mm_max_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
  }
  static bool any(M m) { return _mm256_movemask_ps(m) != 0; }
};
#define NEEDLE_VEC_MATH 1
#endif

#ifdef NEEDLE_VEC_MATH
using VF = Vec::F;

inline VF vexp(VF x) {
  // Clamped to [-104, 89]: below, exp rounds to 0; above, to inf (n = 128 still scales
  // by 2^64 * 2^64 without an invalid exponent). NaN lanes are put back at the end.
  const VF xc = Vec::min(Vec::max(x, Vec::set(-104.0f)), Vec::set(89.0f));
  const VF n = Vec::round(Vec::mul(xc, Vec::set(1.44269504088896341f)));
  VF r = Vec::fnma(n, Vec::set(0.693359375f), xc);
  r = Vec::fnma(n, Vec::set(-2.12194440e-4f), r);
  VF p = Vec::set(1.9875691500e-4f);
  p = Vec::fma(p, r, Vec::set(1.3981999507e-3f));
  p = Vec::fma(p, r, Vec::set(8.3334519073e-3f));
  p = Vec::fma(p, r, Vec::set(4.1665795894e-2f));
  p = Vec::fma(p, r, Vec::set(1.6666665459e-1f));
  p = Vec::fma(p, r, Vec::set(5.0000001201e-1f));
  const VF y = Vec::fma(Vec::mul(p, r), r, Vec::add(r, Vec::set(1.0f)));
  const auto ni = Vec::to_int(n);
  const auto n1 = Vec::sra1(ni);
  const auto n2 = Vec::subi(ni, n1);
  const VF s1 = Vec::asf(Vec::shl23(Vec::addi(n1, Vec::seti(127))));
  const VF s2 = Vec::asf(Vec::shl23(Vec::addi(n2, Vec::seti(127))));
  return Vec::sel(Vec::is_nan(x), x, Vec::mul(Vec::mul(y, s1), s2));
}

inline VF vlog(VF x) {
  // Denormals (and 0) are scaled into the normal range first; their exponent is fixed below.
  const auto tiny = Vec::lt(x, Vec::set(1.17549435e-38f));
  const VF xs = Vec::sel(tiny, Vec::mul(x, Vec::set(8388608.0f)), x);
  const auto bits = Vec::asi(xs);
  VF e = Vec::to_float(Vec::subi(Vec::srl23(bits), Vec::seti(126)));
  e = Vec::sub(e, Vec::sel(tiny, Vec::set(23.0f), Vec::set(0.0f)));
  // m in [0.5, 1); below sqrt(1/2) it is doubled (and e lowered) so that m - 1 is small.
  const VF m = Vec::asf(Vec::ori(Vec::andi(bits, Vec::seti(0x007fffff)), Vec::seti(0x3f000000)));
  const auto low = Vec::lt(m, Vec::set(0.707106781186547524f));
  e = Vec::sub(e, Vec::sel(low, Vec::set(1.0f), Vec::set(0.0f)));
  const VF f = Vec::sub(Vec::add(m, Vec::sel(low, m, Vec::set(0.0f))), Vec::set(1.0f));
  const VF z = Vec::mul(f, f);
  VF p = Vec::set(7.0376836292e-2f);
  p = Vec::fma(p, f, Vec::set(-1.1514610310e-1f));
  p = Vec::fma(p, f, Vec::set(1.1676998740e-1f));
  p = Vec::fma(p, f, Vec::set(-1.2420140846e-1f));
  p = Vec::fma(p, f, Vec::set(1.4249322787e-1f));
  p = Vec::fma(p, f, Vec::set(-1.6668057665e-1f));
  p = Vec::fma(p, f, Vec::set(2.0000714765e-1f));
  p = Vec::fma(p, f, Vec::set(-2.4999993993e-1f));
  p = Vec::fma(p, f, Vec::set(3.3333331174e-1f));
  VF y = Vec::mul(Vec::mul(p, f), z);
  y = Vec::fma(e, Vec::set(-2.12194440e-4f), y);
  y = Vec::fnma(Vec::set(0.5f), z, y);
  VF r = Vec::fma(e, Vec::set(0.693359375f), Vec::add(f, y));
  r = Vec::sel(Vec::eq(x, Vec::set(INFINITY)), x, r);
  r = Vec::sel(Vec::eq(x, Vec::set(0.0f)), Vec::set(-INFINITY), r);
  return Vec::sel(Vec::not_ge(x, Vec::set(0.0f)), Vec::set(NAN), r);  // x < 0 or NaN
}

inline VF vtanh(VF x) {
  const VF sign = Vec::asf(Vec::andi(Vec::asi(x), Vec::seti(int(0x80000000u))));
  const VF ax = Vec::asf(Vec::andi(Vec::asi(x), Vec::seti(0x7fffffff)));
  // Both branches compute tanh(|x|) >= 0 and take the sign of x last (so tanh(-0) = -0).
  const VF z = Vec::mul(x, x);
  VF p = Vec::set(-5.70498872745e-3f);
  p = Vec::fma(p, z, Vec::set(2.06390887954e-2f));
  p = Vec::fma(p, z, Vec::set(-5.37397155531e-2f));
  p = Vec::fma(p, z, Vec::set(1.33314422036e-1f));
  p = Vec::fma(p, z, Vec::set(-3.33332819422e-1f));
  const VF small = Vec::fma(Vec::mul(p, z), ax, ax);
  // 1 - 2 / (exp(2|x|) + 1); exp(2|x|) = inf gives exactly 1.
  const VF big = Vec::sub(Vec::set(1.0f), Vec::div(Vec::set(2.0f), Vec::add(vexp(Vec::add(ax, ax)), Vec::set(1.0f))));
  const VF t = Vec::sel(Vec::lt(ax, Vec::set(0.625f)), small, big);
  return Vec::asf(Vec::ori(Vec::asi(t), Vec::asi(sign)));
}
#endif  // NEEDLE_VEC_MATH

}  // namespace cpu
}  // namespace needle
