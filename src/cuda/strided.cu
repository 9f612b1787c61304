// Copies between strided views (compact, setitem), fill and dtype conversion. A
// copy does not care what the bits mean: those kernels run on unsigned integers of
// the element's width, so four instantiations serve eight dtypes; only astype
// converts values (common/convert.h).
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/convert.h"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

constexpr int MAX_DIMS = kMaxDims;

// Passed to kernels by value (kernel parameter space), never through device memory.
struct StridedLayout {
  int ndim;
  int64_t shape[MAX_DIMS];
  int64_t strides[MAX_DIMS];
  int64_t offset;
};

// Calls add(extent, stride) for each dim of (shape, strides) with size-1 dims dropped
// and contiguous neighbours merged (merge(extent, stride) widens the last one), so
// most views reach the kernel with one or two dims (fewer divisions per element).
// The view was validated by check_view and is not empty.
template <typename Add, typename Merge>
void simplify(const Shape& shape, const Shape& strides, Add add, Merge merge) {
  int64_t last_stride = 0;
  bool any = false;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    int64_t span = 0;  // strides[d] * shape[d]: the stride the outer dim needs to merge
    const bool fits = !__builtin_mul_overflow(strides[d], shape[d], &span);
    if (any && fits && last_stride == span) {
      merge(shape[d], strides[d]);  // the merged extent is <= prod(shape), which check_view bounded
    } else {
      add(shape[d], strides[d]);
    }
    last_stride = strides[d];
    any = true;
  }
}

StridedLayout make_layout(const Shape& shape, const Shape& strides, int64_t offset) {
  StridedLayout L{};
  L.ndim = 0;
  L.offset = offset;
  simplify(
      shape, strides,
      [&](int64_t n, int64_t s) {  // the caller checked merged_ndim <= MAX_DIMS
        L.shape[L.ndim] = n;
        L.strides[L.ndim] = s;
        ++L.ndim;
      },
      [&](int64_t n, int64_t s) {
        L.shape[L.ndim - 1] *= n;
        L.strides[L.ndim - 1] = s;
      });
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

}  // namespace

int merged_ndim(const Shape& shape, const Shape& strides) {
  int ndim = 0;
  simplify(shape, strides, [&](int64_t, int64_t) { ++ndim; }, [](int64_t, int64_t) {});
  return ndim;
}

bool contiguous_run(const Shape& shape, const Shape& strides) {
  return layout_is_contiguous(make_layout(shape, strides, 0));
}

void launch_compact(const Array& a, void* out, const Shape& shape, const Shape& strides, int64_t offset,
                    int64_t n) {
  const StridedLayout L = make_layout(shape, strides, offset);
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpyAsync(out, a.bytes_at(offset), static_cast<size_t>(n) * a.itemsize(),
                               cudaMemcpyDeviceToDevice, 0));
    return;
  }
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    launch_strided<StridedMode::Gather, W>("compact_gather", a.data<W>(), static_cast<W*>(out), W(0), n, L);
  });
}

void launch_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset,
                    int64_t n) {
  const StridedLayout L = make_layout(shape, strides, offset);
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

void launch_fill_view(Array& out, Scalar val, const Shape& shape, const Shape& strides, int64_t offset, int64_t n) {
  const StridedLayout L = make_layout(shape, strides, offset);
  dispatch_width(out.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    launch_strided<StridedMode::Fill, W>("scalar_setitem_fill", nullptr, out.data<W>(), scalar_bits<W>(out.dtype, val),
                                         n, L);
  });
}

void launch_fill(Array& out, Scalar val) {
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

void launch_astype(const Array& a, Array& out) {
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

}  // namespace cuda
}  // namespace needle
