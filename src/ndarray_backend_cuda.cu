// ndarray_backend_cuda: the CUDA device module behind needle's NDArray.
//
// Exports the function table of python/needle/backend_ndarray/ndarray_backend_numpy.py
// (same names, same argument order), minus `matmul_tiled`, plus device helpers
// (memory_stats, empty_cache, device_count, device_name, matmul kernel selection).
// Buffers are flat float32; shapes, strides and offsets are in elements and
// strides are signed (0 broadcasts, negative flips).
//
// All work runs on the legacy default stream, so kernels, device-to-device copies
// and blocks recycled by the allocator are ordered without explicit events.
// No CUDA call happens at import time: the module loads on a machine without a GPU.

#include <cuda_runtime.h>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace needle {
namespace cuda {

// ---------------------------------------------------------------------------
// Memory: error checks, caching allocator, Array
// ---------------------------------------------------------------------------

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
static bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("NEEDLE_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

static void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_after_launch()) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA kernel ") + kernel + " failed at " + file + ":" +
                             std::to_string(line) + ": " + cudaGetErrorString(err));
  }
}
#define CHECK_LAUNCH(kernel) check_launch(kernel, __FILE__, __LINE__)

// Raised as Python MemoryError (translator registered in the bindings).
struct DeviceOutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

__host__ __device__ static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline size_t round_up(size_t a, size_t b) { return (a + b - 1) / b * b; }

// Size class of a request: 512-byte granules up to 1 MiB, then four classes per
// power of two, so a recycled block wastes at most 25% and similar sizes share a list.
static size_t block_bytes_for(size_t bytes) {
  constexpr size_t kSmallGranule = 512;
  constexpr size_t kSmallLimit = size_t(1) << 20;
  if (bytes <= kSmallLimit) return round_up(std::max<size_t>(bytes, 1), kSmallGranule);
  const int top = 63 - __builtin_clzll(static_cast<unsigned long long>(bytes));
  const size_t step = (size_t(1) << top) / 4;
  return round_up(bytes, step);
}

// Caching allocator: free lists keyed by block size. Arrays return their block here
// when they die, so steady-state training loops never call cudaMalloc/cudaFree.
class DeviceAllocator {
 public:
  // Never destroyed: freeing blocks at process exit would race the runtime's own teardown.
  static DeviceAllocator& instance() {
    static DeviceAllocator* inst = new DeviceAllocator();
    return *inst;
  }

  void* allocate(size_t block) {
    std::lock_guard<std::mutex> lock(mu_);
    void* ptr = nullptr;
    auto it = free_.find(block);
    if (it != free_.end() && !it->second.empty()) {
      ptr = it->second.back();
      it->second.pop_back();
      cached_ -= block;
    } else {
      cudaError_t err = cudaMalloc(&ptr, block);
      if (err == cudaErrorMemoryAllocation) {
        // Out of memory: clear the sticky-free error, give the cache back, retry once.
        (void)cudaGetLastError();
        release_cache_locked();
        err = cudaMalloc(&ptr, block);
        if (err == cudaErrorMemoryAllocation) {
          (void)cudaGetLastError();
          std::ostringstream msg;
          msg << "CUDA out of memory allocating " << block << " bytes (" << allocated_
              << " bytes in live arrays): " << cudaGetErrorString(err);
          throw DeviceOutOfMemory(msg.str());
        }
      }
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error(std::string("CUDA error: cudaMalloc(") + std::to_string(block) +
                                 " bytes) failed: " + cudaGetErrorString(err));
      }
    }
    allocated_ += block;
    peak_ = std::max(peak_, allocated_);
    return ptr;
  }

  // No CUDA call: safe inside destructors. Work queued on the default stream that still
  // reads the block finishes before any later kernel that reuses it.
  void release(void* ptr, size_t block) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    try {
      free_[block].push_back(ptr);
      cached_ += block;
    } catch (...) {
      // The free list could not grow: hand the block straight back to the driver.
      cudaFree(ptr);
    }
    allocated_ -= block;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cache_locked();
  }

  struct Stats {
    size_t allocated, cached, peak;
  };
  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return Stats{allocated_, cached_, peak_};
  }

 private:
  DeviceAllocator() = default;

  // Each block leaves the list before it is freed, so a failing cudaFree (reported as
  // an exception) never leaves a freed pointer behind to be handed out or freed again.
  void release_cache_locked() {
    for (auto& kv : free_) {
      while (!kv.second.empty()) {
        void* p = kv.second.back();
        kv.second.pop_back();
        cached_ -= kv.first;
        CUDA_CHECK(cudaFree(p));
      }
    }
    free_.clear();
  }

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t allocated_ = 0;
  size_t cached_ = 0;
  size_t peak_ = 0;
};

// A flat float32 device buffer. Size 0 holds no block and a null pointer.
struct CudaArray {
  explicit CudaArray(int64_t n) {
    if (n < 0) throw py::value_error("Array size must be >= 0, got " + std::to_string(n));
    if (static_cast<uint64_t>(n) > std::numeric_limits<size_t>::max() / (2 * sizeof(float)))
      throw py::value_error("Array size " + std::to_string(n) + " is too large");
    size = static_cast<size_t>(n);
    if (size > 0) {
      block = block_bytes_for(size * sizeof(float));
      ptr = static_cast<float*>(DeviceAllocator::instance().allocate(block));
    }
  }
  ~CudaArray() {
    if (ptr != nullptr) DeviceAllocator::instance().release(ptr, block);
  }
  CudaArray(const CudaArray&) = delete;
  CudaArray& operator=(const CudaArray&) = delete;

  size_t ptr_as_int() const { return reinterpret_cast<size_t>(ptr); }

  float* ptr = nullptr;
  size_t size = 0;
  size_t block = 0;
};

// Queried once, on first use (never at import): launch sizing needs it on every call.
static int sm_count() {
  static int count = 0;
  if (count == 0) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
  }
  return count;
}

// 0 when there is no driver or no device: callers probe with this before using the module.
static int device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

// Name of the current device, e.g. "NVIDIA H200".
static std::string device_name() {
  if (device_count() == 0) throw std::runtime_error("device_name: no CUDA device is visible");
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return std::string(prop.name);
}

constexpr int kThreads = 256;

// Grid-stride kernels need only enough blocks to fill the machine a few times over.
static unsigned grid_for(int64_t work, int threads = kThreads) {
  const int64_t blocks = ceil_div(std::max<int64_t>(work, 1), threads);
  const int64_t cap = static_cast<int64_t>(sm_count()) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap)));
}

__host__ __device__ static inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------------------
// Compact and setitem
// ---------------------------------------------------------------------------

constexpr int MAX_DIMS = 8;

// Passed to kernels by value (kernel parameter space), never through device memory.
struct StridedLayout {
  int ndim;
  int64_t shape[MAX_DIMS];
  int64_t strides[MAX_DIMS];
  int64_t offset;
};

// Sizes and spans come from Python ints: a product that leaves int64 is an error, not a
// wrapped value that could slip past the bounds checks.
static int64_t checked_mul(const char* fn, int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    throw py::value_error(std::string(fn) + ": " + std::to_string(a) + " * " + std::to_string(b) +
                          " overflows a 64-bit index");
  }
  return r;
}
static int64_t checked_add(const char* fn, int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    throw py::value_error(std::string(fn) + ": " + std::to_string(a) + " + " + std::to_string(b) +
                          " overflows a 64-bit index");
  }
  return r;
}

// Validates (shape, strides, offset) against a buffer of buffer_size elements and
// returns it with size-1 dims dropped and contiguous neighbours merged, so most
// views reach the kernel with one or two dims (fewer divisions per element).
// numel receives prod(shape).
static StridedLayout make_layout(const char* fn, const std::vector<int64_t>& shape,
                                 const std::vector<int64_t>& strides, int64_t offset,
                                 size_t buffer_size, int64_t* numel) {
  if (shape.size() != strides.size()) {
    throw py::value_error(std::string(fn) + ": shape has " + std::to_string(shape.size()) +
                          " dims but strides has " + std::to_string(strides.size()));
  }
  if (shape.size() > static_cast<size_t>(MAX_DIMS)) {
    throw py::value_error(std::string(fn) + ": " + std::to_string(shape.size()) +
                          " dims exceed the CUDA backend limit of " + std::to_string(MAX_DIMS));
  }
  bool empty = false;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 0) {
      throw py::value_error(std::string(fn) + ": negative dimension " + std::to_string(shape[d]));
    }
    empty = empty || shape[d] == 0;
  }
  int64_t n = empty ? 0 : 1;  // a 0 dimension empties the view whatever the others are
  for (size_t d = 0; d < shape.size() && n != 0; ++d) n = checked_mul(fn, n, shape[d]);
  int64_t lo = offset, hi = offset;  // first and last touched element
  if (n > 0) {
    for (size_t d = 0; d < shape.size(); ++d) {
      const int64_t span = checked_mul(fn, shape[d] - 1, strides[d]);
      if (span < 0) lo = checked_add(fn, lo, span); else hi = checked_add(fn, hi, span);
    }
  }
  *numel = n;
  if (n > 0 && (lo < 0 || hi >= static_cast<int64_t>(buffer_size))) {
    std::ostringstream msg;
    msg << fn << ": strided view touches elements [" << lo << ", " << hi
        << "] outside a buffer of " << buffer_size << " elements";
    throw py::value_error(msg.str());
  }

  StridedLayout L{};
  L.ndim = 0;
  L.offset = offset;
  if (n == 0) return L;  // nothing to address (and the strides were never validated)
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (L.ndim > 0 && L.strides[L.ndim - 1] == strides[d] * shape[d]) {
      L.shape[L.ndim - 1] *= shape[d];
      L.strides[L.ndim - 1] = strides[d];
    } else {
      L.shape[L.ndim] = shape[d];
      L.strides[L.ndim] = strides[d];
      ++L.ndim;
    }
  }
  return L;
}

// One contiguous run starting at offset: a plain memcpy serves.
static bool layout_is_contiguous(const StridedLayout& L) {
  return L.ndim == 0 || (L.ndim == 1 && L.strides[0] == 1);
}

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
template <StridedMode Mode, typename Index>
__global__ void strided_copy_kernel(const float* src, float* out, float val, int64_t n,
                                    StridedLayout L) {
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

template <StridedMode Mode>
static void launch_strided(const char* name, const float* src, float* out, float val, int64_t n,
                           const StridedLayout& L) {
  if (n == 0) return;
  const unsigned grid = grid_for(n);
  // 32-bit indices only while the grid-stride loop's last increment (i + grid * threads,
  // with i < n) cannot wrap around: a wrapped index would restart below n and loop on.
  const int64_t reach = n + static_cast<int64_t>(grid) * kThreads;
  if (reach <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) {
    strided_copy_kernel<Mode, uint32_t><<<grid, kThreads>>>(src, out, val, n, L);
  } else {
    strided_copy_kernel<Mode, uint64_t><<<grid, kThreads>>>(src, out, val, n, L);
  }
  CHECK_LAUNCH(name);
}

// a is strided (shape, strides, offset); out is (prod(shape),) compact.
static void compact(const CudaArray& a, CudaArray& out, const std::vector<int64_t>& shape,
                    const std::vector<int64_t>& strides, int64_t offset) {
  int64_t n = 0;
  const StridedLayout L = make_layout("compact", shape, strides, offset, a.size, &n);
  if (static_cast<size_t>(n) != out.size) {
    throw py::value_error("compact: prod(shape) = " + std::to_string(n) + " but out has " +
                          std::to_string(out.size) + " elements");
  }
  if (n == 0) return;
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpyAsync(out.ptr, a.ptr + offset, n * sizeof(float),
                               cudaMemcpyDeviceToDevice, 0));
    return;
  }
  launch_strided<StridedMode::Gather>("compact_gather", a.ptr, out.ptr, 0.f, n, L);
}

// a is compact with at least prod(shape) elements; out is written through its strided view.
static void ewise_setitem(const CudaArray& a, CudaArray& out, const std::vector<int64_t>& shape,
                          const std::vector<int64_t>& strides, int64_t offset) {
  int64_t n = 0;
  const StridedLayout L = make_layout("ewise_setitem", shape, strides, offset, out.size, &n);
  if (static_cast<size_t>(n) > a.size) {
    throw py::value_error("ewise_setitem: prod(shape) = " + std::to_string(n) +
                          " but the source has " + std::to_string(a.size) + " elements");
  }
  if (n == 0) return;
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpyAsync(out.ptr + offset, a.ptr, n * sizeof(float),
                               cudaMemcpyDeviceToDevice, 0));
    return;
  }
  launch_strided<StridedMode::Scatter>("ewise_setitem_scatter", a.ptr, out.ptr, 0.f, n, L);
}

// Writes val into the strided view of out; size must equal prod(shape).
static void scalar_setitem(int64_t size, float val, CudaArray& out,
                           const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                           int64_t offset) {
  int64_t n = 0;
  const StridedLayout L = make_layout("scalar_setitem", shape, strides, offset, out.size, &n);
  if (size != n) {
    throw py::value_error("scalar_setitem: size = " + std::to_string(size) +
                          " but prod(shape) = " + std::to_string(n));
  }
  launch_strided<StridedMode::Fill>("scalar_setitem_fill", nullptr, out.ptr, val, n, L);
}

// a's strided view -> new numpy array of that shape (compacted on the device first).
static py::array_t<float> to_numpy(const CudaArray& a, const std::vector<int64_t>& shape,
                                   const std::vector<int64_t>& strides, int64_t offset) {
  int64_t n = 0;
  const StridedLayout L = make_layout("to_numpy", shape, strides, offset, a.size, &n);
  std::vector<py::ssize_t> np_shape(shape.begin(), shape.end());
  py::array_t<float> result(np_shape);
  if (n == 0) return result;
  if (layout_is_contiguous(L)) {
    CUDA_CHECK(cudaMemcpy(result.mutable_data(), a.ptr + offset, n * sizeof(float),
                          cudaMemcpyDeviceToHost));
    return result;
  }
  CudaArray tmp(n);
  launch_strided<StridedMode::Gather>("to_numpy_gather", a.ptr, tmp.ptr, 0.f, n, L);
  CUDA_CHECK(cudaMemcpy(result.mutable_data(), tmp.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
  return result;
}

// Any numpy array (cast to C-contiguous float32) -> out; element counts must match.
static void from_numpy(py::array_t<float, py::array::c_style | py::array::forcecast> a,
                       CudaArray& out) {
  const size_t n = static_cast<size_t>(a.size());
  if (n != out.size) {
    throw py::value_error("from_numpy: source has " + std::to_string(n) +
                          " elements, buffer has " + std::to_string(out.size));
  }
  if (n == 0) return;
  CUDA_CHECK(cudaMemcpy(out.ptr, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
}

// ---------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------

// One functor per op; the kernels below stamp them into ewise/scalar/unary loops.
// Each mirrors numpy float32 semantics (IEEE division, powf NaN for a negative base
// with a fractional exponent, NaN-propagating maximum, 1.0f/0.0f comparisons).
struct AddOp { __device__ float operator()(float x, float y) const { return x + y; } };
struct MulOp { __device__ float operator()(float x, float y) const { return x * y; } };
struct DivOp { __device__ float operator()(float x, float y) const { return x / y; } };
struct PowerOp { __device__ float operator()(float x, float y) const { return powf(x, y); } };
struct MaximumOp {
  // np.maximum propagates NaN from either side; fmaxf would drop it.
  __device__ float operator()(float x, float y) const { return (x > y || isnan(x)) ? x : y; }
};
struct EqOp { __device__ float operator()(float x, float y) const { return x == y ? 1.f : 0.f; } };
struct GeOp { __device__ float operator()(float x, float y) const { return x >= y ? 1.f : 0.f; } };
struct LogOp { __device__ float operator()(float x) const { return logf(x); } };
struct ExpOp { __device__ float operator()(float x) const { return expf(x); } };
struct TanhOp { __device__ float operator()(float x) const { return tanhf(x); } };

// Binary op with a second operand either from memory (Scalar = false) or a constant.
template <class Op, bool Scalar>
struct BinaryApply {
  Op op;
  const float* b;
  float val;
  __device__ __forceinline__ float operator()(const float* a, int64_t i) const {
    return op(a[i], Scalar ? val : b[i]);
  }
  __device__ __forceinline__ float4 vec(const float* a, int64_t i4) const {
    const float4 x = reinterpret_cast<const float4*>(a)[i4];
    const float4 y = Scalar ? make_float4(val, val, val, val)
                            : reinterpret_cast<const float4*>(b)[i4];
    return make_float4(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w));
  }
};

template <class Op>
struct UnaryApply {
  Op op;
  __device__ __forceinline__ float operator()(const float* a, int64_t i) const { return op(a[i]); }
  __device__ __forceinline__ float4 vec(const float* a, int64_t i4) const {
    const float4 x = reinterpret_cast<const float4*>(a)[i4];
    return make_float4(op(x.x), op(x.y), op(x.z), op(x.w));
  }
};

// a, (b,) out are (n,) compact. With vec set every pointer is 16-byte aligned: the body
// moves float4s and the last n % 4 elements go through the scalar tail.
template <class Apply>
__global__ void elementwise_kernel(const float* a, float* out, int64_t n, Apply f, bool vec) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t start = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = tid; i < n4; i += stride) reinterpret_cast<float4*>(out)[i] = f.vec(a, i);
    start = n4 * 4;
  }
  for (int64_t i = start + tid; i < n; i += stride) out[i] = f(a, i);
}

template <class Apply>
static void launch_elementwise(const char* name, const float* a, const float* b, float* out,
                               int64_t n, const Apply& f) {
  if (n == 0) return;
  const bool vec = aligned16(a) && aligned16(out) && (b == nullptr || aligned16(b));
  elementwise_kernel<Apply><<<grid_for(vec ? ceil_div(n, 4) : n), kThreads>>>(a, out, n, f, vec);
  CHECK_LAUNCH(name);
}

static void check_same_size(const char* fn, const CudaArray& a, const CudaArray& out) {
  if (a.size != out.size) {
    throw py::value_error(std::string(fn) + ": input has " + std::to_string(a.size) +
                          " elements, out has " + std::to_string(out.size));
  }
}

template <class Op>
static void ewise_binary(const char* fn, const CudaArray& a, const CudaArray& b, CudaArray& out) {
  check_same_size(fn, a, out);
  check_same_size(fn, b, out);
  launch_elementwise(fn, a.ptr, b.ptr, out.ptr, out.size, BinaryApply<Op, false>{Op{}, b.ptr, 0.f});
}

template <class Op>
static void scalar_binary(const char* fn, const CudaArray& a, float val, CudaArray& out) {
  check_same_size(fn, a, out);
  launch_elementwise(fn, a.ptr, nullptr, out.ptr, out.size, BinaryApply<Op, true>{Op{}, nullptr, val});
}

template <class Op>
static void ewise_unary(const char* fn, const CudaArray& a, CudaArray& out) {
  check_same_size(fn, a, out);
  launch_elementwise(fn, a.ptr, nullptr, out.ptr, out.size, UnaryApply<Op>{Op{}});
}

// out is (n,) compact, every element set to val.
__global__ void fill_kernel(float* out, int64_t n, float val) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n4 = n / 4;  // the allocator hands out 512-byte aligned blocks
  const float4 v = make_float4(val, val, val, val);
  for (int64_t i = tid; i < n4; i += stride) reinterpret_cast<float4*>(out)[i] = v;
  for (int64_t i = n4 * 4 + tid; i < n; i += stride) out[i] = val;
}

static void fill_range(float* out, int64_t n, float val) {
  if (n == 0) return;
  fill_kernel<<<grid_for(ceil_div(n, 4)), kThreads>>>(out, n, val);
  CHECK_LAUNCH("fill_kernel");
}

// ---------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------

struct SumReduce {
  __device__ static float identity() { return 0.f; }
  __device__ static float combine(float x, float y) { return x + y; }
};
struct MaxReduce {
  __device__ static float identity() { return -INFINITY; }
  __device__ static float combine(float x, float y) { return MaximumOp{}(x, y); }
};

template <class R>
__device__ __forceinline__ float warp_reduce(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = R::combine(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Result valid in thread 0. partial holds one value per warp; the caller syncs before reuse.
template <class R>
__device__ __forceinline__ float block_reduce(float v, float* partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce<R>(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : R::identity();
    v = warp_reduce<R>(v);
  }
  return v;
}

// a is (rows, r) compact, out is (rows,). Short rows: one thread per row (the rows a
// warp touches share cache lines, so the strided reads still hit L1).
template <class R>
__global__ void reduce_thread_kernel(const float* a, float* out, int64_t rows, int64_t r) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += stride) {
    const float* x = a + row * r;
    float acc = R::identity();
    for (int64_t k = 0; k < r; ++k) acc = R::combine(acc, x[k]);
    out[row] = acc;
  }
}

// a is (rows, r) compact, out is (rows,). Medium rows: one warp per row, coalesced
// lane-strided reads, then a shuffle tree. The row loop is warp-uniform, so the
// full-mask shuffles always see all 32 lanes.
template <class R>
__global__ void reduce_warp_kernel(const float* a, float* out, int64_t rows, int64_t r) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t row = warp; row < rows; row += nwarps) {
    const float* x = a + row * r;
    float acc = R::identity();
    for (int64_t k = lane; k < r; k += 32) acc = R::combine(acc, x[k]);
    acc = warp_reduce<R>(acc);
    if (lane == 0) out[row] = acc;
  }
}

// a is (rows, r) compact; each row is split into chunks_per_row chunks of `chunk`
// elements and a block reduces one chunk, writing out[row * chunks_per_row + chunk_id].
// With one chunk per row out is the final (rows,) result; otherwise it holds partials
// that a second pass reduces. Aligned chunks are read as float4.
template <class R>
__global__ void reduce_block_kernel(const float* a, float* out, int64_t rows, int64_t r,
                                    int64_t chunk, int64_t chunks_per_row) {
  __shared__ float partial[32];
  const int64_t work = rows * chunks_per_row;
  for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
    const int64_t row = w / chunks_per_row;
    const int64_t begin = (w - row * chunks_per_row) * chunk;
    const int64_t len = chunk < r - begin ? chunk : r - begin;
    const float* x = a + row * r + begin;
    float acc = R::identity();
    int64_t start = 0;
    if (aligned16(x)) {
      const int64_t n4 = len / 4;
      for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        acc = R::combine(acc, R::combine(R::combine(v.x, v.y), R::combine(v.z, v.w)));
      }
      start = n4 * 4;
    }
    for (int64_t i = start + threadIdx.x; i < len; i += blockDim.x) acc = R::combine(acc, x[i]);
    acc = block_reduce<R>(acc, partial);
    if (threadIdx.x == 0) out[w] = acc;
    __syncthreads();  // partial is rewritten by the next work item
  }
}

// a is (rows, r) compact, out is (rows,) compact. Picks a kernel by run length; long
// runs over few rows are split across blocks and finished by a second pass, so a
// single 16M-element row still uses the whole GPU.
template <class R>
static void reduce_rows(const char* name, const float* a, float* out, int64_t rows, int64_t r) {
  if (rows == 0) return;
  if (r == 1) {
    CUDA_CHECK(cudaMemcpyAsync(out, a, rows * sizeof(float), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  if (r <= 16) {
    reduce_thread_kernel<R><<<grid_for(rows), kThreads>>>(a, out, rows, r);
    CHECK_LAUNCH(name);
    return;
  }
  if (r <= 2048) {
    reduce_warp_kernel<R><<<grid_for(rows * 32), kThreads>>>(a, out, rows, r);
    CHECK_LAUNCH(name);
    return;
  }
  constexpr int64_t kMinChunk = 8192;  // enough elements per block to hide its reduction tree
  const int64_t target_blocks = 4 * static_cast<int64_t>(sm_count());
  int64_t chunks = std::max<int64_t>(1, std::min(ceil_div(target_blocks, rows), ceil_div(r, kMinChunk)));
  // Chunks are multiples of 4 so that aligned rows keep aligned chunk starts.
  const int64_t chunk = static_cast<int64_t>(round_up(static_cast<size_t>(ceil_div(r, chunks)), 4));
  chunks = ceil_div(r, chunk);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(rows * chunks, 8 * target_blocks));
  if (chunks == 1) {
    reduce_block_kernel<R><<<grid, kThreads>>>(a, out, rows, r, chunk, 1);
    CHECK_LAUNCH(name);
    return;
  }
  CudaArray partials(rows * chunks);
  reduce_block_kernel<R><<<grid, kThreads>>>(a, partials.ptr, rows, r, chunk, chunks);
  CHECK_LAUNCH(name);
  reduce_rows<R>(name, partials.ptr, out, rows, chunks);
}

// a is compact with at least out.size * reduce_size elements; out[i] reduces the
// contiguous run a[i * reduce_size : (i + 1) * reduce_size].
template <class R>
static void reduce(const char* fn, const CudaArray& a, CudaArray& out, int64_t reduce_size) {
  if (reduce_size < 0) {
    throw py::value_error(std::string(fn) + ": reduce_size must be >= 0, got " +
                          std::to_string(reduce_size));
  }
  const int64_t rows = static_cast<int64_t>(out.size);
  if (rows > 0 && reduce_size > 0 &&
      static_cast<uint64_t>(reduce_size) > a.size / static_cast<uint64_t>(rows)) {
    throw py::value_error(std::string(fn) + ": out.size * reduce_size = " +
                          std::to_string(rows) + " * " + std::to_string(reduce_size) +
                          " exceeds the input's " + std::to_string(a.size) + " elements");
  }
  if (rows == 0) return;
  if (reduce_size == 0) {
    // Empty runs: the sum is 0 (as numpy), the max has no identity (numpy raises too).
    if (std::is_same<R, MaxReduce>::value) {
      throw py::value_error(std::string(fn) + ": zero-size reduction has no identity");
    }
    fill_range(out.ptr, rows, 0.f);
    return;
  }
  reduce_rows<R>(fn, a.ptr, out.ptr, rows, reduce_size);
}

// a is (outer, reduce, inner) compact; out[(o * chunks + c) * inner + j] is the sum of
// rows [c * chunk, (c + 1) * chunk) of a[o, :, j], added in order in blocks of 64 rows
// (as the CPU kernel adds them). Adjacent threads take adjacent j, so reads coalesce.
__global__ void sum_middle_kernel(const float* a, float* out, int64_t outer, int64_t reduce, int64_t inner,
                                  int64_t chunk, int64_t chunks) {
  const int64_t work = outer * chunks * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < work; w += stride) {
    const int64_t j = w % inner;
    const int64_t t = w / inner;
    const int64_t c = t % chunks, o = t / chunks;
    const int64_t r0 = c * chunk;
    const int64_t r1 = r0 + chunk < reduce ? r0 + chunk : reduce;
    const float* x = a + o * reduce * inner + j;
    float total = 0.f;
    for (int64_t b0 = r0; b0 < r1; b0 += 64) {
      const int64_t b1 = b0 + 64 < r1 ? b0 + 64 : r1;
      float block = 0.f;
      for (int64_t r = b0; r < b1; ++r) block += x[r * inner];
      total += block;
    }
    out[w] = total;
  }
}

// a is (outer, reduce, inner) compact; out (outer, inner) compact gets the sum over the
// middle axis. When outer * inner is too few threads to fill the GPU the middle axis is
// cut into chunks (multiples of 64 rows) whose partial sums a second pass adds.
static void sum_middle(const float* a, float* out, int64_t outer, int64_t reduce, int64_t inner) {
  if (outer * inner == 0) return;
  const int64_t target = 4 * static_cast<int64_t>(sm_count()) * kThreads;
  int64_t chunks = 1;
  if (reduce > 256 && outer * inner < target)
    chunks = std::min(ceil_div(target, outer * inner), ceil_div(reduce, 256));
  const int64_t chunk = static_cast<int64_t>(round_up(static_cast<size_t>(ceil_div(reduce, chunks)), 64));
  chunks = ceil_div(reduce, chunk);
  if (chunks == 1) {
    sum_middle_kernel<<<grid_for(outer * inner), kThreads>>>(a, out, outer, reduce, inner, reduce, 1);
    CHECK_LAUNCH("sum_middle_kernel");
    return;
  }
  CudaArray partials(outer * chunks * inner);
  sum_middle_kernel<<<grid_for(outer * chunks * inner), kThreads>>>(a, partials.ptr, outer, reduce, inner, chunk,
                                                                    chunks);
  CHECK_LAUNCH("sum_middle_kernel");
  sum_middle(partials.ptr, out, outer, chunks, inner);
}

static void reduce_sum_middle(const CudaArray& a, CudaArray& out, int64_t outer, int64_t reduce, int64_t inner) {
  if (outer < 0 || reduce < 1 || inner < 1) throw py::value_error("reduce_sum_middle: bad sizes");
  const int64_t rows = checked_mul("reduce_sum_middle", outer, reduce);
  const int64_t n = checked_mul("reduce_sum_middle", rows, inner);
  const int64_t kept = checked_mul("reduce_sum_middle", outer, inner);
  if (a.size < static_cast<uint64_t>(n) || out.size < static_cast<uint64_t>(kept))
    throw py::value_error("reduce_sum_middle: arrays are smaller than (outer, reduce, inner)");
  sum_middle(a.ptr, out.ptr, outer, reduce, inner);
}

// ---------------------------------------------------------------------------
// Row broadcast: out = f(full, row) with row a (cols,) run broadcast over the rows
// ---------------------------------------------------------------------------
template <class Op, bool Swap>
__global__ void ewise_rows_kernel(const float* x, const float* y, float* out, int64_t n, int64_t cols) {
  Op f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float r = y[i % cols];
    out[i] = Swap ? f(r, x[i]) : f(x[i], r);
  }
}

template <class Op>
static void launch_rows(const float* x, const float* y, float* out, int64_t n, int64_t cols, bool swap) {
  if (swap)
    ewise_rows_kernel<Op, true><<<grid_for(n), kThreads>>>(x, y, out, n, cols);
  else
    ewise_rows_kernel<Op, false><<<grid_for(n), kThreads>>>(x, y, out, n, cols);
  CHECK_LAUNCH("ewise_rows_kernel");
}

// full is (rows, cols) compact, row is the (cols,) run at row.ptr + row_offset; out
// (rows, cols) compact gets op(full, row), or op(row, full) when swap.
static void ewise_rows(const std::string& op, const CudaArray& full, const CudaArray& row, int64_t row_offset,
                       CudaArray& out, int64_t cols, bool swap) {
  check_same_size("ewise_rows", full, out);
  if (op != "add" && op != "mul" && op != "div") throw py::value_error("ewise_rows: unknown op " + op);
  if (cols < 1 || full.size % static_cast<uint64_t>(cols) || row_offset < 0 ||
      static_cast<uint64_t>(row_offset) > row.size || static_cast<uint64_t>(cols) > row.size - row_offset)
    throw py::value_error("ewise_rows: bad row broadcast (cols " + std::to_string(cols) + ")");
  const int64_t n = static_cast<int64_t>(out.size);
  if (n == 0) return;
  const float* y = row.ptr + row_offset;
  if (op == "add") launch_rows<AddOp>(full.ptr, y, out.ptr, n, cols, swap);
  else if (op == "mul") launch_rows<MulOp>(full.ptr, y, out.ptr, n, cols, swap);
  else launch_rows<DivOp>(full.ptr, y, out.ptr, n, cols, swap);
}

// ---------------------------------------------------------------------------
// Matmul: kernel 0 naive, 1 shared-memory tiled, 2 register-blocked
// ---------------------------------------------------------------------------

// Element (b, r, c) of a strided batched operand sits at ptr[b*sb + r*sr + c*sc];
// ptr already includes the operand's offset.
struct MatView {
  const float* ptr;
  int64_t sb, sr, sc;
};

// Kernel 0 (reference). A is (batch, m, n) strided, B is (batch, n, p) strided, out is
// (batch, m, p) compact. One thread per output; x runs along p so B loads coalesce
// when B's column stride is 1. Any strides, any sizes.
__global__ void matmul_naive_kernel(MatView A, MatView B, float* out, int64_t batch, int64_t m,
                                    int64_t n, int64_t p) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p) return;
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < m;
         row += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const float* a = A.ptr + bz * A.sb + row * A.sr;
      const float* b = B.ptr + bz * B.sb + col * B.sc;
      float acc = 0.f;
      for (int64_t k = 0; k < n; ++k) acc = fmaf(a[k * A.sc], b[k * B.sr], acc);
      out[(bz * m + row) * p + col] = acc;
    }
  }
}

constexpr int T1 = 32;  // kernel 1 tile edge

// Kernel 1. Same operands as kernel 0. A 32x32 block stages a 32x32 tile of A and of B
// in shared memory per k-step, so each global element is read once per tile instead
// of once per output. Loads are bounds-checked and zero-filled, so edges need no
// special case. Row tiles and batches loop uniformly (grid y/z are capped at 65535).
__global__ void __launch_bounds__(T1* T1)
    matmul_smem_kernel(MatView A, MatView B, float* out, int64_t batch, int64_t m, int64_t n,
                       int64_t p) {
  __shared__ float As[T1][T1];
  __shared__ float Bs[T1][T1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * T1 + tx;
  const int64_t row_tiles = ceil_div(m, T1);
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const float* Ab = A.ptr + bz * A.sb;
    const float* Bb = B.ptr + bz * B.sb;
    for (int64_t by = blockIdx.y; by < row_tiles; by += gridDim.y) {
      const int64_t row = by * T1 + ty;
      float acc = 0.f;
      for (int64_t k0 = 0; k0 < n; k0 += T1) {
        const int64_t ka = k0 + tx, kb = k0 + ty;
        As[ty][tx] = (row < m && ka < n) ? Ab[row * A.sr + ka * A.sc] : 0.f;
        Bs[ty][tx] = (kb < n && col < p) ? Bb[kb * B.sr + col * B.sc] : 0.f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < T1; ++k) acc = fmaf(As[ty][k], Bs[k][tx], acc);
        __syncthreads();
      }
      if (row < m && col < p) out[(bz * m + row) * p + col] = acc;
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
    matmul_regblock_kernel(MatView A, MatView B, float* out, int64_t batch, int64_t m, int64_t n,
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

static const char* const kMatmulKernelNames[] = {"naive", "smem_tiled_32x32", "regblock_128x128_8x8"};
constexpr int kNumMatmulKernels = 3;
static int g_matmul_kernel = 2;  // bmm / matmul default: the fastest

static void set_matmul_kernel(int k) {
  if (k < 0 || k >= kNumMatmulKernels) {
    throw py::value_error("set_matmul_kernel: kernel must be in [0, " +
                          std::to_string(kNumMatmulKernels - 1) + "], got " + std::to_string(k));
  }
  g_matmul_kernel = k;
}

static void launch_regblock(const MatView& A, const MatView& B, float* out, int64_t batch,
                            int64_t m, int64_t n, int64_t p) {
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

// Checks that a (d0, d1, d2) strided operand lies inside its buffer; returns its view.
static MatView make_matview(const char* fn, const char* which, const CudaArray& x, int64_t d0,
                            int64_t d1, int64_t d2, const std::vector<int64_t>& strides,
                            int64_t offset) {
  if (strides.size() != 3) {
    throw py::value_error(std::string(fn) + ": " + which + "_strides must have 3 entries, got " +
                          std::to_string(strides.size()));
  }
  int64_t numel = 0;
  std::string what = std::string(fn) + " operand " + which;
  make_layout(what.c_str(), {d0, d1, d2}, strides, offset, x.size, &numel);
  // Size-1 batch: its stride never matters, and zeroing it keeps the float4 checks simple.
  return MatView{x.ptr + offset, d0 == 1 ? 0 : strides[0], strides[1], strides[2]};
}

// a is (batch, m, n) strided from a_offset, b is (batch, n, p) strided from b_offset
// (batch stride 0 broadcasts), out is (batch, m, p) compact.
static void bmm_with(int kernel, const char* fn, const CudaArray& a, const CudaArray& b,
                     CudaArray& out, int64_t batch, int64_t m, int64_t n, int64_t p,
                     const std::vector<int64_t>& a_strides, int64_t a_offset,
                     const std::vector<int64_t>& b_strides, int64_t b_offset) {
  if (batch < 0 || m < 0 || n < 0 || p < 0) {
    throw py::value_error(std::string(fn) + ": negative dimension in (batch, m, n, p) = (" +
                          std::to_string(batch) + ", " + std::to_string(m) + ", " +
                          std::to_string(n) + ", " + std::to_string(p) + ")");
  }
  const MatView A = make_matview(fn, "a", a, batch, m, n, a_strides, a_offset);
  const MatView B = make_matview(fn, "b", b, batch, n, p, b_strides, b_offset);
  // Broadcast (stride 0) operands can describe huge m and p over tiny buffers, so the
  // output size is computed with overflow checks before it is compared with out.
  const int64_t total =
      (batch == 0 || m == 0 || p == 0) ? 0 : checked_mul(fn, checked_mul(fn, batch, m), p);
  if (static_cast<uint64_t>(total) > out.size) {
    throw py::value_error(std::string(fn) + ": out has " + std::to_string(out.size) +
                          " elements, needs batch * m * p = " + std::to_string(total));
  }
  if (total == 0) return;
  if (n == 0) {  // empty inner dimension: every output is an empty sum
    fill_range(out.ptr, total, 0.f);
    return;
  }
  switch (kernel) {
    case 0: {
      const dim3 block(32, 8);
      const dim3 grid(static_cast<unsigned>(ceil_div(p, block.x)),
                      static_cast<unsigned>(std::min<int64_t>(ceil_div(m, block.y), 65535)),
                      static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
      matmul_naive_kernel<<<grid, block>>>(A, B, out.ptr, batch, m, n, p);
      CHECK_LAUNCH("matmul_naive_kernel");
      break;
    }
    case 1: {
      const dim3 block(T1, T1);
      const dim3 grid(static_cast<unsigned>(ceil_div(p, T1)),
                      static_cast<unsigned>(std::min<int64_t>(ceil_div(m, T1), 65535)),
                      static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
      matmul_smem_kernel<<<grid, block>>>(A, B, out.ptr, batch, m, n, p);
      CHECK_LAUNCH("matmul_smem_kernel");
      break;
    }
    default:
      launch_regblock(A, B, out.ptr, batch, m, n, p);
      break;
  }
}

// a is (m, n) compact, b is (n, p) compact, out is (m, p) compact.
static void matmul(const CudaArray& a, const CudaArray& b, CudaArray& out, int64_t m, int64_t n,
                   int64_t p) {
  bmm_with(g_matmul_kernel, "matmul", a, b, out, 1, m, n, p, {m * n, n, 1}, 0, {n * p, p, 1}, 0);
}


// ---------------------------------------------------------------------------
// Row gather / scatter-add (embedding lookup and its adjoint)
// ---------------------------------------------------------------------------
// Row numbers arrive float32-encoded on the device; they are copied to the host
// and checked (integer in [0, num_rows)) before any kernel reads through them.
static std::vector<int64_t> row_indices(const char* fn, const CudaArray& idx, int64_t num_rows) {
  std::vector<float> host(static_cast<size_t>(idx.size));
  if (idx.size) CUDA_CHECK(cudaMemcpy(host.data(), idx.ptr, idx.size * sizeof(float), cudaMemcpyDeviceToHost));
  std::vector<int64_t> rows(host.size());
  for (size_t r = 0; r < host.size(); ++r) {
    const float v = host[r];
    const int64_t i = (v >= 0.0f && v < float(num_rows)) ? static_cast<int64_t>(v) : -1;
    if (i < 0 || i >= num_rows || float(i) != v)
      throw std::out_of_range(std::string(fn) + ": row index " + std::to_string(v) + " is not an integer in [0, " +
                              std::to_string(num_rows) + ")");
    rows[r] = i;
  }
  return rows;
}

static void check_rows(const char* fn, const CudaArray& table, const CudaArray& rows, int64_t num_rows, int64_t dim,
                       int64_t k) {
  if (num_rows < 0 || dim < 0 || table.size < num_rows * dim || rows.size != k * dim)
    throw std::invalid_argument(std::string(fn) + ": buffers of " + std::to_string(table.size) + " and " +
                                std::to_string(rows.size) + " elements do not fit (" + std::to_string(num_rows) +
                                ", " + std::to_string(dim) + ") and (" + std::to_string(k) + ", " +
                                std::to_string(dim) + ")");
}

// out[r, j] = a[idx[r], j] for the k x dim elements (idx already validated).
__global__ void gather_rows_kernel(const float* a, const float* idx, float* out, int64_t k, int64_t dim) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < k * dim; i += stride) {
    const int64_t r = i / dim;
    out[i] = a[static_cast<int64_t>(idx[r]) * dim + (i - r * dim)];
  }
}

// One thread per column j: out[idx[r], j] += a[r, j] for r in order (deterministic, no atomics).
__global__ void scatter_add_rows_kernel(const float* a, const float* idx, float* out, int64_t k, int64_t dim) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < dim; j += stride)
    for (int64_t r = 0; r < k; ++r) out[static_cast<int64_t>(idx[r]) * dim + j] += a[r * dim + j];
}

// a is (num_rows, dim) compact, idx is (k,) compact, out is (k, dim) compact.
static void gather_rows(const CudaArray& a, const CudaArray& idx, CudaArray& out, int64_t num_rows, int64_t dim) {
  check_rows("gather_rows", a, out, num_rows, dim, idx.size);
  row_indices("gather_rows", idx, num_rows);
  if (idx.size * dim == 0) return;
  gather_rows_kernel<<<grid_for(idx.size * dim), kThreads>>>(a.ptr, idx.ptr, out.ptr, idx.size, dim);
  CHECK_LAUNCH("gather_rows_kernel");
}

// a is (k, dim) compact, idx is (k,) compact, out is (num_rows, dim) compact (accumulated into).
static void scatter_add_rows(const CudaArray& a, const CudaArray& idx, CudaArray& out, int64_t num_rows,
                             int64_t dim) {
  check_rows("scatter_add_rows", out, a, num_rows, dim, idx.size);
  row_indices("scatter_add_rows", idx, num_rows);
  if (idx.size * dim == 0) return;
  scatter_add_rows_kernel<<<grid_for(dim), kThreads>>>(a.ptr, idx.ptr, out.ptr, idx.size, dim);
  CHECK_LAUNCH("scatter_add_rows_kernel");
}

// ---------------------------------------------------------------------------
// Fused softmax cross-entropy, batch norm and optimizer steps (few passes per tensor)
// ---------------------------------------------------------------------------
// Block-wide reduction of one float per thread (blockDim.x a multiple of 32, <= 1024).
template <bool kMax>
__device__ float block_reduce(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? ((u > v || isnan(u)) ? u : v) : v + u;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < warps ? shared[threadIdx.x] : (kMax ? -INFINITY : 0.0f);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) {
      const float u = __shfl_xor_sync(0xffffffffu, v, o);
      v = kMax ? ((u > v || isnan(u)) ? u : v) : v + u;
    }
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

// One block per row (grid-stride over rows): lse[i] = max + log(sum(exp(x - max))),
// row_loss[i] = lse[i] - x[labels[i]] (labels already validated on the host).
__global__ void softmax_xent_kernel(const float* a, const float* labels, float* lse, float* row_loss, int64_t n,
                                    int64_t k) {
  __shared__ float shared[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const float* x = a + i * k;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) m = (x[j] > m || isnan(x[j])) ? x[j] : m;
    m = block_reduce<true>(m, shared);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) s += expf(x[j] - m);
    s = block_reduce<false>(s, shared);
    if (threadIdx.x == 0) {
      const float l = isfinite(m) ? m + logf(s) : NAN;
      lse[i] = l;
      row_loss[i] = l - x[static_cast<int64_t>(labels[i])];
    }
  }
}

// loss[0] = mean of the n row losses, summed in double by one block.
__global__ void mean_kernel(const float* v, float* out, int64_t n) {
  __shared__ double shared[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  shared[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = n ? static_cast<float>(shared[0] / static_cast<double>(n)) : NAN;
}

__global__ void softmax_xent_grad_kernel(const float* a, const float* labels, const float* lse, const float* g,
                                         float* out, int64_t n, int64_t k, float scale) {
  const float c = g[0] * scale;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * k; e += stride) {
    const int64_t i = e / k, j = e - i * k;
    const float onehot = static_cast<int64_t>(labels[i]) == j ? 1.0f : 0.0f;
    out[e] = (expf(a[e] - lse[i]) - onehot) * c;
  }
}

static void check_xent(const char* fn, const CudaArray& a, const CudaArray& labels, const CudaArray& lse, int64_t n,
                       int64_t k) {
  if (n < 0 || k < 0 || static_cast<int64_t>(a.size) < n * k || static_cast<int64_t>(lse.size) != n)
    throw std::invalid_argument(std::string(fn) + ": buffers of " + std::to_string(a.size) + " and " +
                                std::to_string(lse.size) + " elements do not fit (" + std::to_string(n) + ", " +
                                std::to_string(k) + ") logits and (n,) lse");
  if (static_cast<int64_t>(labels.size) != n)
    throw std::invalid_argument(std::string(fn) + ": " + std::to_string(labels.size) + " labels for " +
                                std::to_string(n) + " rows");
  row_indices(fn, labels, k);
}

// a is (n, k) compact logits, labels (n,) class numbers; lse (n,) gets each row's
// log-sum-exp, loss (1,) the mean of lse[i] - a[i, labels[i]].
static void softmax_xent(const CudaArray& a, const CudaArray& labels, CudaArray& lse, CudaArray& loss, int64_t n,
                         int64_t k) {
  check_xent("softmax_xent", a, labels, lse, n, k);
  if (loss.size != 1) throw std::invalid_argument("softmax_xent: loss must have 1 element");
  CudaArray row_loss(n);
  if (n > 0 && k > 0) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535));
    softmax_xent_kernel<<<blocks, kThreads>>>(a.ptr, labels.ptr, lse.ptr, row_loss.ptr, n, k);
    CHECK_LAUNCH("softmax_xent_kernel");
  }
  mean_kernel<<<1, kThreads>>>(row_loss.ptr, loss.ptr, n);
  CHECK_LAUNCH("mean_kernel");
}

// out (n, k) compact = (exp(a[i, j] - lse[i]) - [j == labels[i]]) * g[0] * scale.
static void softmax_xent_grad(const CudaArray& a, const CudaArray& labels, const CudaArray& lse, const CudaArray& g,
                              CudaArray& out, int64_t n, int64_t k, double scale) {
  check_xent("softmax_xent_grad", a, labels, lse, n, k);
  if (g.size != 1 || static_cast<int64_t>(out.size) != n * k)
    throw std::invalid_argument("softmax_xent_grad: g must have 1 element and out n * k");
  if (n * k == 0) return;
  softmax_xent_grad_kernel<<<grid_for(n * k), kThreads>>>(a.ptr, labels.ptr, lse.ptr, g.ptr, out.ptr, n, k,
                                                          static_cast<float>(scale));
  CHECK_LAUNCH("softmax_xent_grad_kernel");
}

// ---- batch norm over the rows of a (rows, cols) layout (channels last) ----
// One block per 32 columns: threadIdx.x is the column, the kBnRows rows of threads
// stride over the rows (coalesced along each row), sums in double.
constexpr int kBnCols = 32, kBnRows = 8;

// The sum over threadIdx.y of v, in a fixed order; every thread of the column gets it.
// Called by all threads of the block.
__device__ double bn_column_total(double v, double (*shared)[kBnCols]) {
  __syncthreads();  // shared may still be read from a previous call
  shared[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  double t = 0.0;
  for (int i = 0; i < kBnRows; ++i) t += shared[i][threadIdx.x];
  return t;
}

__global__ void bn_forward_kernel(const float* x, const float* w, const float* b, float* out, float* mean,
                                  float* var, int64_t rows, int64_t cols, double eps) {
  __shared__ double shared[kBnRows][kBnCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBnCols + threadIdx.x;
  const bool ok = c < cols;
  double s = 0.0;
  if (ok)
    for (int64_t r = threadIdx.y; r < rows; r += kBnRows) s += x[r * cols + c];
  s = bn_column_total(s, shared);
  const float m = rows ? static_cast<float>(s / static_cast<double>(rows)) : 0.0f;
  double q = 0.0;
  if (ok)
    for (int64_t r = threadIdx.y; r < rows; r += kBnRows) {
      const float d = x[r * cols + c] - m;
      q += static_cast<double>(d * d);
    }
  q = bn_column_total(q, shared);
  if (!ok) return;
  const float v = rows ? static_cast<float>(q / static_cast<double>(rows)) : 0.0f;
  if (threadIdx.y == 0) {
    mean[c] = m;
    var[c] = v;
  }
  const float sc = static_cast<float>(static_cast<double>(w[c]) / sqrt(static_cast<double>(v) + eps));
  const float bc = b[c];
  for (int64_t r = threadIdx.y; r < rows; r += kBnRows) out[r * cols + c] = (x[r * cols + c] - m) * sc + bc;
}

__global__ void bn_backward_kernel(const float* x, const float* g, const float* w, const float* mean,
                                   const float* var, float* dx, float* dw, float* db, int64_t rows, int64_t cols,
                                   double eps) {
  __shared__ double shared[kBnRows][kBnCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBnCols + threadIdx.x;
  const bool ok = c < cols;
  const float m = ok ? mean[c] : 0.0f;
  double sg = 0.0, sgx = 0.0;
  if (ok)
    for (int64_t r = threadIdx.y; r < rows; r += kBnRows) {
      const float gr = g[r * cols + c];
      sg += gr;
      sgx += static_cast<double>(gr * (x[r * cols + c] - m));
    }
  sg = bn_column_total(sg, shared);
  sgx = bn_column_total(sgx, shared);
  if (!ok) return;
  const double inv = 1.0 / sqrt(static_cast<double>(var[c]) + eps), k = static_cast<double>(w[c]) * inv;
  const double dwc = sgx * inv, n = static_cast<double>(rows > 0 ? rows : 1);
  if (threadIdx.y == 0) {
    db[c] = static_cast<float>(sg);
    dw[c] = static_cast<float>(dwc);
  }
  const float kf = static_cast<float>(k), gm = static_cast<float>(sg / n), cf = static_cast<float>(inv * dwc / n);
  for (int64_t r = threadIdx.y; r < rows; r += kBnRows) {
    const int64_t e = r * cols + c;
    dx[e] = kf * ((g[e] - gm) - (x[e] - m) * cf);
  }
}

static void check_bn(const char* fn, int64_t rows, int64_t cols, std::initializer_list<const CudaArray*> full,
                     std::initializer_list<const CudaArray*> vecs) {
  if (rows < 0 || cols < 0)
    throw py::value_error(std::string(fn) + ": bad sizes (" + std::to_string(rows) + ", " + std::to_string(cols) +
                          ")");
  const int64_t n = checked_mul(fn, rows, cols);
  bool ok = true;
  for (const CudaArray* a : full) ok = ok && static_cast<int64_t>(a->size) >= n;
  for (const CudaArray* v : vecs) ok = ok && static_cast<int64_t>(v->size) >= cols;
  if (!ok)
    throw py::value_error(std::string(fn) + ": buffers do not fit (" + std::to_string(rows) + ", " +
                          std::to_string(cols) + ") and (" + std::to_string(cols) + ",)");
}

// x (rows, cols) compact, w, b (cols,): mean, var (cols,) get the column mean and biased
// variance (two passes), out = (x - mean) * w / sqrt(var + eps) + b.
static void bn_forward(const CudaArray& x, const CudaArray& w, const CudaArray& b, CudaArray& out, CudaArray& mean,
                       CudaArray& var, int64_t rows, int64_t cols, double eps) {
  check_bn("bn_forward", rows, cols, {&x, &out}, {&w, &b, &mean, &var});
  if (cols == 0) return;
  bn_forward_kernel<<<static_cast<unsigned>(ceil_div(cols, kBnCols)), dim3(kBnCols, kBnRows)>>>(
      x.ptr, w.ptr, b.ptr, out.ptr, mean.ptr, var.ptr, rows, cols, eps);
  CHECK_LAUNCH("bn_forward_kernel");
}

// The adjoint of bn_forward for g (rows, cols): db = sum(g), dw = inv sum(g (x - mean)),
// dx = k ((g - gm) - (x - mean) c) (k = w inv, gm = db / rows, c = inv dw / rows).
static void bn_backward(const CudaArray& x, const CudaArray& g, const CudaArray& w, const CudaArray& mean,
                        const CudaArray& var, CudaArray& dx, CudaArray& dw, CudaArray& db, int64_t rows, int64_t cols,
                        double eps) {
  check_bn("bn_backward", rows, cols, {&x, &g, &dx}, {&w, &mean, &var, &dw, &db});
  if (cols == 0) return;
  bn_backward_kernel<<<static_cast<unsigned>(ceil_div(cols, kBnCols)), dim3(kBnCols, kBnRows)>>>(
      x.ptr, g.ptr, w.ptr, mean.ptr, var.ptr, dx.ptr, dw.ptr, db.ptr, rows, cols, eps);
  CHECK_LAUNCH("bn_backward_kernel");
}

struct AdamParams {
  float b1, b2, ob1, ob2, wd, decay, c1, c2, lr, eps;
};

__global__ void adam_step_kernel(const float* w, const float* g, float* m, float* v, float* out, int64_t n,
                                 AdamParams q) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    const float gw = g[j] + q.wd * w[j];
    const float mj = q.b1 * m[j] + q.ob1 * gw;
    const float vj = q.b2 * v[j] + q.ob2 * (gw * gw);
    m[j] = mj;
    v[j] = vj;
    out[j] = q.decay * w[j] - q.lr * ((mj / q.c1) / (sqrtf(vj / q.c2) + q.eps));
  }
}

__global__ void sgd_step_kernel(const float* w, const float* g, float* u, float* out, int64_t n, float mu, float omu,
                                float wd, float lr) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += stride) {
    float d = g[j] + wd * w[j];
    if (u != nullptr) {
      d = mu * u[j] + omu * d;
      u[j] = d;
    }
    out[j] = w[j] - lr * d;
  }
}

static void check_step(const char* fn, const CudaArray& out, std::initializer_list<const CudaArray*> bufs) {
  for (const CudaArray* b : bufs)
    if (b->size != out.size)
      throw std::invalid_argument(std::string(fn) + ": a buffer has " + std::to_string(b->size) +
                                  " elements, out has " + std::to_string(out.size));
}

// All compact, same size; m, v in place: g' = g + wd w, m = b1 m + (1-b1) g',
// v = b2 v + (1-b2) g'^2, out = decay w - lr (m/c1) / (sqrt(v/c2) + eps).
static void adam_step(const CudaArray& w, const CudaArray& g, CudaArray& m, CudaArray& v, CudaArray& out, double lr,
                      double beta1, double beta2, double eps, double weight_decay, double decay, double bias_c1,
                      double bias_c2) {
  check_step("adam_step", out, {&w, &g, &m, &v});
  if (out.size == 0) return;
  const AdamParams q{float(beta1), float(beta2), float(1 - beta1), float(1 - beta2), float(weight_decay),
                     float(decay), float(bias_c1), float(bias_c2), float(lr), float(eps)};
  const int64_t n = static_cast<int64_t>(out.size);
  adam_step_kernel<<<grid_for(n), kThreads>>>(w.ptr, g.ptr, m.ptr, v.ptr, out.ptr, n, q);
  CHECK_LAUNCH("adam_step_kernel");
}

// g' = g + wd w; with momentum u = mu u + (1-mu) g' (in place), out = w - lr u; else out = w - lr g'.
static void sgd_step(const CudaArray& w, const CudaArray& g, CudaArray& u, CudaArray& out, double lr, double momentum,
                     double weight_decay) {
  const bool use_u = momentum != 0.0;
  if (use_u)
    check_step("sgd_step", out, {&w, &g, &u});
  else
    check_step("sgd_step", out, {&w, &g});
  if (out.size == 0) return;
  const int64_t n = static_cast<int64_t>(out.size);
  sgd_step_kernel<<<grid_for(n), kThreads>>>(w.ptr, g.ptr, use_u ? u.ptr : nullptr, out.ptr, n, float(momentum),
                                             float(1 - momentum), float(weight_decay), float(lr));
  CHECK_LAUNCH("sgd_step_kernel");
}

}  // namespace cuda
}  // namespace needle

// ---------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------

PYBIND11_MODULE(ndarray_backend_cuda, m) {
  namespace nc = needle::cuda;
  using nc::CudaArray;

  m.doc() = "needle CUDA backend: flat float32 device buffers and the kernels NDArray dispatches to";
  m.attr("__device_name__") = "cuda";
  m.attr("__tile_size__") = 4;

  // Device out-of-memory surfaces as MemoryError, like host allocation failures.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const nc::DeviceOutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  py::class_<CudaArray>(m, "Array")
      .def(py::init<int64_t>(), py::arg("size"))
      .def_property_readonly("size", [](const CudaArray& a) { return a.size; })
      .def("ptr", &CudaArray::ptr_as_int);

  m.def("to_numpy", &nc::to_numpy, py::arg("a"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("from_numpy", &nc::from_numpy, py::arg("a"), py::arg("out"));
  m.def("fill", [](CudaArray& out, float val) { nc::fill_range(out.ptr, out.size, val); },
        py::arg("out"), py::arg("val"));

  m.def("compact", &nc::compact, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("ewise_setitem", &nc::ewise_setitem, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("scalar_setitem", &nc::scalar_setitem, py::arg("size"), py::arg("val"), py::arg("out"), py::arg("shape"), py::arg("strides"), py::arg("offset"));

#define NEEDLE_BIND_BINARY(name, Op)                                                          \
  m.def("ewise_" #name, [](const CudaArray& a, const CudaArray& b, CudaArray& out) {          \
    nc::ewise_binary<nc::Op>("ewise_" #name, a, b, out);                                      \
  }, py::arg("a"), py::arg("b"), py::arg("out"));                                             \
  m.def("scalar_" #name, [](const CudaArray& a, float val, CudaArray& out) {                  \
    nc::scalar_binary<nc::Op>("scalar_" #name, a, val, out);                                  \
  }, py::arg("a"), py::arg("val"), py::arg("out"));
#define NEEDLE_BIND_UNARY(name, Op)                                                           \
  m.def("ewise_" #name, [](const CudaArray& a, CudaArray& out) {                              \
    nc::ewise_unary<nc::Op>("ewise_" #name, a, out);                                          \
  }, py::arg("a"), py::arg("out"));

  NEEDLE_BIND_BINARY(add, AddOp)
  NEEDLE_BIND_BINARY(mul, MulOp)
  NEEDLE_BIND_BINARY(div, DivOp)
  NEEDLE_BIND_BINARY(power, PowerOp)
  NEEDLE_BIND_BINARY(maximum, MaximumOp)
  NEEDLE_BIND_BINARY(eq, EqOp)
  NEEDLE_BIND_BINARY(ge, GeOp)
  NEEDLE_BIND_UNARY(log, LogOp)
  NEEDLE_BIND_UNARY(exp, ExpOp)
  NEEDLE_BIND_UNARY(tanh, TanhOp)
#undef NEEDLE_BIND_BINARY
#undef NEEDLE_BIND_UNARY

  m.def("reduce_max", [](const CudaArray& a, CudaArray& out, int64_t reduce_size) {
    nc::reduce<nc::MaxReduce>("reduce_max", a, out, reduce_size);
  }, py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("reduce_sum", [](const CudaArray& a, CudaArray& out, int64_t reduce_size) {
    nc::reduce<nc::SumReduce>("reduce_sum", a, out, reduce_size);
  }, py::arg("a"), py::arg("out"), py::arg("reduce_size"));

  m.def("reduce_sum_middle", &nc::reduce_sum_middle, py::arg("a"), py::arg("out"), py::arg("outer"),
        py::arg("reduce"), py::arg("inner"));
  m.def("ewise_rows", &nc::ewise_rows, py::arg("op"), py::arg("full"), py::arg("row"), py::arg("row_offset"),
        py::arg("out"), py::arg("cols"), py::arg("swap"));
  m.def("gather_rows", &nc::gather_rows, py::arg("a"), py::arg("idx"), py::arg("out"), py::arg("num_rows"),
        py::arg("dim"));
  m.def("scatter_add_rows", &nc::scatter_add_rows, py::arg("a"), py::arg("idx"), py::arg("out"), py::arg("num_rows"),
        py::arg("dim"));
  m.def("softmax_xent", &nc::softmax_xent, py::arg("a"), py::arg("labels"), py::arg("lse"), py::arg("loss"),
        py::arg("n"), py::arg("k"));
  m.def("softmax_xent_grad", &nc::softmax_xent_grad, py::arg("a"), py::arg("labels"), py::arg("lse"), py::arg("g"),
        py::arg("out"), py::arg("n"), py::arg("k"), py::arg("scale"));
  m.def("bn_forward", &nc::bn_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("out"), py::arg("mean"),
        py::arg("var"), py::arg("rows"), py::arg("cols"), py::arg("eps"));
  m.def("bn_backward", &nc::bn_backward, py::arg("x"), py::arg("g"), py::arg("w"), py::arg("mean"), py::arg("var"),
        py::arg("dx"), py::arg("dw"), py::arg("db"), py::arg("rows"), py::arg("cols"), py::arg("eps"));
  m.def("adam_step", &nc::adam_step, py::arg("w"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("out"),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("decay"), py::arg("bias_c1"), py::arg("bias_c2"));
  m.def("sgd_step", &nc::sgd_step, py::arg("w"), py::arg("g"), py::arg("u"), py::arg("out"), py::arg("lr"),
        py::arg("momentum"), py::arg("weight_decay"));
  m.def("matmul", &nc::matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("p"));
  m.def("bmm", [](const CudaArray& a, const CudaArray& b, CudaArray& out, int64_t batch, int64_t mm,
                  int64_t n, int64_t p, const std::vector<int64_t>& a_strides, int64_t a_offset,
                  const std::vector<int64_t>& b_strides, int64_t b_offset) {
    nc::bmm_with(nc::g_matmul_kernel, "bmm", a, b, out, batch, mm, n, p, a_strides, a_offset, b_strides, b_offset);
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"), py::arg("n"), py::arg("p"),
     py::arg("a_strides"), py::arg("a_offset"), py::arg("b_strides"), py::arg("b_offset"));
  m.def("bmm_naive", [](const CudaArray& a, const CudaArray& b, CudaArray& out, int64_t batch, int64_t mm,
                        int64_t n, int64_t p, const std::vector<int64_t>& a_strides, int64_t a_offset,
                        const std::vector<int64_t>& b_strides, int64_t b_offset) {
    nc::bmm_with(0, "bmm_naive", a, b, out, batch, mm, n, p, a_strides, a_offset, b_strides, b_offset);
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"), py::arg("n"), py::arg("p"),
     py::arg("a_strides"), py::arg("a_offset"), py::arg("b_strides"), py::arg("b_offset"));

  m.def("set_matmul_kernel", &nc::set_matmul_kernel, py::arg("k"),
        "Select the kernel bmm/matmul use (see matmul_kernel_names()).");
  m.def("get_matmul_kernel", []() { return nc::g_matmul_kernel; });
  m.def("matmul_kernel_names", []() {
    std::vector<std::string> names(std::begin(nc::kMatmulKernelNames), std::end(nc::kMatmulKernelNames));
    return names;
  });

  m.def("memory_stats", []() {
    const auto s = nc::DeviceAllocator::instance().stats();
    py::dict d;
    d["allocated"] = s.allocated;
    d["cached"] = s.cached;
    d["peak"] = s.peak;
    return d;
  }, "Bytes in live arrays, bytes held in the free cache, and peak live bytes (block sizes).");
  m.def("empty_cache", []() { nc::DeviceAllocator::instance().empty_cache(); },
        "Return every cached block to the driver.");
  m.def("device_count", &nc::device_count);
  m.def("device_name", &nc::device_name);
}
