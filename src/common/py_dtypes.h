// Dtypes at the Python boundary, shared by both modules' bindings: the interned
// dtype names (`Array.dtype` returns these objects and `Array(size, dtype)`
// recognises them by identity, so the per-op dtype traffic costs no string work)
// and the numpy dtype of each needle dtype (bfloat16 is ml_dtypes' type).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "checks.h"

namespace needle {

inline pybind11::handle dtype_str(DType dt) {
  static PyObject* names[kNumDTypes] = {};
  PyObject*& s = names[static_cast<int>(dt)];
  if (s == nullptr) s = PyUnicode_InternFromString(dtype_name(dt));
  return s;
}

// A dtype argument: an interned name (the common case), else any str naming a dtype.
inline DType dtype_arg(pybind11::handle name) {
  for (int i = 0; i < kNumDTypes; ++i)
    if (name.ptr() == dtype_str(static_cast<DType>(i)).ptr()) return static_cast<DType>(i);
  if (!pybind11::isinstance<pybind11::str>(name)) throw pybind11::type_error("Array: dtype must be a dtype name (str)");
  return parse_dtype("Array", name.cast<std::string>());
}

inline pybind11::dtype numpy_dtype(DType dt) {
  if (dt == DType::kBFloat16) {
    pybind11::module_ ml;
    try {
      ml = pybind11::module_::import("ml_dtypes");
    } catch (pybind11::error_already_set&) {
      throw std::runtime_error("bfloat16 arrays need the ml_dtypes package to convert to numpy (pip install ml_dtypes)");
    }
    return pybind11::dtype::from_args(ml.attr("bfloat16"));
  }
  return pybind11::dtype(std::string(dtype_name(dt)));
}

}  // namespace needle
