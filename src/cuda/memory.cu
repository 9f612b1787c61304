// Error checks, the caching allocator, typed Arrays and device queries.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "cuda/memory.cuh"

namespace needle {
namespace cuda {

static bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("NEEDLE_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_after_launch()) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA kernel ") + kernel + " failed at " + file + ":" +
                             std::to_string(line) + ": " + cudaGetErrorString(err));
  }
}

size_t block_bytes_for(size_t bytes) {
  constexpr size_t kSmallGranule = 512;
  constexpr size_t kSmallLimit = size_t(1) << 20;
  if (bytes <= kSmallLimit) return round_up(std::max<size_t>(bytes, 1), kSmallGranule);
  const int top = 63 - __builtin_clzll(static_cast<unsigned long long>(bytes));
  const size_t step = (size_t(1) << top) / 4;
  return round_up(bytes, step);
}

DeviceAllocator& DeviceAllocator::instance() {
  static DeviceAllocator* inst = new DeviceAllocator();
  return *inst;
}

void* DeviceAllocator::allocate(size_t block) {
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

void DeviceAllocator::release(void* ptr, size_t block) noexcept {
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

void DeviceAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cache_locked();
}

DeviceAllocator::Stats DeviceAllocator::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return Stats{allocated_, cached_, peak_};
}

// Each block leaves the list before it is freed, so a failing cudaFree (reported as
// an exception) never leaves a freed pointer behind to be handed out or freed again.
void DeviceAllocator::release_cache_locked() {
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

Array::Array(int64_t n, DType dt) : dtype(dt) {
  size = n;
  if (size > 0) {
    block = block_bytes_for(nbytes());
    ptr = DeviceAllocator::instance().allocate(block);
  }
}

Array::~Array() {
  if (ptr != nullptr && block != 0) DeviceAllocator::instance().release(ptr, block);
}

DeviceFlag::DeviceFlag() : buf(1) { CUDA_CHECK(cudaMemsetAsync(buf.ptr, 0, sizeof(int32_t), 0)); }

bool DeviceFlag::read() const {
  int32_t v = 0;
  CUDA_CHECK(cudaMemcpy(&v, buf.ptr, sizeof(int32_t), cudaMemcpyDeviceToHost));
  return v != 0;
}

int sm_count() {
  static int count = 0;
  if (count == 0) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
  }
  return count;
}

int device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string device_name() {
  if (device_count() == 0) throw std::runtime_error("device_name: no CUDA device is visible");
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return std::string(prop.name);
}

unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = ceil_div(std::max<int64_t>(work, 1), threads);
  const int64_t cap = static_cast<int64_t>(sm_count()) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap)));
}

}  // namespace cuda
}  // namespace needle
