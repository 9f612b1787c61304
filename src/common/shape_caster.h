// pybind11 conversion of a Python list or tuple of ints into a Shape (std::vector<int64_t>)
// in one pass over the items. Shapes and strides cross into nearly every kernel call
// (compact, setitem, bmm, reductions); pybind11's generic list caster builds a caster per
// item and took ~80 ns per list of three, as much as a small kernel. Anything else
// (numpy integers, other sequences) goes through the generic caster, with its errors.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

namespace pybind11 {
namespace detail {

template <>
struct type_caster<std::vector<int64_t>> {
  using Generic = list_caster<std::vector<int64_t>, int64_t>;
  PYBIND11_TYPE_CASTER(std::vector<int64_t>, const_name("list[int]"));

  bool load(handle src, bool convert) {
    PyObject* o = src.ptr();
    if (PyList_Check(o) || PyTuple_Check(o)) {
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
      PyObject** items = PySequence_Fast_ITEMS(o);
      std::vector<int64_t> out(static_cast<size_t>(n));
      bool plain = true;
      for (Py_ssize_t i = 0; i < n && plain; ++i) {
        PyObject* item = items[i];
        if (!PyLong_CheckExact(item)) {
          plain = false;
          break;
        }
        const long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) {  // beyond int64: the generic caster's error
          PyErr_Clear();
          plain = false;
          break;
        }
        out[static_cast<size_t>(i)] = v;
      }
      if (plain) {
        value = std::move(out);
        return true;
      }
    }
    Generic generic;
    if (!generic.load(src, convert)) return false;
    value = std::move(static_cast<std::vector<int64_t>&>(generic));
    return true;
  }

  template <typename V>
  static handle cast(V&& src, return_value_policy policy, handle parent) {
    return Generic::cast(std::forward<V>(src), policy, parent);
  }
};

}  // namespace detail
}  // namespace pybind11
