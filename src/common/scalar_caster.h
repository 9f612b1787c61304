// pybind11 conversion of a Python number into needle::Scalar (common/convert.h):
// Python ints (and bools, numpy integers) stay exact, floats and numpy floats
// become doubles. Both modules take every scalar argument through it, so
// int64 values beyond 2^53 and integers outside a narrow dtype convert as numpy
// converts them.
#pragma once
#include <pybind11/pybind11.h>

#include "convert.h"

namespace pybind11 {
namespace detail {

template <>
struct type_caster<needle::Scalar> {
  PYBIND11_TYPE_CASTER(needle::Scalar, const_name("float"));

  bool load(handle src, bool convert) {
    PyObject* o = src.ptr();
    if (PyFloat_Check(o)) {
      value = needle::Scalar{PyFloat_AS_DOUBLE(o), 0, false};
      return true;
    }
    if (PyLong_Check(o)) return load_int(o);
    if (!convert) return false;
    if (PyIndex_Check(o)) {  // numpy integers
      object idx = reinterpret_steal<object>(PyNumber_Index(o));
      if (idx) return load_int(idx.ptr());
      PyErr_Clear();
    }
    object f = reinterpret_steal<object>(PyNumber_Float(o));  // numpy floats and bools
    if (!f) {
      PyErr_Clear();
      return false;
    }
    value = needle::Scalar{PyFloat_AS_DOUBLE(f.ptr()), 0, false};
    return true;
  }

  static handle cast(const needle::Scalar& s, return_value_policy, handle) {
    return s.is_int ? PyLong_FromLongLong(s.i) : PyFloat_FromDouble(s.f);
  }

 private:
  bool load_int(PyObject* o) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) v = static_cast<long long>(PyLong_AsUnsignedLongLongMask(o));  // wraps modulo 2^64
    const double d = PyLong_AsDouble(o);
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    value = needle::Scalar{d, static_cast<int64_t>(v), true};
    return true;
  }
};

}  // namespace detail
}  // namespace pybind11
