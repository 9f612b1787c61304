// Memory and launch plumbing of the CUDA backend: error checks around every
// runtime call and launch, the caching allocator, the typed flat `Array`
// (Python's Array), device queries and launch sizing.
//
// All work runs on the legacy default stream, so kernels, device-to-device copies
// and blocks recycled by the allocator are ordered without explicit events.
// No CUDA call happens at import time: the module loads on a machine without a GPU.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/dtypes.h"

namespace needle {

using Shape = std::vector<int64_t>;  // as in common/checks.h (this header stays free of pybind11)

namespace cuda {

#define NEEDLE_STR2(x) #x
#define NEEDLE_STR(x) NEEDLE_STR2(x)

// Every runtime call goes through this; pybind11 turns std::runtime_error into RuntimeError.
#define CUDA_CHECK(call)                                                                    \
  do {                                                                                      \
    cudaError_t err_ = (call);                                                              \
    if (err_ != cudaSuccess) {                                                              \
      throw std::runtime_error(std::string("CUDA error: ") + #call + " failed at " +        \
                               __FILE__ ":" NEEDLE_STR(__LINE__) ": " +                     \
                               cudaGetErrorString(err_));                                   \
    }                                                                                       \
  } while (0)

// After every launch: a bad configuration is reported by cudaGetLastError, and with
// NEEDLE_CUDA_SYNC=1 faults inside the kernel are reported here too, carrying its name.
void check_launch(const char* kernel, const char* file, int line);
#define CHECK_LAUNCH(kernel) ::needle::cuda::check_launch(kernel, __FILE__, __LINE__)

// Raised as Python MemoryError (translator registered in the bindings).
struct DeviceOutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline size_t round_up(size_t a, size_t b) { return (a + b - 1) / b * b; }

// Caching allocator: free lists keyed by block size. Arrays return their block here
// when they die, so steady-state training loops never call cudaMalloc/cudaFree.
class DeviceAllocator {
 public:
  // Never destroyed: freeing blocks at process exit would race the runtime's own teardown.
  static DeviceAllocator& instance();

  void* allocate(size_t block);
  // No CUDA call: safe inside destructors. Work queued on the default stream that still
  // reads the block finishes before any later kernel that reuses it.
  void release(void* ptr, size_t block) noexcept;
  void empty_cache();

  struct Stats {
    size_t allocated, cached, peak;
  };
  Stats stats();

 private:
  DeviceAllocator() = default;
  void release_cache_locked();

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t allocated_ = 0;
  size_t cached_ = 0;
  size_t peak_ = 0;
};

// Size class of a request: 512-byte granules up to 1 MiB, then four classes per
// power of two, so a recycled block wastes at most 25% and similar sizes share a list.
size_t block_bytes_for(size_t bytes);

// A flat typed device buffer of `size` elements of `dtype` (strides elsewhere count
// elements). Size 0 holds no block and a null pointer. Blocks come from cudaMalloc
// or the cache, so a non-null ptr is at least 256-byte aligned. The constructor
// trusts its size: Python's Array(size, dtype) checks it first (table.cu).
struct Array {
  Array(int64_t size, DType dtype);
  // Device memory someone else owns (an array imported through DLPack): block stays 0,
  // so it is never released here; the Python side keeps the owner alive meanwhile.
  Array(void* external, int64_t size, DType dtype) : ptr(external), size(size), dtype(dtype) {}
  ~Array();
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;

  template <typename T>
  T* data() const { return static_cast<T*>(ptr); }
  // Byte address of element i (for dtype-blind copies).
  char* bytes_at(int64_t i) const { return static_cast<char*>(ptr) + i * itemsize(); }
  size_t ptr_as_int() const { return reinterpret_cast<size_t>(ptr); }
  int itemsize() const { return dtype_size(dtype); }
  size_t nbytes() const { return static_cast<size_t>(size) * static_cast<size_t>(itemsize()); }

  void* ptr = nullptr;
  int64_t size = 0;
  DType dtype;
  size_t block = 0;  // 0: nothing to release (size 0 or external memory)
};

// A scratch buffer for a storage type T (partial sums, row indices).
template <typename T>
struct Scratch : Array {
  explicit Scratch(int64_t n) : Array(n, DTypeOf<T>::value) {}
  T* get() const { return data<T>(); }
};

// An int in device memory that kernels set when they find an error only the data
// shows (an integer raised to a negative power); read() waits for the kernel.
struct DeviceFlag {
  DeviceFlag();
  int* ptr() const { return buf.data<int>(); }
  bool read() const;
  Scratch<int32_t> buf;
};

// Queried once, on first use (never at import): launch sizing needs it on every call.
int sm_count();
// 0 when there is no driver or no device: callers probe with this before using the module.
int device_count();
// Name of the current device, e.g. "NVIDIA H200".
std::string device_name();

constexpr int kThreads = 256;

// Grid-stride kernels need only enough blocks to fill the machine a few times over.
unsigned grid_for(int64_t work, int threads = kThreads);

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The first thread index and the stride of a 1-D grid-stride loop, in 64 bits.
__device__ __forceinline__ int64_t grid_tid() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace cuda
}  // namespace needle
