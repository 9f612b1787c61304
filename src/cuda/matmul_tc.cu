// Matmul rungs 3 and 4: float16 / bfloat16 products on the tensor cores, accumulated
// in float32 and rounded once to the input dtype on the way out (as PyTorch and
// cuBLAS do). Both need compute capability 8.0 (bfloat16 mma, cp.async, ldmatrix);
// on older devices, and for other dtypes, matmul.cu runs a lower rung instead.
//   3 WMMA: 64x64 block tiles of 16x16x16 fragments, operands staged through shared
//     memory by plain bounds-checked loads, so any strides and sizes work;
//   4 mma.sync m16n8k16: 128x128 block tiles (64x64 per warp), fragments read with
//     ldmatrix, operands copied by 16-byte cp.async into a 4-stage ring so the copies
//     of later k-steps overlap the products of this one; k split over several blocks
//     when there are too few tiles to fill the chip. It needs each operand's unit
//     stride along k or along its other dimension and 16-byte aligned rows; other
//     operands run rung 3 (launch_matmul_mma returns false).
// The index math (tiles, chunks, fragment coordinates) lives in matmul_tc_layout.cuh,
// where tests/matmul_tc_emulation.cc checks it without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "common/convert.h"
#include "cuda/kernels.cuh"
#include "cuda/matmul_tc_layout.cuh"

namespace needle {
namespace cuda {

namespace {

using namespace tc;

// The device's compute capability and opt-in shared memory per block, queried once
// per device.
struct DeviceCaps {
  int capability;  // major * 10 + minor
  int smem_optin;  // bytes
};

DeviceCaps current_caps() {
  static std::mutex mu;
  static std::unordered_map<int, DeviceCaps> cache;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  int major = 0, minor = 0, smem = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  const DeviceCaps caps{major * 10 + minor, smem};
  cache.emplace(dev, caps);
  return caps;
}

// The storage types' CUDA twins (same 16-bit layouts) for WMMA fragments.
template <typename T> struct WmmaType;
template <> struct WmmaType<half_t> { using type = __half; };
template <> struct WmmaType<bfloat16_t> { using type = __nv_bfloat16; };

// Stores a float accumulator as T, rounded to nearest even (common/half.h).
template <typename T>
__device__ __forceinline__ uint16_t round_bits(float v) { return convert<T>(v).bits; }

// ---- PTX wrappers (sm_80+) ----------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// 16 bytes global -> shared, of which the first src_bytes are read and the rest zeroed.
// .cg: cached in L2 only (each element is read once per block).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Four 8x8 b16 matrices; lanes 8j..8j+7 give the row addresses of matrix j, and each
// lane receives register j = its two elements of matrix j (transposed with Trans).
template <bool Trans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  if (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}

// d (16x8 f32) += a (16x16, row) * b (16x8, col).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, bfloat16_t>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// ---- rung 3: WMMA ------------------------------------------------------------------------
// A is (batch, m, n) strided, B is (batch, n, p) strided, out is (batch, m, p) compact.
// a_along_k / b_along_n: which way consecutive threads walk their operand (its unit
// stride, when it has one), so that global loads coalesce.
template <typename T>
__global__ void __launch_bounds__(kWThreads, 4)  // 4 resident blocks: 108 KB of shared memory
    matmul_wmma_kernel(MatView<T> A, MatView<T> B, T* out, int64_t batch, int64_t m, int64_t n, int64_t p,
                       bool a_along_k, bool b_along_n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using W = typename WmmaType<T>::type;
  __shared__ __align__(128) uint16_t As[kWBM * kWAStride];  // [m][k]
  __shared__ __align__(128) uint16_t Bs[kWBK * kWBStride];  // [k][n]
  __shared__ __align__(128) float Cs[kWBM * kWCStride];     // [m][n]
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wm = wmma_warp_m(warp), wn = wmma_warp_n(warp);
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kWBN;
  const int64_t row_tiles = cdiv(m, kWBM);
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const T* Ab = A.ptr + bz * A.sb;
    const T* Bb = B.ptr + bz * B.sb;
    for (int64_t by = blockIdx.y; by < row_tiles; by += gridDim.y) {
      const int64_t row0 = by * kWBM;
      wmma::fragment<wmma::accumulator, kWFrag, kWFrag, kWFrag, float> acc[2][2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
      for (int64_t k0 = 0; k0 < n; k0 += kWBK) {
#pragma unroll 4
        for (int i = 0; i < kWLoads; ++i) {
          int r, c;
          wmma_a_coords(tid + i * kWThreads, a_along_k, &r, &c);
          const int64_t gm = row0 + r, gk = k0 + c;
          As[r * kWAStride + c] = (gm < m && gk < n) ? Ab[gm * A.sr + gk * A.sc].bits : uint16_t(0);
        }
#pragma unroll 4
        for (int i = 0; i < kWLoads; ++i) {
          int r, c;
          wmma_b_coords(tid + i * kWThreads, b_along_n, &r, &c);
          const int64_t gk = k0 + r, gn = col0 + c;
          Bs[r * kWBStride + c] = (gk < n && gn < p) ? Bb[gk * B.sr + gn * B.sc].bits : uint16_t(0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kWBK; kk += kWFrag) {
          wmma::fragment<wmma::matrix_a, kWFrag, kWFrag, kWFrag, W, wmma::row_major> fa[2];
          wmma::fragment<wmma::matrix_b, kWFrag, kWFrag, kWFrag, W, wmma::row_major> fb[2];
#pragma unroll
          for (int i = 0; i < 2; ++i)
            wmma::load_matrix_sync(fa[i], reinterpret_cast<const W*>(As) + wmma_a_offset(wm, i, kk), kWAStride);
#pragma unroll
          for (int j = 0; j < 2; ++j)
            wmma::load_matrix_sync(fb[j], reinterpret_cast<const W*>(Bs) + wmma_b_offset(wn, j, kk), kWBStride);
#pragma unroll
          for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();  // the tile is consumed before the next k-step overwrites it
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          wmma::store_matrix_sync(Cs + wmma_c_offset(wm, wn, i, j), acc[i][j], kWCStride, wmma::mem_row_major);
      __syncthreads();
      T* C = out + bz * m * p;
      for (int e = tid; e < kWBM * kWBN; e += kWThreads) {
        const int r = e / kWBN, c = e % kWBN;
        const int64_t gm = row0 + r, gn = col0 + c;
        if (gm < m && gn < p) C[gm * p + gn].bits = round_bits<T>(Cs[r * kWCStride + c]);
      }
      __syncthreads();  // Cs is read out before the next row tile stores into it
    }
  }
#endif
}

// ---- rung 4: mma.sync with a cp.async pipeline ------------------------------------------
// Same operands as rung 3, each stageable (operand_staging): A_K / B_K say whether
// A / B is staged [outer][k] (unit stride along k) or [k][outer]. out_pairs: two
// neighbouring outputs may be written as one 32-bit store (p even, out 4-byte aligned).
// Split-k: block row blockIdx.y takes k-tiles [y * kt_per_split, (y + 1) * kt_per_split)
// and, when `partial` is set, writes its float32 sums to partial[y] (batch, m, p) for
// sum_partials to add; with one range (gridDim.y == 1) partial is null and out is written.
template <typename T, bool A_K, bool B_K>
__global__ void __launch_bounds__(kMmaThreads, 2)
    matmul_mma_kernel(MatView<T> A, MatView<T> B, T* out, int64_t batch, int64_t m, int64_t n, int64_t p,
                      bool out_pairs, int64_t kt_per_split, float* partial) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using ATile = OperandTile<A_K, kBM>;
  using BTile = OperandTile<B_K, kBN>;
  extern __shared__ __align__(128) uint16_t smem[];
  uint16_t* As = smem;                             // kStages tiles of A
  uint16_t* Bs = smem + kStages * ATile::kElems;  // then kStages tiles of B
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp_m(warp), wn = warp_n(warp);
  const int64_t row_tiles = cdiv(m, kBM), col_tiles = cdiv(p, kBN);
  const int64_t tiles = row_tiles * col_tiles;
  const int64_t kt_begin = static_cast<int64_t>(blockIdx.y) * kt_per_split;
  const int64_t kt_end = kt_begin + kt_per_split < cdiv(n, kBK) ? kt_begin + kt_per_split : cdiv(n, kBK);
  const int64_t k_tiles = kt_end - kt_begin;  // this block's k-tiles, >= 1

  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const T* Ab = A.ptr + bz * A.sb;
    const T* Bb = B.ptr + bz * B.sb;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
      int64_t tm, tn;
      tile_coords(t, row_tiles, col_tiles, &tm, &tn);
      const int64_t m0 = tm * kBM, n0 = tn * kBN;

      // Queues the copies of this block's k-tile kt into ring stage s (this thread's chunks).
      auto load_stage = [&](int64_t kt, int s) {
        const int64_t k0 = (kt_begin + kt) * kBK;
        uint16_t* as = As + s * ATile::kElems;
        uint16_t* bs = Bs + s * BTile::kElems;
#pragma unroll
        for (int i = 0; i < ATile::kChunks / kMmaThreads; ++i) {
          int r, c;
          ATile::chunk(tid + i * kMmaThreads, &r, &c);
          const ChunkSrc src = chunk_source<A_K>(r, c, m0, k0, m, n, A.sr, A.sc);
          cp_async16(smem_addr(as + ATile::offset(r, c)), Ab + src.offset, src.valid * 2);
        }
#pragma unroll
        for (int i = 0; i < BTile::kChunks / kMmaThreads; ++i) {
          int r, c;
          BTile::chunk(tid + i * kMmaThreads, &r, &c);
          const ChunkSrc src = chunk_source<B_K>(r, c, n0, k0, p, n, B.sc, B.sr);
          cp_async16(smem_addr(bs + BTile::offset(r, c)), Bb + src.offset, src.valid * 2);
        }
      };

      float acc[kFragsM][kFragsN][4];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

      // Prologue: k-tiles 0 .. kStages-2 in flight, one commit group each (empty
      // groups past the last k-tile keep the count uniform).
#pragma unroll
      for (int s = 0; s < kStages - 1; ++s) {
        if (s < k_tiles) load_stage(s, s);
        cp_async_commit();
      }
      int read_stage = 0, write_stage = kStages - 1;
      for (int64_t kt = 0; kt < k_tiles; ++kt) {
        // Group kt (k-tile kt) is complete once at most kStages-2 newer ones are pending;
        // the barrier then publishes every thread's copies, and also marks that all
        // warps finished reading the stage consumed in the previous step, which the
        // copies queued next overwrite.
        cp_async_wait<kStages - 2>();
        __syncthreads();
        if (kt + kStages - 1 < k_tiles) load_stage(kt + kStages - 1, write_stage);
        cp_async_commit();

        const uint16_t* as = As + read_stage * ATile::kElems;
        const uint16_t* bs = Bs + read_stage * BTile::kElems;
#pragma unroll
        for (int kk = 0; kk < kBK; kk += kMmaK) {
          uint32_t fa[kFragsM][4], fb[kFragsN][2];
#pragma unroll
          for (int mi = 0; mi < kFragsM; ++mi) {
            int r, c;
            a_lane_coords<A_K>(lane, wm, mi, kk, &r, &c);
            ldmatrix_x4<!A_K>(fa[mi], smem_addr(as + ATile::offset(r, c)));
          }
#pragma unroll
          for (int j = 0; j < kFragsN / 2; ++j) {
            int r, c;
            b_lane_coords<B_K>(lane, wn, j, kk, &r, &c);
            uint32_t q[4];
            ldmatrix_x4<!B_K>(q, smem_addr(bs + BTile::offset(r, c)));
            fb[2 * j][0] = q[0];
            fb[2 * j][1] = q[1];
            fb[2 * j + 1][0] = q[2];
            fb[2 * j + 1][1] = q[3];
          }
#pragma unroll
          for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
            for (int ni = 0; ni < kFragsN; ++ni) mma_16816<T>(acc[mi][ni], fa[mi], fb[ni][0], fb[ni][1]);
        }
        read_stage = read_stage + 1 == kStages ? 0 : read_stage + 1;
        write_stage = write_stage + 1 == kStages ? 0 : write_stage + 1;
      }

      // Epilogue: registers 2h, 2h+1 of each mma tile are two neighbouring outputs.
      if (partial != nullptr) {
        float* P = partial + (static_cast<int64_t>(blockIdx.y) * batch + bz) * m * p;
#pragma unroll
        for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
          for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int64_t row = m0 + acc_row(lane, wm, mi, 2 * h);
              const int64_t col = n0 + acc_col(lane, wn, ni, 2 * h);
              if (row >= m || col >= p) continue;
              P[row * p + col] = acc[mi][ni][2 * h];
              if (col + 1 < p) P[row * p + col + 1] = acc[mi][ni][2 * h + 1];
            }
        __syncthreads();  // as below: the ring is refilled only after every warp is done
        continue;
      }
      T* C = out + bz * m * p;
#pragma unroll
      for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
        for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t row = m0 + acc_row(lane, wm, mi, 2 * h);
            const int64_t col = n0 + acc_col(lane, wn, ni, 2 * h);
            if (row >= m || col >= p) continue;
            const uint16_t lo = round_bits<T>(acc[mi][ni][2 * h]);
            T* dst = C + row * p + col;
            if (col + 1 < p) {
              const uint16_t hi = round_bits<T>(acc[mi][ni][2 * h + 1]);
              if (out_pairs) {
                *reinterpret_cast<uint32_t*>(dst) = uint32_t(lo) | (uint32_t(hi) << 16);
              } else {
                dst[0].bits = lo;
                dst[1].bits = hi;
              }
            } else {
              dst[0].bits = lo;
            }
          }
      // Every warp is past its last read of the ring before the next tile's prologue
      // refills it.
      __syncthreads();
    }
  }
#endif
}

// out[i] = the float32 partial sums of split-k's `splits` ranges, added in range order
// and rounded once: partial is (splits, total) compact, out (total,) compact.
template <typename T>
__global__ void sum_partials_kernel(const float* partial, T* out, int64_t total, int64_t splits) {
  for (int64_t i = grid_tid(); i < total; i += grid_stride()) {
    float s = 0.f;
    for (int64_t r = 0; r < splits; ++r) s += partial[r * total + i];
    out[i].bits = round_bits<T>(s);
  }
}

constexpr int kMaxTrackedDevices = 64;

// Rung 4's dynamic shared memory (over the default 48 KB) is granted per kernel and
// device; done once for each.
template <typename Kernel>
void allow_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev < kMaxTrackedDevices ? uint64_t(1) << dev : 0;
  if (bit && (done.load() & bit)) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit);
}

template <bool A_K, bool B_K>
constexpr int mma_smem_bytes() {
  return kStages * (OperandTile<A_K, kBM>::kElems + OperandTile<B_K, kBN>::kElems) * 2;
}
constexpr int kMaxMmaSmem = std::max(std::max(mma_smem_bytes<true, true>(), mma_smem_bytes<true, false>()),
                                     std::max(mma_smem_bytes<false, true>(), mma_smem_bytes<false, false>()));

template <typename T, bool A_K, bool B_K>
void launch_mma(const MatView<T>& A, const MatView<T>& B, T* out, int64_t batch, int64_t m, int64_t n, int64_t p) {
  static std::atomic<uint64_t> smem_granted{0};
  constexpr int smem = mma_smem_bytes<A_K, B_K>();
  auto kernel = matmul_mma_kernel<T, A_K, B_K>;
  allow_smem(kernel, smem, smem_granted);
  const int64_t tiles = cdiv(m, kBM) * cdiv(p, kBN);
  const int64_t grid_z = std::min<int64_t>(batch, 65535);
  const int64_t k_tiles = cdiv(n, kBK);
  const int64_t per_split = k_tiles_per_split(std::min<int64_t>(tiles, INT_MAX) * grid_z, k_tiles, sm_count());
  const int64_t splits = cdiv(k_tiles, per_split);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(tiles, INT_MAX)), static_cast<unsigned>(splits),
                  static_cast<unsigned>(grid_z));
  const bool out_pairs = p % 2 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0;
  if (splits == 1) {
    kernel<<<grid, kMmaThreads, smem>>>(A, B, out, batch, m, n, p, out_pairs, per_split, nullptr);
    CHECK_LAUNCH("matmul_mma_kernel");
    return;
  }
  const int64_t total = batch * m * p;
  Scratch<float> partial(splits * total);
  kernel<<<grid, kMmaThreads, smem>>>(A, B, out, batch, m, n, p, out_pairs, per_split, partial.get());
  CHECK_LAUNCH("matmul_mma_kernel");
  sum_partials_kernel<T><<<grid_for(total), kThreads>>>(partial.get(), out, total, splits);
  CHECK_LAUNCH("sum_partials_kernel");
}

}  // namespace

int device_capability() { return current_caps().capability; }

int tensor_core_rungs() {
  const DeviceCaps caps = current_caps();
  if (caps.capability < 80) return 0;
  return caps.smem_optin >= kMaxMmaSmem ? 4 : 3;
}

template <typename T>
void launch_matmul_wmma(const MatView<T>& A, const MatView<T>& B, T* out, int64_t batch, int64_t m, int64_t n,
                        int64_t p) {
  // Walk each operand along its unit stride when it has one (else either way is as good).
  const bool a_along_k = !(A.sr == 1 && A.sc != 1);
  const bool b_along_n = !(B.sr == 1 && B.sc != 1);
  const dim3 grid(static_cast<unsigned>(cdiv(p, kWBN)), static_cast<unsigned>(std::min<int64_t>(cdiv(m, kWBM), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
  matmul_wmma_kernel<T><<<grid, kWThreads>>>(A, B, out, batch, m, n, p, a_along_k, b_along_n);
  CHECK_LAUNCH("matmul_wmma_kernel");
}

template <typename T>
bool launch_matmul_mma(const MatView<T>& A, const MatView<T>& B, T* out, int64_t batch, int64_t m, int64_t n,
                       int64_t p) {
  // A's outer dimension is m (rows, stride sr); B's is p (columns, stride sc).
  const Staging a = operand_staging(reinterpret_cast<uintptr_t>(A.ptr), A.sb, A.sr, A.sc, batch, m, n);
  const Staging b = operand_staging(reinterpret_cast<uintptr_t>(B.ptr), B.sb, B.sc, B.sr, batch, p, n);
  if (!a.ok || !b.ok) return false;
  if (a.k_contig && b.k_contig) launch_mma<T, true, true>(A, B, out, batch, m, n, p);
  else if (a.k_contig) launch_mma<T, true, false>(A, B, out, batch, m, n, p);
  else if (b.k_contig) launch_mma<T, false, true>(A, B, out, batch, m, n, p);
  else launch_mma<T, false, false>(A, B, out, batch, m, n, p);
  return true;
}

template void launch_matmul_wmma<half_t>(const MatView<half_t>&, const MatView<half_t>&, half_t*, int64_t, int64_t,
                                         int64_t, int64_t);
template void launch_matmul_wmma<bfloat16_t>(const MatView<bfloat16_t>&, const MatView<bfloat16_t>&, bfloat16_t*,
                                             int64_t, int64_t, int64_t, int64_t);
template bool launch_matmul_mma<half_t>(const MatView<half_t>&, const MatView<half_t>&, half_t*, int64_t, int64_t,
                                        int64_t, int64_t);
template bool launch_matmul_mma<bfloat16_t>(const MatView<bfloat16_t>&, const MatView<bfloat16_t>&, bfloat16_t*,
                                            int64_t, int64_t, int64_t, int64_t);

}  // namespace cuda
}  // namespace needle
