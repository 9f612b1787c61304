// Matmul: the numbered kernel ladder, selectable for teaching and benchmarking.
//   0 naive: one thread per output (the reference, any dtype, any strides);
//   1 shared-memory tiled 32x32 (any numeric dtype);
//   2 register-blocked 128x128 block tiles, 8x8 per thread, double-buffered (float32);
//   3 tensor cores through WMMA, 64x64 block tiles (float16 / bfloat16, matmul_tc.cu);
//   4 tensor cores through mma.sync, 128x128 block tiles fed by a 4-stage cp.async
//     pipeline (float16 / bfloat16, matmul_tc.cu).
// float32 accumulates in plain fp32 FMA (exact to fp32: no TF32, no tensor cores);
// float16/bfloat16 accumulate in float (on the tensor cores in rungs 3 and 4), float64
// in double, integers in 64 bits wrapping like C. A dtype asked for a rung that does not
// take it runs the highest rung below that does: float32 asked for 3 or 4 runs 2, the
// halves asked for 2 run 1, and so on; the halves also step down from 4 to 3 when an
// operand's layout cannot be staged by cp.async, and to 1 on devices older than sm_80.
#include <algorithm>
#include <type_traits>

#include "common/convert.h"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

const char* const kMatmulKernelNames[kNumMatmulKernels] = {
    "naive", "smem_tiled_32x32", "regblock_128x128_8x8", "tensor_core_wmma_64x64",
    "tensor_core_mma_128x128_cp_async"};

int g_matmul_kernel = kNumMatmulKernels - 1;  // bmm / matmul default: the top rung (each dtype its fastest)
int g_last_matmul_kernel = -1;

namespace {

// The type products accumulate in: float for float32 and the halves, double for
// float64, uint64 for integers (unsigned, so overflow wraps like int64 in numpy).
template <typename T>
using mm_acc_t = std::conditional_t<std::is_same_v<T, double>, double,
                                    std::conditional_t<std::is_integral_v<T>, uint64_t, float>>;

template <typename Acc, typename T>
__device__ __forceinline__ Acc mm_load(T x) {
  if constexpr (std::is_integral_v<T>) return static_cast<uint64_t>(static_cast<int64_t>(x));  // sign-extends
  else return widen(x);
}

__device__ __forceinline__ float mm_madd(float a, float b, float acc) { return fmaf(a, b, acc); }
__device__ __forceinline__ double mm_madd(double a, double b, double acc) { return fma(a, b, acc); }
__device__ __forceinline__ uint64_t mm_madd(uint64_t a, uint64_t b, uint64_t acc) { return acc + a * b; }

template <typename T, typename Acc>
__device__ __forceinline__ T mm_store(Acc acc) {
  if constexpr (std::is_integral_v<T>) return convert<T>(static_cast<int64_t>(acc));  // wraps to T's width
  else return convert<T>(acc);
}

// Kernel 0 (reference). A is (batch, m, n) strided, B is (batch, n, p) strided, out is
// (batch, m, p) compact. One thread per output; x runs along p so B loads coalesce
// when B's column stride is 1. Any strides, any sizes.
template <typename T>
__global__ void matmul_naive_kernel(MatView<T> A, MatView<T> B, T* out, int64_t batch, int64_t m, int64_t n,
                                    int64_t p) {
  using Acc = mm_acc_t<T>;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p) return;
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < m;
         row += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const T* a = A.ptr + bz * A.sb + row * A.sr;
      const T* b = B.ptr + bz * B.sb + col * B.sc;
      Acc acc = Acc(0);
      for (int64_t k = 0; k < n; ++k) acc = mm_madd(mm_load<Acc>(a[k * A.sc]), mm_load<Acc>(b[k * B.sr]), acc);
      out[(bz * m + row) * p + col] = mm_store<T>(acc);
    }
  }
}

constexpr int T1 = 32;  // kernel 1 tile edge

// Kernel 1. Same operands as kernel 0. A 32x32 block stages a 32x32 tile of A and of B
// (widened to the accumulator type) in shared memory per k-step, so each global
// element is read once per tile instead of once per output. Loads are bounds-checked
// and zero-filled, so edges need no special case. Row tiles and batches loop
// uniformly (grid y/z are capped at 65535).
template <typename T>
__global__ void __launch_bounds__(T1* T1)
    matmul_smem_kernel(MatView<T> A, MatView<T> B, T* out, int64_t batch, int64_t m, int64_t n, int64_t p) {
  using Acc = mm_acc_t<T>;
  __shared__ Acc As[T1][T1];
  __shared__ Acc Bs[T1][T1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * T1 + tx;
  const int64_t row_tiles = ceil_div(m, T1);
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const T* Ab = A.ptr + bz * A.sb;
    const T* Bb = B.ptr + bz * B.sb;
    for (int64_t by = blockIdx.y; by < row_tiles; by += gridDim.y) {
      const int64_t row = by * T1 + ty;
      Acc acc = Acc(0);
      for (int64_t k0 = 0; k0 < n; k0 += T1) {
        const int64_t ka = k0 + tx, kb = k0 + ty;
        As[ty][tx] = (row < m && ka < n) ? mm_load<Acc>(Ab[row * A.sr + ka * A.sc]) : Acc(0);
        Bs[ty][tx] = (kb < n && col < p) ? mm_load<Acc>(Bb[kb * B.sr + col * B.sc]) : Acc(0);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < T1; ++k) acc = mm_madd(As[ty][k], Bs[k][tx], acc);
        __syncthreads();
      }
      if (row < m && col < p) out[(bz * m + row) * p + col] = mm_store<T>(acc);
    }
  }
}

// Kernel 2 geometry: a 128x128 output tile per 256-thread block, k-steps of 8, each
// thread an 8x8 register tile (two 4-row by two 4-column quadrants, 64 apart, so the
// float4 reads of a warp from shared memory spread over distinct banks).
constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
constexpr int K2_THREADS = (BM / TM) * (BN / TN);  // 256
constexpr int SPAD = 4;  // keeps float4 alignment and staggers banks of the transposing stores
static_assert(K2_THREADS == 256, "kernel 2 load mappings assume 256 threads");

// Per-thread cursor over one operand's tiles. Each thread moves 4 values per k-tile:
// either 4 consecutive k of one row/column (AlongK) or one k of 4 consecutive
// rows/columns. Only the pointer and the valid count live in registers; the strides
// are read from the kernel parameters (constant bank) on use, leaving the register
// budget to the 64 accumulators. Out-of-range values read as 0, so edge tiles are exact.
template <bool AlongK>
struct TileCursor {
  const float* p;  // element 0 of this thread's 4 in the current k-tile
  int valid;       // how many of the 4 lie inside the row/column extent (0..4)

  // base: the batch's operand; outer: this thread's first row (A) or column (B);
  // extent: m (A) or p (B); s_outer / s_k: strides along that dimension and along k.
  __device__ __forceinline__ TileCursor(const float* base, int64_t outer, int64_t extent,
                                        int64_t k0, int64_t s_outer, int64_t s_k) {
    p = base + outer * s_outer + k0 * s_k;
    const int64_t left = extent - outer;
    valid = AlongK ? (left > 0 ? 4 : 0) : static_cast<int>(left < 0 ? 0 : (left > 4 ? 4 : left));
  }

  // k: the k index of element 0; inner: stride between the 4 elements.
  __device__ __forceinline__ void load(int64_t k, int64_t n, int64_t inner, bool vec,
                                       float r[4]) const {
    const bool full = valid == 4 && (AlongK ? k + 3 < n : k < n);
    if (vec && full) {
      const float4 v = *reinterpret_cast<const float4*>(p);
      r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool ok = i < valid && (AlongK ? k + i : k) < n;
        r[i] = ok ? p[i * inner] : 0.f;
      }
    }
  }
};

// Thread -> tile coordinates for 4 values along k: 128 rows/columns x 2 groups of 4 k.
__device__ __forceinline__ int along_k_outer(int tid) { return tid >> 1; }
__device__ __forceinline__ int along_k_k(int tid) { return (tid & 1) * 4; }
// Thread -> tile coordinates for 4 values along rows/columns: 8 k x 32 groups of 4.
__device__ __forceinline__ int across_outer(int tid) { return (tid & 31) * 4; }
__device__ __forceinline__ int across_k(int tid) { return tid >> 5; }

// Registers -> shared memory tile S[k][row or column]. Values along k are scattered
// (the padding keeps those stores conflict-free); values across are one float4 store.
template <bool AlongK>
__device__ __forceinline__ void store_tile(float (*S)[BM + SPAD], int tid, const float r[4]) {
  if (AlongK) {
    const int o = along_k_outer(tid), k = along_k_k(tid);
#pragma unroll
    for (int i = 0; i < 4; ++i) S[k + i][o] = r[i];
  } else {
    *reinterpret_cast<float4*>(&S[across_k(tid)][across_outer(tid)]) =
        make_float4(r[0], r[1], r[2], r[3]);
  }
}

// Kernel 2. Same operands as kernel 0. A is staged k-major (As[k][row]) and B as
// Bs[k][col], so the inner loop reads float4 fragments of both. A_ALONG_K: A's loads
// run along k (row-major A); otherwise along m (A is a transposed view, unit stride
// along m). B_ALONG_K likewise (B a transposed view, unit stride along k); otherwise
// along p. Either way the global reads of a warp stay coalesced.
// Double-buffered: while the block multiplies the k-tile in one shared buffer, the
// next k-tile is already loading from global memory into registers and lands in the
// other buffer, so one barrier per k-step suffices. Accumulation is plain fp32 FMA
// (no TF32, no tensor cores). Two resident blocks per SM (128 registers a thread) let
// one block compute while the other waits at its barrier.
template <bool A_ALONG_K, bool B_ALONG_K>
__global__ void __launch_bounds__(K2_THREADS, 2)
    matmul_regblock_kernel(MatView<float> A, MatView<float> B, float* out, int64_t batch, int64_t m, int64_t n,
                           int64_t p, bool a_vec, bool b_vec, bool out_vec) {
  static_assert(BM == BN, "store_tile shares one row type for As and Bs");
  __shared__ __align__(16) float As[2][BK][BM + SPAD];
  __shared__ __align__(16) float Bs[2][BK][BN + SPAD];
  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t row_tiles = ceil_div(m, BM);
  const int64_t k_tiles = ceil_div(n, BK);
  const int a_outer = A_ALONG_K ? along_k_outer(tid) : across_outer(tid);
  const int a_k = A_ALONG_K ? along_k_k(tid) : across_k(tid);
  const int b_outer = B_ALONG_K ? along_k_outer(tid) : across_outer(tid);
  const int b_k = B_ALONG_K ? along_k_k(tid) : across_k(tid);

  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    for (int64_t by = blockIdx.y; by < row_tiles; by += gridDim.y) {
      const int64_t row0 = by * BM;
      TileCursor<A_ALONG_K> ca(A.ptr + bz * A.sb, row0 + a_outer, m, a_k, A.sr, A.sc);
      TileCursor<B_ALONG_K> cb(B.ptr + bz * B.sb, col0 + b_outer, p, b_k, B.sc, B.sr);
      const int64_t a_inner = A_ALONG_K ? A.sc : A.sr;
      const int64_t b_inner = B_ALONG_K ? B.sr : B.sc;

      float acc[TM][TN];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

      float ra[4], rb[4];
      ca.load(a_k, n, a_inner, a_vec, ra);
      cb.load(b_k, n, b_inner, b_vec, rb);
      store_tile<A_ALONG_K>(As[0], tid, ra);
      store_tile<B_ALONG_K>(Bs[0], tid, rb);
      __syncthreads();

      int cur = 0;
      for (int64_t kt = 0; kt < k_tiles; ++kt) {
        const bool has_next = kt + 1 < k_tiles;
        if (has_next) {
          const int64_t k_next = (kt + 1) * BK;
          ca.p += BK * A.sc;
          cb.p += BK * B.sr;
          ca.load(k_next + a_k, n, a_inner, a_vec, ra);
          cb.load(k_next + b_k, n, b_inner, b_vec, rb);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
          const float4 a0 = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4]);
          const float4 a1 = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4 + BM / 2]);
          const float4 b0 = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4]);
          const float4 b1 = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4 + BN / 2]);
          const float af[TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
          const float bf[TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(af[i], bf[j], acc[i][j]);
        }
        if (has_next) {
          store_tile<A_ALONG_K>(As[cur ^ 1], tid, ra);
          store_tile<B_ALONG_K>(Bs[cur ^ 1], tid, rb);
        }
        // Orders this step's reads of `cur` before the next step's writes to it, and
        // this step's writes of `cur ^ 1` before the next step's reads.
        __syncthreads();
        cur ^= 1;
      }

      float* C = out + bz * m * p;
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int64_t row = row0 + (i < 4 ? ty * 4 + i : BM / 2 + ty * 4 + (i - 4));
        if (row >= m) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t col = col0 + half * (BN / 2) + tx * 4;
          float* dst = C + row * p + col;
          const float* v = &acc[i][half * 4];
          if (out_vec && col + 3 < p) {
            *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
          } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
              if (col + j < p) dst[j] = v[j];
          }
        }
      }
    }
  }
}

void launch_regblock(const MatView<float>& A, const MatView<float>& B, float* out, int64_t batch, int64_t m,
                     int64_t n, int64_t p) {
  // A loads run along k unless A is a transposed view (unit stride along m); B loads
  // run along p unless B is a transposed view (unit stride along k). This keeps the
  // global reads of a warp on consecutive addresses in all four layouts.
  const bool a_along_k = !(A.sr == 1 && A.sc != 1);
  const bool b_along_k = B.sr == 1 && B.sc != 1;
  // float4 global loads need the 4 values contiguous and every vector start 16-byte
  // aligned: aligned base, unit inner stride, the other strides multiples of 4.
  const bool a_vec = aligned16(A.ptr) && A.sb % 4 == 0 &&
                     (a_along_k ? (A.sc == 1 && A.sr % 4 == 0) : (A.sr == 1 && A.sc % 4 == 0));
  const bool b_vec = aligned16(B.ptr) && B.sb % 4 == 0 &&
                     (b_along_k ? (B.sr == 1 && B.sc % 4 == 0) : (B.sc == 1 && B.sr % 4 == 0));
  const bool out_vec = aligned16(out) && p % 4 == 0;
  const dim3 grid(static_cast<unsigned>(ceil_div(p, BN)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(m, BM), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
  if (a_along_k && b_along_k) {
    matmul_regblock_kernel<true, true><<<grid, K2_THREADS>>>(A, B, out, batch, m, n, p, a_vec, b_vec, out_vec);
  } else if (a_along_k) {
    matmul_regblock_kernel<true, false><<<grid, K2_THREADS>>>(A, B, out, batch, m, n, p, a_vec, b_vec, out_vec);
  } else if (b_along_k) {
    matmul_regblock_kernel<false, true><<<grid, K2_THREADS>>>(A, B, out, batch, m, n, p, a_vec, b_vec, out_vec);
  } else {
    matmul_regblock_kernel<false, false><<<grid, K2_THREADS>>>(A, B, out, batch, m, n, p, a_vec, b_vec, out_vec);
  }
  CHECK_LAUNCH("matmul_regblock_kernel");
}

// A is (batch, m, n) and B (batch, n, p) strided views (validated), out (batch, m, p)
// compact with batch * m * p > 0 elements and n > 0. Returns the rung that ran.
template <typename T>
int launch_matmul(int kernel, const MatView<T>& A, const MatView<T>& B, T* out, int64_t batch, int64_t m, int64_t n,
                  int64_t p) {
  if constexpr (std::is_same_v<T, half_t> || std::is_same_v<T, bfloat16_t>) {
    if (kernel >= 3) {
      const int rungs = tensor_core_rungs();
      if (kernel >= 4 && rungs >= 4 && launch_matmul_mma(A, B, out, batch, m, n, p)) return 4;
      if (rungs >= 3) {
        launch_matmul_wmma(A, B, out, batch, m, n, p);
        return 3;
      }
    }
  } else if constexpr (std::is_same_v<T, float>) {
    if (kernel >= 2) {
      launch_regblock(A, B, out, batch, m, n, p);
      return 2;
    }
  }
  if (kernel == 0) {
    const dim3 block(32, 8);
    const dim3 grid(static_cast<unsigned>(ceil_div(p, block.x)),
                    static_cast<unsigned>(std::min<int64_t>(ceil_div(m, block.y), 65535)),
                    static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
    matmul_naive_kernel<T><<<grid, block>>>(A, B, out, batch, m, n, p);
    CHECK_LAUNCH("matmul_naive_kernel");
    return 0;
  }
  const dim3 block(T1, T1);
  const dim3 grid(static_cast<unsigned>(ceil_div(p, T1)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(m, T1), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
  matmul_smem_kernel<T><<<grid, block>>>(A, B, out, batch, m, n, p);
  CHECK_LAUNCH("matmul_smem_kernel");
  return 1;
}

}  // namespace

// The operands (checked by table.cu) as views; a size-1 batch's stride never matters,
// and zeroing it keeps the float4 checks simple.
void launch_bmm(int kernel, const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                int64_t p, const Shape& sa, int64_t oa, const Shape& sb, int64_t ob) {
  const int64_t total = batch * m * p;
  g_last_matmul_kernel = -1;
  if (total == 0) return;
  if (n == 0) return zero_fill(out, total);  // empty inner dimension: every output is an empty sum
  dispatch<kNumericMask>(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const MatView<T> A{a.data<T>() + oa, batch == 1 ? 0 : sa[0], sa[1], sa[2]};
    const MatView<T> B{b.data<T>() + ob, batch == 1 ? 0 : sb[0], sb[1], sb[2]};
    g_last_matmul_kernel = launch_matmul<T>(kernel, A, B, out.data<T>(), batch, m, n, p);
  });
}

}  // namespace cuda
}  // namespace needle
