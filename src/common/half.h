// float16 and bfloat16 storage types and their conversions to and from float
// and double (round to nearest even, NaN kept quiet), usable in host and CUDA
// device code. The CUDA kernels may use __half / __nv_bfloat16 instead: the bit
// layouts are the same.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NEEDLE_HD __host__ __device__ __forceinline__
#else
#define NEEDLE_HD inline
#endif

namespace needle {

struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

NEEDLE_HD uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
NEEDLE_HD float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// ---- bfloat16: the top 16 bits of a float ----
NEEDLE_HD float bf16_to_float(bfloat16_t h) { return bits_float(uint32_t(h.bits) << 16); }

NEEDLE_HD bfloat16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16_t{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return bfloat16_t{uint16_t(rounded >> 16)};
}

// ---- float16: 1 sign, 5 exponent, 10 mantissa bits ----
NEEDLE_HD float f16_to_float(half_t h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: mant * 2^-24, exact in float.
    const float v = float(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

NEEDLE_HD half_t float_to_f16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half_t{uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // NaN
  if (a >= 0x477ff000u) return half_t{uint16_t(sign | 0x7c00u)};  // rounds to inf (>= 65520)
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): a subnormal multiple of 2^-24, rounded
    // to nearest even by adding to 0.5 (whose ulp in float is 2^-24 as well).
    const float v = bits_float(a) + 0.5f;
    return half_t{uint16_t(sign | (float_bits(v) - 0x3f000000u))};
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
  const uint32_t r = a - 0x38000000u + 0xfffu + ((a >> 13) & 1u);
  return half_t{uint16_t(sign | (r >> 13))};
}

// double -> float rounding to odd: the float below |d| with its last bit set when
// inexact. Rounding that float to 16 bits then gives the correctly rounded result
// of d (float keeps more than two extra bits), with no double rounding.
NEEDLE_HD float double_to_float_odd(double d) {
  float f = float(d);
  if (double(f) == d || d != d) return f;
  if ((f > 0 && double(f) > d) || (f < 0 && double(f) < d)) {
    uint32_t u = float_bits(f) - 1u;  // one step toward zero
    f = bits_float(u);
  }
  return bits_float(float_bits(f) | 1u);
}

NEEDLE_HD half_t double_to_f16(double d) { return float_to_f16(double_to_float_odd(d)); }
NEEDLE_HD bfloat16_t double_to_bf16(double d) { return float_to_bf16(double_to_float_odd(d)); }

}  // namespace needle
