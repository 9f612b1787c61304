// Typed flat buffers of the CPU backend (Python's `Array`): 256-byte aligned,
// large ones recycled through a block cache.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtypes.h"

namespace needle {
namespace cpu {

struct Buffer {
  Buffer(int64_t size, DType dtype);
  // A view of memory someone else owns (an array imported through DLPack): never freed
  // here; the Python side keeps the owner alive for as long as this buffer lives.
  Buffer(void* external, int64_t size, DType dtype);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  template <typename T>
  T* data() const { return static_cast<T*>(ptr); }
  size_t ptr_as_int() const { return reinterpret_cast<size_t>(ptr); }
  int itemsize() const { return dtype_size(dtype); }

  void* ptr;
  int64_t size;  // elements
  DType dtype;
  size_t bytes;  // allocated, a multiple of the alignment; 0 for external memory
  bool owned = true;
};

}  // namespace cpu
}  // namespace needle
