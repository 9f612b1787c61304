// Row gather / scatter-add (embedding lookup and its adjoint), and the row-number
// upload the loss kernels share. Row numbers arrive in any integer dtype or
// float-encoded (the course's labels); they are copied to the host and checked
// (integer in [0, num_rows)) before any kernel reads through them, then uploaded
// as int64 so the kernels need no instantiation per index dtype.
#include <memory>
#include <type_traits>
#include <vector>

#include "common/convert.h"
#include "cuda/checks_cuda.cuh"
#include "cuda/functors.cuh"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

std::unique_ptr<Scratch<int64_t>> upload_row_indices(const char* fn, const Array& idx, int64_t num_rows) {
  std::vector<unsigned char> host(idx.nbytes());
  if (!host.empty()) CUDA_CHECK(cudaMemcpy(host.data(), idx.ptr, host.size(), cudaMemcpyDeviceToHost));
  std::vector<int64_t> rows(static_cast<size_t>(idx.size));
  dispatch(idx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* v = reinterpret_cast<const T*>(host.data());
    // double holds every integer a buffer can address exactly
    check_row_indices(fn, idx.dtype, idx.size, num_rows, [&](int64_t r) { return static_cast<double>(widen(v[r])); });
    for (size_t r = 0; r < rows.size(); ++r) rows[r] = static_cast<int64_t>(widen(v[r]));
  });
  auto dev = std::make_unique<Scratch<int64_t>>(idx.size);
  if (!rows.empty())
    CUDA_CHECK(cudaMemcpy(dev->ptr, rows.data(), rows.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
  return dev;
}

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

// a is (num_rows, dim) compact (any dtype), idx is (k,) compact, out is (k, dim) compact.
void gather_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim) {
  const char* fn = "gather_rows";
  check_same_dtype(fn, {a.dtype, out.dtype});
  checked_product(fn, {num_rows, dim});
  checked_product(fn, {idx.size, dim});
  check_rows(fn, a.size, out.size, num_rows, dim, idx.size);
  const auto rows = upload_row_indices(fn, idx, num_rows);
  if (idx.size * dim == 0) return;
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    gather_rows_kernel<W><<<grid_for(idx.size * dim), kThreads>>>(a.data<W>(), rows->get(), out.data<W>(), idx.size,
                                                                  dim);
    CHECK_LAUNCH("gather_rows_kernel");
  });
}

// a is (k, dim) compact, idx is (k,) compact, out is (num_rows, dim) compact (accumulated
// into; numeric dtypes; a half table accumulates in float32 and rounds once).
void scatter_add_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim) {
  const char* fn = "scatter_add_rows";
  const DType dt = check_same_dtype(fn, {out.dtype, a.dtype});
  checked_product(fn, {num_rows, dim});
  checked_product(fn, {idx.size, dim});
  check_rows(fn, out.size, a.size, num_rows, dim, idx.size);
  const auto rows = upload_row_indices(fn, idx, num_rows);
  check_dtype_in(fn, dt, kNumericMask, "a numeric (not bool) dtype");
  if (idx.size * dim == 0) return;
  dispatch<kNumericMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<compute_t<T>, float> && !std::is_same_v<T, float>) {
      // out's first cells (astype converts whole buffers) -> float32, accumulate, round back once.
      const int64_t cells = num_rows * dim;
      Array wide(cells, DType::kFloat32), narrow(cells, dt);
      CUDA_CHECK(cudaMemcpyAsync(narrow.ptr, out.ptr, narrow.nbytes(), cudaMemcpyDeviceToDevice, 0));
      astype(narrow, wide);
      launch_scatter<T, float>(a.data<T>(), rows->get(), wide.data<float>(), idx.size, dim);
      astype(wide, narrow);
      CUDA_CHECK(cudaMemcpyAsync(out.ptr, narrow.ptr, narrow.nbytes(), cudaMemcpyDeviceToDevice, 0));
    } else {
      launch_scatter<T, T>(a.data<T>(), rows->get(), out.data<T>(), idx.size, dim);
    }
  });
}

}  // namespace cuda
}  // namespace needle
