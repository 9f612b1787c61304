// The Python object of a CPU Buffer (`ndarray_backend_cpu.Array`), a small type of the
// CPython API rather than a pybind11 class, and the pybind11 caster that hands kernels
// its Buffer.
//
// Every op result allocates one: a pybind11 instance costs ~130 ns to create and free
// (instance registry insert and erase, holder bookkeeping), as much as a small kernel;
// this type costs a plain object allocation. Kernels still bind through pybind11 and
// take `const Buffer&` / `Buffer*`; the caster below checks the exact type and reads the
// pointer.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "buffer.h"

namespace needle {
namespace cpu {

struct PyArray {
  PyObject_HEAD
  Buffer* buffer;     // owned
  int64_t size;       // buffer->size, read as Array.size without a call
  PyObject* weakrefs;  // DLPack imports tie the foreign owner's release to this object
};

PyTypeObject* array_type();

// The buffer of an Array object, or nullptr for anything else.
inline Buffer* buffer_of(PyObject* o) {
  return Py_TYPE(o) == array_type() ? reinterpret_cast<PyArray*>(o)->buffer : nullptr;
}

// A new Array object owning ``buffer`` (a new reference).
pybind11::object wrap_buffer(std::unique_ptr<Buffer> buffer);

// Adds Array and the allocation function new_array(size, dtype) to the module.
void add_array_type(pybind11::module_& m);

}  // namespace cpu
}  // namespace needle

namespace pybind11 {
namespace detail {

template <>
struct type_caster<needle::cpu::Buffer> {
  needle::cpu::Buffer* value = nullptr;
  static constexpr auto name = const_name("Array");

  bool load(handle src, bool) {
    value = needle::cpu::buffer_of(src.ptr());
    return value != nullptr;
  }

  template <typename T>
  using cast_op_type = pybind11::detail::cast_op_type<T>;
  operator needle::cpu::Buffer*() { return value; }
  operator needle::cpu::Buffer&() { return *value; }
};

}  // namespace detail
}  // namespace pybind11
