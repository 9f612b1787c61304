// The dtypes of needle's buffers and the dispatch from a runtime dtype to a
// template instantiation, shared by the CPU and the CUDA modules.
//
// The order of DType is the order of python/needle/backend_ndarray/dtypes.py
// DTYPES. Storage types: float, double, half_t, bfloat16_t (16-bit patterns,
// see half.h), int32_t, int64_t, uint8_t, bool. Halves compute in float.
#pragma once
#include <cstdint>
#include <string>

#include "half.h"

namespace needle {

enum class DType : int { kFloat32 = 0, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool };
constexpr int kNumDTypes = 8;

inline const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kUInt8: return "uint8";
    case DType::kBool: return "bool";
  }
  return "?";
}

constexpr const char* kDTypeList = "float32, float64, float16, bfloat16, int32, int64, uint8, bool";

// False when name is not a needle dtype (the caller raises the TypeError).
inline bool dtype_from_name(const std::string& name, DType* out) {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (name == dtype_name(static_cast<DType>(i))) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

inline int dtype_size(DType dt) {
  switch (dt) {
    case DType::kFloat64: case DType::kInt64: return 8;
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    default: return 1;
  }
}

inline bool is_floating(DType dt) { return static_cast<int>(dt) <= static_cast<int>(DType::kBFloat16); }
inline bool is_half(DType dt) { return dt == DType::kFloat16 || dt == DType::kBFloat16; }
inline bool is_integral(DType dt) { return dt == DType::kInt32 || dt == DType::kInt64 || dt == DType::kUInt8; }

// The dtype of a sum: itself for floating types, int64 for integers and bool.
inline DType sum_dtype(DType dt) { return is_floating(dt) ? dt : DType::kInt64; }

// Sets of dtypes a kernel accepts, as bit masks.
constexpr unsigned dtype_bit(DType dt) { return 1u << static_cast<int>(dt); }
constexpr unsigned kFloatingMask = dtype_bit(DType::kFloat32) | dtype_bit(DType::kFloat64) |
                                   dtype_bit(DType::kFloat16) | dtype_bit(DType::kBFloat16);
constexpr unsigned kIntegralMask = dtype_bit(DType::kInt32) | dtype_bit(DType::kInt64) | dtype_bit(DType::kUInt8);
constexpr unsigned kNumericMask = kFloatingMask | kIntegralMask;  // all but bool
constexpr unsigned kAllMask = kNumericMask | dtype_bit(DType::kBool);
constexpr unsigned kFusedMask = dtype_bit(DType::kFloat32) | dtype_bit(DType::kFloat64);

template <typename T> struct TypeTag { using type = T; };

// Storage type <-> DType.
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFloat32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kFloat64; };
template <> struct DTypeOf<half_t> { static constexpr DType value = DType::kFloat16; };
template <> struct DTypeOf<bfloat16_t> { static constexpr DType value = DType::kBFloat16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kInt64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::kUInt8; };
template <> struct DTypeOf<bool> { static constexpr DType value = DType::kBool; };

// The type arithmetic on T runs in: float for the halves, T otherwise.
template <typename T> struct ComputeOf { using type = T; };
template <> struct ComputeOf<half_t> { using type = float; };
template <> struct ComputeOf<bfloat16_t> { using type = float; };
template <typename T> using compute_t = typename ComputeOf<T>::type;

// Calls f(TypeTag<T>{}) for the storage type T of dt, for dt in the mask (the
// caller has checked it; others fall to the last case and never run f with it).
// One switch, so each kernel family is written once as a generic lambda.
template <unsigned Mask = kAllMask, typename F>
decltype(auto) dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat64: if constexpr ((Mask & dtype_bit(DType::kFloat64)) != 0) return f(TypeTag<double>{}); break;
    case DType::kFloat16: if constexpr ((Mask & dtype_bit(DType::kFloat16)) != 0) return f(TypeTag<half_t>{}); break;
    case DType::kBFloat16: if constexpr ((Mask & dtype_bit(DType::kBFloat16)) != 0) return f(TypeTag<bfloat16_t>{}); break;
    case DType::kInt32: if constexpr ((Mask & dtype_bit(DType::kInt32)) != 0) return f(TypeTag<int32_t>{}); break;
    case DType::kInt64: if constexpr ((Mask & dtype_bit(DType::kInt64)) != 0) return f(TypeTag<int64_t>{}); break;
    case DType::kUInt8: if constexpr ((Mask & dtype_bit(DType::kUInt8)) != 0) return f(TypeTag<uint8_t>{}); break;
    case DType::kBool: if constexpr ((Mask & dtype_bit(DType::kBool)) != 0) return f(TypeTag<bool>{}); break;
    default: break;
  }
  if constexpr ((Mask & dtype_bit(DType::kFloat32)) != 0) return f(TypeTag<float>{});
  // Masks without float32 list at least one other type: run the lowest one (unreachable after the check).
  else if constexpr ((Mask & dtype_bit(DType::kFloat64)) != 0) return f(TypeTag<double>{});
  else return f(TypeTag<int64_t>{});
}

// Same-width storage for dtype-blind copies (compact, setitem, fill).
template <int Bytes> struct BitsOf;
template <> struct BitsOf<1> { using type = uint8_t; };
template <> struct BitsOf<2> { using type = uint16_t; };
template <> struct BitsOf<4> { using type = uint32_t; };
template <> struct BitsOf<8> { using type = uint64_t; };

// Calls f(TypeTag<uintN_t>{}) for the unsigned integer of dt's width.
template <typename F>
decltype(auto) dispatch_width(DType dt, F&& f) {
  switch (dtype_size(dt)) {
    case 8: return f(TypeTag<uint64_t>{});
    case 4: return f(TypeTag<uint32_t>{});
    case 2: return f(TypeTag<uint16_t>{});
    default: return f(TypeTag<uint8_t>{});
  }
}

}  // namespace needle
