// Buffers and the block cache behind them (see buffer.h).
#include "buffer.h"

#include "common/checks.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>

namespace needle {
namespace cpu {

namespace {

constexpr size_t kAlignment = 256;

// Large buffers come from a small cache of freed blocks: a training step
// allocates the same shapes every iteration, and a fresh multi-megabyte
// buffer costs a page fault per 4 KiB on first touch (a 64 MiB ewise_add ran
// at half speed into a fresh output; a conv backward's 576 KiB GEMM output took
// 2-4x its 0.2 ms product in faults, since malloc serves such sizes from fresh
// mmaps). Blocks from kCachedBytes up are cached; fresh blocks from kLargeBytes
// up are 2 MiB aligned and marked for transparent huge pages. The cache holds
// at most kCacheBytes.
constexpr size_t kCachedBytes = size_t(64) << 10;
constexpr size_t kLargeBytes = size_t(1) << 20;
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kCacheBytes = size_t(512) << 20;

class BlockCache {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // leaked: outlives every array
    return *cache;
  }
  // bytes is already rounded to a multiple of kAlignment.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        return p;
      }
    }
    const size_t align = bytes < kLargeBytes ? kAlignment : kHugePage;
    const size_t total = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, total);
    if (p == nullptr) {
      trim();
      p = std::aligned_alloc(align, total);
      if (p == nullptr) return nullptr;
    }
#ifdef MADV_HUGEPAGE
    if (align == kHugePage) madvise(p, total, MADV_HUGEPAGE);
#endif
    return p;
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= kCacheBytes) {
        free_[bytes].push_back(p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }
  void trim() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_)
      for (void* p : kv.second) std::free(p);
    free_.clear();
    cached_ = 0;
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

}  // namespace

Buffer::Buffer(int64_t size, DType dtype) : size(size), dtype(dtype) {
  check_array_size(size, dtype_size(dtype));
  const size_t item = size_t(dtype_size(dtype));
  bytes = std::max<size_t>(kAlignment, (size_t(size) * item + kAlignment - 1) / kAlignment * kAlignment);
  ptr = bytes >= kCachedBytes ? BlockCache::get().take(bytes) : std::aligned_alloc(kAlignment, bytes);
  if (ptr == nullptr) throw std::bad_alloc();
}

Buffer::Buffer(void* external, int64_t size, DType dtype)
    : ptr(external), size(size), dtype(dtype), bytes(0), owned(false) {
  check_array_size(size, dtype_size(dtype));
}

Buffer::~Buffer() {
  if (!owned) return;
  if (bytes >= kCachedBytes) {
    BlockCache::get().give(ptr, bytes);
  } else {
    std::free(ptr);
  }
}

}  // namespace cpu
}  // namespace needle
