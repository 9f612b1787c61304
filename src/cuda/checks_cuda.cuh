// The one host-side check only the CUDA module needs (its kernels take views of at
// most a fixed number of dims); every other check is in src/common/checks.h.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "common/checks.h"

namespace needle {
namespace cuda {

// The kernels take strided views by value with at most `limit` dims (after size-1
// dims are dropped and contiguous neighbours merged).
inline void check_max_dims(const char* fn, int ndim, int limit, const Shape& shape) {
  if (ndim > limit)
    throw std::invalid_argument(cat({fn, ": view of shape ", shape_str(shape), " needs ", num(ndim),
                                     " dims, more than the CUDA backend's ", num(limit)}));
}

}  // namespace cuda
}  // namespace needle
