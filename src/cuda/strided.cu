// Copies between strided views (compact, setitem), fill, dtype conversion and the
// host transfers. A copy does not care what the bits mean: those kernels run on
// unsigned integers of the element's width, so four instantiations serve eight
// dtypes; only astype converts values (common/convert.h).
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/convert.h"
#include "cuda/checks_cuda.cuh"
#include "cuda/kernels.cuh"

namespace py = pybind11;

namespace needle {
namespace cuda {

namespace {

constexpr int MAX_DIMS = 8;

// Passed to kernels by value (kernel parameter space), never through device memory.
struct StridedLayout {
  int ndim;
  int64_t shape[MAX_DIMS];
  int64_t strides[MAX_DIMS];
  int64_t offset;
};

// (shape, strides, offset), already validated by check_view, with size-1 dims dropped
// and contiguous neighbours merged, so most views reach the kernel with one or two
// dims (fewer divisions per element). Only a view of n > 0 elements gets here.
StridedLayout make_layout(const char* fn, const Shape& shape, const Shape& strides, int64_t offset) {
  StridedLayout L{};
  L.ndim = 0;
  L.offset = offset;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    int64_t span = 0;  // strides[d] * shape[d]: the stride the outer dim needs to merge
    const bool fits = !__builtin_mul_overflow(strides[d], shape[d], &span);
    if (L.ndim > 0 && fits && L.strides[L.ndim - 1] == span) {
      L.shape[L.ndim - 1] *= shape[d];  // <= prod(shape), which check_view bounded
      L.strides[L.ndim - 1] = strides[d];
    } else {
      check_max_dims(fn, L.ndim + 1, MAX_DIMS, shape);
      L.shape[L.ndim] = shape[d];
      L.strides[L.ndim] = strides[d];
      ++L.ndim;
    }
  }
  return L;
}

// One contiguous run starting at offset: a plain memcpy serves.
bool layout_is_contiguous(const StridedLayout& L) { return L.ndim == 0 || (L.ndim == 1 && L.strides[0] == 1); }

// Element offset of the i-th element (row-major over shape). The unrolled loop keeps
// the parameter arrays on constant indices (no local-memory copy); Index is 32-bit
// whenever the element count allows, which makes the divisions much cheaper.
template <typename Index>
__device__ __forceinline__ int64_t layout_offset(const StridedLayout& L, Index i) {
  int64_t off = L.offset;
#pragma unroll
  for (int d = MAX_DIMS - 1; d >= 0; --d) {
    if (d < L.ndim) {
      const Index extent = static_cast<Index>(L.shape[d]);
      const Index q = i / extent;
      off += static_cast<int64_t>(i - q * extent) * L.strides[d];
      i = q;
    }
  }
  return off;
}

enum class StridedMode { Gather, Scatter, Fill };

// Gather: out[i] = src[view(i)]; Scatter: out[view(i)] = src[i]; Fill: out[view(i)] = val.
// src is (n,) compact for Scatter, strided for Gather; out likewise the other way round.
// W is the unsigned integer of the element's width.
template <StridedMode Mode, typename Index, typename W>
__global__ void strided_copy_kernel(const W* src, W* out, W val, int64_t n, StridedLayout L) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < static_cast<Index>(n);
       i += stride) {
    const int64_t off = layout_offset<Index>(L, i);
    if (Mode == StridedMode::Gather) {
      out[i] = src[off];
    } else if (Mode == StridedMode::Scatter) {
      out[off] = src[i];
    } else {
      out[off] = val;
    }
  }
}

template <StridedMode Mode, typename W>
void launch_strided(const char* name, const W* src, W* out, W val, int64_t n, const StridedLayout& L) {
  if (n == 0) return;
  const unsigned grid = grid_for(n);
  // 32-bit indices only while the grid-stride loop's last increment (i + grid * threads,
  // with i < n) cannot wrap around: a wrapped index would restart below n and loop on.
  const int64_t reach = n + static_cast<int64_t>(grid) * kThreads;
  if (reach <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) {
    strided_copy_kernel<Mode, uint32_t, W><<<grid, kThreads>>>(src, out, val, n, L);
  } else {
    strided_copy_kernel<Mode, uint64_t, W><<<grid, kThreads>>>(src, out, val, n, L);
  }
  CHECK_LAUNCH(name);
}

// val converted to dt (numpy's casts), as the bits of its width W.
template <typename W>
W scalar_bits(DType dt, double val) {
  return dispatch(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T x = scalar_as<T>(val);
    W bits = 0;
    std::memcpy(&bits, &x, sizeof(T) < sizeof(W) ? sizeof(T) : sizeof(W));  // equal for dt's own width
    return bits;
  });
}

// out is (n,) compact and 16-byte aligned (an Array's block); every element = val.
// The body stores 16-byte patterns of val; the last elements go one by one.
template <typename W>
__global__ void fill_kernel(W* out, int64_t n, uint4 pattern, W val) {
  const int64_t n16 = n / (16 / sizeof(W));
  for (int64_t i = grid_tid(); i < n16; i += grid_stride()) reinterpret_cast<uint4*>(out)[i] = pattern;
  for (int64_t i = n16 * (16 / sizeof(W)) + grid_tid(); i < n; i += grid_stride()) out[i] = val;
}

// a is (n,) compact of From, out (n,) compact of To: out[i] = convert<To>(a[i]).
template <typename From, typename To>
__global__ void astype_kernel(const From* a, To* out, int64_t n) {
  for (int64_t i = grid_tid(); i < n; i += grid_stride()) out[i] = convert<To>(a[i]);
}

// The numpy dtype of dt (bfloat16: ml_dtypes.bfloat16).
py::dtype numpy_dtype(DType dt) {
  if (dt == DType::kBFloat16) {
    py::module_ ml;
    try {
      ml = py::module_::import("ml_dtypes");
    } catch (py::error_already_set&) {
      throw std::runtime_error(
          "bfloat16 arrays need the ml_dtypes package to convert to numpy (pip install ml_dtypes)");
    }
    return py::dtype::from_args(ml.attr("bfloat16"));
  }
  return py::dtype(std::string(dtype_name(dt)));
}

}  // namespace

// a is strided (shape, strides, offset); out is (prod(shape),) compact, same dtype.
void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "compact";
  check_same_dtype(fn, {a.dtype, out.dtype});
  check_view(fn, shape, strides, offset, a.size);
  const int64_t n = shape_size(shape);
  check_same_size(fn, n, out.size);
  if (n == 0) return;
  const StridedLayout L = make_layout(fn, shape, strides, offset);
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpyAsync(out.ptr, a.bytes_at(offset), out.nbytes(), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    launch_strided<StridedMode::Gather, W>("compact_gather", a.data<W>(), out.data<W>(), W(0), n, L);
  });
}

// a is compact with at least prod(shape) elements; out is written through its strided view.
void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "ewise_setitem";
  check_same_dtype(fn, {a.dtype, out.dtype});
  check_view(fn, shape, strides, offset, out.size);
  const int64_t n = shape_size(shape);
  check_setitem_source(fn, shape, n, a.size);
  if (n == 0) return;
  const StridedLayout L = make_layout(fn, shape, strides, offset);
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpyAsync(out.bytes_at(offset), a.ptr, static_cast<size_t>(n) * a.itemsize(),
                               cudaMemcpyDeviceToDevice, 0));
    return;
  }
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    launch_strided<StridedMode::Scatter, W>("ewise_setitem_scatter", a.data<W>(), out.data<W>(), W(0), n, L);
  });
}

// Writes val (converted to out's dtype) into the strided view of out; size is prod(shape).
void scalar_setitem(int64_t size, double val, Array& out, const Shape& shape, const Shape& strides,
                    int64_t offset) {
  const char* fn = "scalar_setitem";
  check_view(fn, shape, strides, offset, out.size);
  const int64_t n = shape_size(shape);
  check_setitem_count(fn, shape, size, n);
  if (n == 0) return;
  const StridedLayout L = make_layout(fn, shape, strides, offset);
  dispatch_width(out.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    launch_strided<StridedMode::Fill, W>("scalar_setitem_fill", nullptr, out.data<W>(), scalar_bits<W>(out.dtype, val),
                                         n, L);
  });
}

// Every element of out = val converted to out's dtype.
void fill(Array& out, double val) {
  if (out.size == 0) return;
  dispatch_width(out.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    const W bits = scalar_bits<W>(out.dtype, val);
    unsigned char one[16];
    for (size_t i = 0; i < 16; i += sizeof(W)) std::memcpy(one + i, &bits, sizeof(W));
    uint4 pattern;
    std::memcpy(&pattern, one, sizeof(pattern));
    fill_kernel<W><<<grid_for(ceil_div(out.size, 16 / sizeof(W))), kThreads>>>(out.data<W>(), out.size, pattern,
                                                                                bits);
    CHECK_LAUNCH("fill_kernel");
  });
}

void zero_fill(Array& out, int64_t n) {
  if (n > 0) CUDA_CHECK(cudaMemsetAsync(out.ptr, 0, static_cast<size_t>(n) * out.itemsize(), 0));
}

// a and out compact, same size: out = a converted to out's dtype (numpy's casts).
void astype(const Array& a, Array& out) {
  check_same_size("astype", a.size, out.size);
  if (a.size == 0) return;
  if (a.dtype == out.dtype) {
    CUDA_CHECK(cudaMemcpyAsync(out.ptr, a.ptr, a.nbytes(), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  dispatch(a.dtype, [&](auto from_tag) {
    using From = typename decltype(from_tag)::type;
    dispatch(out.dtype, [&](auto to_tag) {
      using To = typename decltype(to_tag)::type;
      if constexpr (!std::is_same_v<From, To>) {  // same dtype: the memcpy above
        astype_kernel<From, To><<<grid_for(a.size), kThreads>>>(a.data<From>(), out.data<To>(), a.size);
        CHECK_LAUNCH("astype_kernel");
      }
    });
  });
}

// a's strided view -> a new numpy array of that shape and a's dtype (compacted on the
// device first when it is not one contiguous run).
py::array to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "to_numpy";
  check_view(fn, shape, strides, offset, a.size);
  const int64_t n = shape_size(shape);
  py::array result(numpy_dtype(a.dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
  if (n == 0) return result;
  const size_t bytes = static_cast<size_t>(n) * a.itemsize();
  const StridedLayout L = make_layout(fn, shape, strides, offset);
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpy(result.mutable_data(), a.bytes_at(offset), bytes, cudaMemcpyDeviceToHost));
    return result;
  }
  Array tmp(n, a.dtype);
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    launch_strided<StridedMode::Gather, W>("to_numpy_gather", a.data<W>(), tmp.data<W>(), W(0), n, L);
  });
  CUDA_CHECK(cudaMemcpy(result.mutable_data(), tmp.ptr, bytes, cudaMemcpyDeviceToHost));
  return result;
}

// a is a numpy array of out's dtype with out.size elements (any layout).
void from_numpy(const py::array& a, Array& out) {
  const py::dtype want = numpy_dtype(out.dtype);
  check_from_numpy(a.dtype().equal(want), py::str(a.dtype()).cast<std::string>(), out.dtype,
                   static_cast<int64_t>(a.size()), out.size);
  if (out.size == 0) return;
  const py::array c = py::array::ensure(a, py::array::c_style);
  if (!c) throw std::runtime_error("from_numpy: could not make a C-contiguous copy of the source");
  CUDA_CHECK(cudaMemcpy(out.ptr, c.data(), out.nbytes(), cudaMemcpyHostToDevice));
}

}  // namespace cuda
}  // namespace needle
