// Row gather / scatter-add (embedding lookup and its adjoint). Row numbers arrive
// in any integer dtype or float-encoded (the course's labels); table.cu copies them
// to the host, checks them (integers in [0, num_rows)) and uploads them as int64,
// so these kernels need no instantiation per index dtype.
#include <type_traits>

#include "common/convert.h"
#include "cuda/functors.cuh"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

// out[r, j] = a[idx[r], j] for the k x dim elements (idx already validated); W is the
// unsigned integer of the element's width.
template <typename W>
__global__ void gather_rows_kernel(const W* a, const int64_t* idx, W* out, int64_t k, int64_t dim) {
  for (int64_t i = grid_tid(); i < k * dim; i += grid_stride()) {
    const int64_t r = i / dim;
    out[i] = a[idx[r] * dim + (i - r * dim)];
  }
}

// One thread per column j: out[idx[r], j] += a[r, j] for r in order (deterministic, no
// atomics). Tab is the table's storage (float for a float32 copy of a half table).
template <typename T, typename Tab>
__global__ void scatter_add_rows_kernel(const T* a, const int64_t* idx, Tab* out, int64_t k, int64_t dim) {
  for (int64_t j = grid_tid(); j < dim; j += grid_stride())
    for (int64_t r = 0; r < k; ++r) {
      Tab* dst = out + idx[r] * dim + j;
      *dst = convert<Tab>(AddOp{}(widen(*dst), widen(a[r * dim + j])));
    }
}

template <typename T, typename Tab>
void launch_scatter(const T* a, const int64_t* idx, Tab* out, int64_t k, int64_t dim) {
  scatter_add_rows_kernel<T, Tab><<<grid_for(dim), kThreads>>>(a, idx, out, k, dim);
  CHECK_LAUNCH("scatter_add_rows_kernel");
}

}  // namespace

// a is (num_rows, dim) compact (any dtype), rows (k,), out is (k, dim) compact.
void launch_gather_rows(const Array& a, const int64_t* rows, Array& out, int64_t k, int64_t dim) {
  if (k * dim == 0) return;
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    gather_rows_kernel<W><<<grid_for(k * dim), kThreads>>>(a.data<W>(), rows, out.data<W>(), k, dim);
    CHECK_LAUNCH("gather_rows_kernel");
  });
}

// a is (k, dim) compact, rows (k,), out is (num_rows, dim) compact (accumulated into;
// numeric dtypes; a half table accumulates in float32 and rounds once).
void launch_scatter_add_rows(const Array& a, const int64_t* rows, Array& out, int64_t num_rows, int64_t k,
                             int64_t dim) {
  if (k * dim == 0) return;
  dispatch<kNumericMask>(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<compute_t<T>, float> && !std::is_same_v<T, float>) {
      // out's first cells (launch_astype converts whole buffers) -> float32, accumulate, round back once.
      const int64_t cells = num_rows * dim;
      Array wide(cells, DType::kFloat32), narrow(cells, out.dtype);
      CUDA_CHECK(cudaMemcpyAsync(narrow.ptr, out.ptr, narrow.nbytes(), cudaMemcpyDeviceToDevice, 0));
      launch_astype(narrow, wide);
      launch_scatter<T, float>(a.data<T>(), rows, wide.data<float>(), k, dim);
      launch_astype(wide, narrow);
      CUDA_CHECK(cudaMemcpyAsync(out.ptr, narrow.ptr, narrow.nbytes(), cudaMemcpyDeviceToDevice, 0));
    } else {
      launch_scatter<T, T>(a.data<T>(), rows, out.data<T>(), k, dim);
    }
  });
}

}  // namespace cuda
}  // namespace needle
