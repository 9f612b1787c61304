// Value conversions between the storage types, as numpy does them on x86-64:
// float -> integer truncates toward zero; NaN and values outside the target's
// range give INT64_MIN / INT32_MIN (the processor's "integer indefinite"), and
// uint8 takes the low byte of the int32 conversion; anything -> bool is x != 0
// (NaN is true); halves go through float, and double rounds to a half once.
// Usable in host and CUDA device code.
#pragma once
#include <cstdint>

#include <cstring>

#include "dtypes.h"
#include "half.h"

namespace needle {

// A storage value widened to its compute type (halves to float, others as they are).
NEEDLE_HD float widen(half_t h) { return f16_to_float(h); }
NEEDLE_HD float widen(bfloat16_t h) { return bf16_to_float(h); }
template <typename T>
NEEDLE_HD T widen(T x) { return x; }

template <typename To>
struct Convert {
  template <typename From>
  NEEDLE_HD static To from(From x) { return static_cast<To>(x); }
  NEEDLE_HD static To from(half_t x) { return from(f16_to_float(x)); }
  NEEDLE_HD static To from(bfloat16_t x) { return from(bf16_to_float(x)); }
};

template <>
struct Convert<int64_t> {
  template <typename From>
  NEEDLE_HD static int64_t from(From x) { return static_cast<int64_t>(x); }
  NEEDLE_HD static int64_t from(double x) {
    return (x >= -9223372036854775808.0 && x < 9223372036854775808.0) ? static_cast<int64_t>(x) : INT64_MIN;
  }
  NEEDLE_HD static int64_t from(float x) { return from(double(x)); }
  NEEDLE_HD static int64_t from(half_t x) { return from(double(f16_to_float(x))); }
  NEEDLE_HD static int64_t from(bfloat16_t x) { return from(double(bf16_to_float(x))); }
};

template <>
struct Convert<int32_t> {
  template <typename From>
  NEEDLE_HD static int32_t from(From x) { return static_cast<int32_t>(x); }
  NEEDLE_HD static int32_t from(double x) {
    return (x > -2147483649.0 && x < 2147483648.0) ? static_cast<int32_t>(x) : INT32_MIN;
  }
  NEEDLE_HD static int32_t from(float x) { return from(double(x)); }
  NEEDLE_HD static int32_t from(half_t x) { return from(double(f16_to_float(x))); }
  NEEDLE_HD static int32_t from(bfloat16_t x) { return from(double(bf16_to_float(x))); }
  NEEDLE_HD static int32_t from(int64_t x) { return static_cast<int32_t>(static_cast<uint32_t>(x)); }
};

template <>
struct Convert<uint8_t> {
  template <typename From>
  NEEDLE_HD static uint8_t from(From x) { return static_cast<uint8_t>(x); }
  NEEDLE_HD static uint8_t from(double x) { return static_cast<uint8_t>(static_cast<uint32_t>(Convert<int32_t>::from(x))); }
  NEEDLE_HD static uint8_t from(float x) { return from(double(x)); }
  NEEDLE_HD static uint8_t from(half_t x) { return from(double(f16_to_float(x))); }
  NEEDLE_HD static uint8_t from(bfloat16_t x) { return from(double(bf16_to_float(x))); }
  NEEDLE_HD static uint8_t from(int64_t x) { return static_cast<uint8_t>(static_cast<uint64_t>(x)); }
  NEEDLE_HD static uint8_t from(int32_t x) { return static_cast<uint8_t>(static_cast<uint32_t>(x)); }
};

template <>
struct Convert<bool> {
  template <typename From>
  NEEDLE_HD static bool from(From x) { return x != From(0); }
  NEEDLE_HD static bool from(float x) { return !(x == 0.0f); }
  NEEDLE_HD static bool from(double x) { return !(x == 0.0); }
  NEEDLE_HD static bool from(half_t x) { return (x.bits & 0x7fffu) != 0; }
  NEEDLE_HD static bool from(bfloat16_t x) { return (x.bits & 0x7fffu) != 0; }
};

template <>
struct Convert<half_t> {
  template <typename From>
  NEEDLE_HD static half_t from(From x) { return float_to_f16(static_cast<float>(x)); }
  NEEDLE_HD static half_t from(double x) { return double_to_f16(x); }
  NEEDLE_HD static half_t from(int64_t x) { return double_to_f16(static_cast<double>(x)); }
  NEEDLE_HD static half_t from(int32_t x) { return double_to_f16(static_cast<double>(x)); }
  NEEDLE_HD static half_t from(half_t x) { return x; }
  NEEDLE_HD static half_t from(bfloat16_t x) { return float_to_f16(bf16_to_float(x)); }
};

template <>
struct Convert<bfloat16_t> {
  template <typename From>
  NEEDLE_HD static bfloat16_t from(From x) { return float_to_bf16(static_cast<float>(x)); }
  NEEDLE_HD static bfloat16_t from(double x) { return double_to_bf16(x); }
  NEEDLE_HD static bfloat16_t from(int64_t x) { return double_to_bf16(static_cast<double>(x)); }
  NEEDLE_HD static bfloat16_t from(int32_t x) { return double_to_bf16(static_cast<double>(x)); }
  NEEDLE_HD static bfloat16_t from(bfloat16_t x) { return x; }
  NEEDLE_HD static bfloat16_t from(half_t x) { return float_to_bf16(f16_to_float(x)); }
};

// convert<To>(x): x of any storage or compute type as a To.
template <typename To, typename From>
NEEDLE_HD To convert(From x) { return Convert<To>::from(x); }

// A Python number as the backends receive it: integers exactly (as int64, wrapped
// modulo 2^64 like numpy's casts when wider), everything else as a double.
struct Scalar {
  double f;    // the value as a double (for floating targets and for floats)
  int64_t i;   // the value as an int64 when is_int
  bool is_int;
};

// The scalar as a storage value of T, converted as numpy's np.array([v]).astype(T) does.
template <typename T>
NEEDLE_HD T scalar_as(const Scalar& s) {
  return s.is_int ? Convert<T>::from(s.i) : Convert<T>::from(s.f);
}

// The scalar converted to dt, as the bits of dt's width W (for the dtype-blind
// fill and setitem kernels). Host code.
template <typename W>
W scalar_bits(DType dt, const Scalar& val) {
  return dispatch(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T x = scalar_as<T>(val);
    W bits = 0;
    std::memcpy(&bits, &x, sizeof(T) < sizeof(W) ? sizeof(T) : sizeof(W));  // equal for dt's own width
    return bits;
  });
}

}  // namespace needle
