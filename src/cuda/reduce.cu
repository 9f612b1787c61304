// Reductions of contiguous runs (sum, max) and sums over the middle axis of an
// (outer, reduce, inner) layout. Each kernel reads In, accumulates in Acc and
// writes Out: sums keep floating dtypes (halves accumulate in float32; float64
// in double) and take integers and bools to int64; maxima keep the dtype (bool
// is any, NaN propagates).
#include <algorithm>
#include <type_traits>

#include "common/convert.h"
#include "cuda/functors.cuh"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

// The accumulator of a sum of T: float for the halves, int64 for integers and bool.
template <typename T>
using sum_acc_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, compute_t<T>, int64_t>;
// The storage type of a sum of T: T for floating types, int64 otherwise.
template <typename T>
using sum_out_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, T, int64_t>;

// a is (rows, r) compact, out is (rows,). Short rows: one thread per row (the rows a
// warp touches share cache lines, so the strided reads still hit L1).
template <class R, typename In, typename Acc, typename Out>
__global__ void reduce_thread_kernel(const In* a, Out* out, int64_t rows, int64_t r) {
  for (int64_t row = grid_tid(); row < rows; row += grid_stride()) {
    const In* x = a + row * r;
    Acc acc = R::template identity<Acc>();
    for (int64_t k = 0; k < r; ++k) acc = R::combine(acc, convert<Acc>(x[k]));
    out[row] = convert<Out>(acc);
  }
}

// a is (rows, r) compact, out is (rows,). Medium rows: one warp per row, coalesced
// lane-strided reads, then a shuffle tree. The row loop is warp-uniform, so the
// full-mask shuffles always see all 32 lanes.
template <class R, typename In, typename Acc, typename Out>
__global__ void reduce_warp_kernel(const In* a, Out* out, int64_t rows, int64_t r) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = grid_tid() >> 5;
  const int64_t nwarps = grid_stride() >> 5;
  for (int64_t row = warp; row < rows; row += nwarps) {
    const In* x = a + row * r;
    Acc acc = R::template identity<Acc>();
    for (int64_t k = lane; k < r; k += 32) acc = R::combine(acc, convert<Acc>(x[k]));
    acc = warp_reduce<R>(acc);
    if (lane == 0) out[row] = convert<Out>(acc);
  }
}

// a is (rows, r) compact; each row is split into chunks_per_row chunks of `chunk`
// elements and a block reduces one chunk, writing out[row * chunks_per_row + chunk_id].
// With one chunk per row out is the final (rows,) result; otherwise it holds partials
// (Out = Acc) that a second pass reduces. Aligned float32 chunks are read as float4.
template <class R, typename In, typename Acc, typename Out>
__global__ void reduce_block_kernel(const In* a, Out* out, int64_t rows, int64_t r, int64_t chunk,
                                    int64_t chunks_per_row) {
  __shared__ Acc partial[32];
  const int64_t work = rows * chunks_per_row;
  for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
    const int64_t row = w / chunks_per_row;
    const int64_t begin = (w - row * chunks_per_row) * chunk;
    const int64_t len = chunk < r - begin ? chunk : r - begin;
    const In* x = a + row * r + begin;
    Acc acc = R::template identity<Acc>();
    int64_t start = 0;
    if constexpr (std::is_same_v<In, float>) {
      if (aligned16(x)) {
        const int64_t n4 = len / 4;
        for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
          const float4 v = reinterpret_cast<const float4*>(x)[i];
          acc = R::combine(acc, R::combine(R::combine(v.x, v.y), R::combine(v.z, v.w)));
        }
        start = n4 * 4;
      }
    }
    for (int64_t i = start + threadIdx.x; i < len; i += blockDim.x) acc = R::combine(acc, convert<Acc>(x[i]));
    acc = block_reduce<R>(acc, partial);  // returns after a barrier: partial is free again
    if (threadIdx.x == 0) out[w] = convert<Out>(acc);
  }
}

// Short or medium rows (the second pass over partials, whose rows are at most a few
// thousand chunks long): a thread or a warp per row.
template <class R, typename In, typename Acc, typename Out>
void reduce_short_rows(const char* name, const In* a, Out* out, int64_t rows, int64_t r) {
  if (r <= 16) {
    reduce_thread_kernel<R, In, Acc, Out><<<grid_for(rows), kThreads>>>(a, out, rows, r);
  } else {
    reduce_warp_kernel<R, In, Acc, Out><<<grid_for(rows * 32), kThreads>>>(a, out, rows, r);
  }
  CHECK_LAUNCH(name);
}

// a is (rows, r) compact, out is (rows,) compact. Picks a kernel by run length; long
// runs over few rows are split across blocks and finished by a second pass, so a
// single 16M-element row still uses the whole GPU.
template <class R, typename In, typename Acc, typename Out>
void reduce_rows(const char* name, const In* a, Out* out, int64_t rows, int64_t r) {
  if (rows == 0) return;
  if constexpr (std::is_same_v<In, Out>) {
    if (r == 1) {
      CUDA_CHECK(cudaMemcpyAsync(out, a, rows * sizeof(In), cudaMemcpyDeviceToDevice, 0));
      return;
    }
  }
  if (r <= 2048) return reduce_short_rows<R, In, Acc, Out>(name, a, out, rows, r);
  constexpr int64_t kMinChunk = 8192;  // enough elements per block to hide its reduction tree
  const int64_t target_blocks = 4 * static_cast<int64_t>(sm_count());
  int64_t chunks = std::max<int64_t>(1, std::min(ceil_div(target_blocks, rows), ceil_div(r, kMinChunk)));
  // Chunks are multiples of 4 so that aligned rows keep aligned chunk starts.
  const int64_t chunk = static_cast<int64_t>(round_up(static_cast<size_t>(ceil_div(r, chunks)), 4));
  chunks = ceil_div(r, chunk);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(rows * chunks, 8 * target_blocks));
  if (chunks == 1) {
    reduce_block_kernel<R, In, Acc, Out><<<grid, kThreads>>>(a, out, rows, r, chunk, 1);
    CHECK_LAUNCH(name);
    return;
  }
  Scratch<Acc> partials(rows * chunks);
  reduce_block_kernel<R, In, Acc, Acc><<<grid, kThreads>>>(a, partials.get(), rows, r, chunk, chunks);
  CHECK_LAUNCH(name);
  reduce_short_rows<R, Acc, Acc, Out>(name, partials.get(), out, rows, chunks);
}

// a is (outer, reduce, inner) compact; out[(o * chunks + c) * inner + j] is the sum of
// rows [c * chunk, (c + 1) * chunk) of a[o, :, j], added in order in blocks of 64 rows
// (as the CPU kernel adds them). Adjacent threads take adjacent j, so reads coalesce.
template <typename In, typename Acc, typename Out>
__global__ void sum_middle_kernel(const In* a, Out* out, int64_t outer, int64_t reduce, int64_t inner, int64_t chunk,
                                  int64_t chunks) {
  const int64_t work = outer * chunks * inner;
  for (int64_t w = grid_tid(); w < work; w += grid_stride()) {
    const int64_t j = w % inner;
    const int64_t t = w / inner;
    const int64_t c = t % chunks, o = t / chunks;
    const int64_t r0 = c * chunk;
    const int64_t r1 = r0 + chunk < reduce ? r0 + chunk : reduce;
    const In* x = a + o * reduce * inner + j;
    Acc total = Acc(0);
    for (int64_t b0 = r0; b0 < r1; b0 += 64) {
      const int64_t b1 = b0 + 64 < r1 ? b0 + 64 : r1;
      Acc block = Acc(0);
      for (int64_t r = b0; r < b1; ++r) block = AddOp{}(block, convert<Acc>(x[r * inner]));
      total = AddOp{}(total, block);
    }
    out[w] = convert<Out>(total);
  }
}

// a is (outer, reduce, inner) compact; out (outer, inner) compact gets the sum over the
// middle axis. When outer * inner is too few threads to fill the GPU the middle axis is
// cut into chunks (multiples of 64 rows) whose partial sums a second pass adds.
template <typename In, typename Acc, typename Out>
void sum_middle(const In* a, Out* out, int64_t outer, int64_t reduce, int64_t inner) {
  if (outer * inner == 0) return;
  const int64_t target = 4 * static_cast<int64_t>(sm_count()) * kThreads;
  int64_t chunks = 1;
  if (reduce > 256 && outer * inner < target)
    chunks = std::min(ceil_div(target, outer * inner), ceil_div(reduce, 256));
  const int64_t chunk = static_cast<int64_t>(round_up(static_cast<size_t>(ceil_div(reduce, chunks)), 64));
  chunks = ceil_div(reduce, chunk);
  if (chunks == 1) {
    sum_middle_kernel<In, Acc, Out><<<grid_for(outer * inner), kThreads>>>(a, out, outer, reduce, inner, reduce, 1);
    CHECK_LAUNCH("sum_middle_kernel");
    return;
  }
  Scratch<Acc> partials(outer * chunks * inner);
  sum_middle_kernel<In, Acc, Acc><<<grid_for(outer * chunks * inner), kThreads>>>(a, partials.get(), outer, reduce,
                                                                                 inner, chunk, chunks);
  CHECK_LAUNCH("sum_middle_kernel");
  sum_middle<Acc, Acc, Out>(partials.get(), out, outer, chunks, inner);
}

}  // namespace

// out[i] sums the contiguous run a[i * reduce_size : (i + 1) * reduce_size].
void launch_reduce_sum(const Array& a, Array& out, int64_t reduce_size) {
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Out = sum_out_t<T>;
    reduce_rows<SumReduce, T, sum_acc_t<T>, Out>("reduce_sum", a.data<T>(), out.data<Out>(), out.size, reduce_size);
  });
}

// As launch_reduce_sum, the maximum of each run, in a's dtype.
void launch_reduce_max(const Array& a, Array& out, int64_t reduce_size) {
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    reduce_rows<MaxReduce, T, compute_t<T>, T>("reduce_max", a.data<T>(), out.data<T>(), out.size, reduce_size);
  });
}

void launch_sum_middle(const Array& a, Array& out, int64_t outer, int64_t reduce, int64_t inner) {
  dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Out = sum_out_t<T>;
    sum_middle<T, sum_acc_t<T>, Out>(a.data<T>(), out.data<Out>(), outer, reduce, inner);
  });
}

}  // namespace cuda
}  // namespace needle
