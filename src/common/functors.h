// One functor per elementwise op, shared by the CPU and the CUDA kernels (host and
// device code). Each works on the compute type C (float for the halves, the storage
// type otherwise) with numpy's semantics: IEEE division, pow's NaN for a negative
// base with a fractional exponent, NaN-propagating maximum, integers wrapping like
// unsigned C arithmetic, bool add / mul / maximum as or / and / or.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "half.h"  // NEEDLE_HD

namespace needle {

template <typename C>
constexpr bool kWrapInt = std::is_integral_v<C> && std::is_signed_v<C>;

struct AddOp {
  template <typename C>
  NEEDLE_HD C operator()(C x, C y) const {
    if constexpr (kWrapInt<C>) return C(std::make_unsigned_t<C>(x) + std::make_unsigned_t<C>(y));
    else return static_cast<C>(x + y);
  }
};
struct MulOp {
  template <typename C>
  NEEDLE_HD C operator()(C x, C y) const {
    if constexpr (kWrapInt<C>) return C(std::make_unsigned_t<C>(x) * std::make_unsigned_t<C>(y));
    else return static_cast<C>(x * y);
  }
};
struct DivOp {  // floating types only
  template <typename C>
  NEEDLE_HD C operator()(C x, C y) const { return x / y; }
};
struct PowerOp {
  // Integer exponents must be >= 0 (there is no integer result otherwise; numpy
  // raises). A kernel that cannot check them first passes a flag, set here when one
  // is negative, and raises after the kernel.
  int* negative = nullptr;
  template <typename C>
  NEEDLE_HD C operator()(C x, C y) const {
    if constexpr (std::is_floating_point_v<C>) {
      return std::pow(x, y);
    } else {
      if constexpr (std::is_signed_v<C>) {
        if (y < 0) {
          if (negative) *negative = 1;
          return C(0);
        }
      }
      // Square-and-multiply in unsigned arithmetic wraps like repeated products.
      using U = std::make_unsigned_t<C>;
      U result = 1, base = U(x);
      for (U e = U(y); e; e >>= 1) {
        if (e & 1u) result = U(result * base);
        base = U(base * base);
      }
      return C(result);
    }
  }
};
struct MaximumOp {
  // np.maximum propagates NaN from either side (x != x only for a NaN).
  template <typename C>
  NEEDLE_HD C operator()(C x, C y) const { return (x > y || x != x) ? x : y; }
};
// ReLU's adjoint, g where x > 0 and 0 elsewhere, as one select: a zero for x <= 0 even
// when g is infinite or NaN (a product with a 0/1 mask would give NaN), and g for a NaN
// x, as PyTorch's threshold_backward. Floating types only.
struct ReluGradOp {
  template <typename C>
  NEEDLE_HD C operator()(C g, C x) const { return x <= C(0) ? C(0) : g; }
};

// Comparisons write bool (NaN compares unequal to everything, as in numpy).
struct EqOp { template <typename C> NEEDLE_HD bool operator()(C x, C y) const { return x == y; } };
struct NeOp { template <typename C> NEEDLE_HD bool operator()(C x, C y) const { return x != y; } };
struct LtOp { template <typename C> NEEDLE_HD bool operator()(C x, C y) const { return x < y; } };
struct LeOp { template <typename C> NEEDLE_HD bool operator()(C x, C y) const { return x <= y; } };
struct GtOp { template <typename C> NEEDLE_HD bool operator()(C x, C y) const { return x > y; } };
struct GeOp { template <typename C> NEEDLE_HD bool operator()(C x, C y) const { return x >= y; } };

}  // namespace needle
