// The Array type of the CPU module (see py_array.h).
#include "py_array.h"

#include <structmember.h>

#include <new>
#include <stdexcept>

#include "common/py_dtypes.h"

namespace py = pybind11;

namespace needle {
namespace cpu {

namespace {

// The Python exception for the C++ exception being handled, as pybind11 maps them
// for the bound functions, so that Array(-1) is the ValueError it always was.
void set_error_from_current_exception() {
  try {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::overflow_error& e) {
    PyErr_SetString(PyExc_OverflowError, e.what());
  } catch (const std::out_of_range& e) {
    PyErr_SetString(PyExc_IndexError, e.what());
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
}

// An element count: a Python int or anything with __index__ (numpy integers).
bool read_size(PyObject* o, int64_t* size) {
  if (!PyLong_Check(o) && !PyIndex_Check(o)) {
    PyErr_Format(PyExc_TypeError, "Array: size must be an integer, got %s", Py_TYPE(o)->tp_name);
    return false;
  }
  const long long v = PyLong_AsLongLong(o);  // calls __index__ for non-ints
  if (v == -1 && PyErr_Occurred()) return false;
  *size = v;
  return true;
}

PyObject* make(int64_t size, PyObject* dtype) {
  try {
    return wrap_buffer(std::make_unique<Buffer>(size, dtype_arg(dtype))).release().ptr();
  } catch (...) {
    set_error_from_current_exception();
    return nullptr;
  }
}

PyObject* array_new(PyTypeObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"size", "dtype", nullptr};
  PyObject* size_obj = nullptr;
  PyObject* dtype = dtype_str(DType::kFloat32).ptr();
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:Array", const_cast<char**>(keywords), &size_obj, &dtype))
    return nullptr;
  int64_t size;
  if (!read_size(size_obj, &size)) return nullptr;
  return make(size, dtype);
}

void array_dealloc(PyObject* self) {
  auto* a = reinterpret_cast<PyArray*>(self);
  if (a->weakrefs != nullptr) PyObject_ClearWeakRefs(self);
  delete a->buffer;
  Py_TYPE(self)->tp_free(self);
}

PyObject* array_ptr(PyObject* self, PyObject*) {
  return PyLong_FromSize_t(reinterpret_cast<PyArray*>(self)->buffer->ptr_as_int());
}

PyObject* array_dtype(PyObject* self, void*) {
  return py::reinterpret_borrow<py::object>(dtype_str(reinterpret_cast<PyArray*>(self)->buffer->dtype))
      .release()
      .ptr();
}

PyObject* array_itemsize(PyObject* self, void*) {
  return PyLong_FromLong(reinterpret_cast<PyArray*>(self)->buffer->itemsize());
}

PyMethodDef array_methods[] = {
    {"ptr", array_ptr, METH_NOARGS, "The buffer's address as an int."},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef array_members[] = {
    {"size", T_LONGLONG, offsetof(PyArray, size), READONLY, "Number of elements."},
    {nullptr, 0, 0, 0, nullptr},
};

PyGetSetDef array_getset[] = {
    {"dtype", array_dtype, nullptr, "The dtype name.", nullptr},
    {"itemsize", array_itemsize, nullptr, "Bytes per element.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyTypeObject make_type() {
  PyTypeObject t = {PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "needle.backend_ndarray.ndarray_backend_cpu.Array";
  t.tp_basicsize = sizeof(PyArray);
  t.tp_dealloc = array_dealloc;
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  t.tp_doc = "A typed, 256-byte aligned CPU buffer: Array(size, dtype='float32').";
  t.tp_weaklistoffset = offsetof(PyArray, weakrefs);
  t.tp_methods = array_methods;
  t.tp_members = array_members;
  t.tp_getset = array_getset;
  t.tp_new = array_new;
  return t;
}

PyTypeObject array_type_object = make_type();

// new_array(size, dtype): Array(size, dtype) without the class call's argument parsing.
PyObject* new_array(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_Format(PyExc_TypeError, "new_array: takes 2 arguments (size, dtype), got %zd", nargs);
    return nullptr;
  }
  int64_t size;
  if (!read_size(args[0], &size)) return nullptr;
  return make(size, args[1]);
}

PyMethodDef new_array_def = {"new_array", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(new_array)),
                             METH_FASTCALL, "new_array(size, dtype): a new Array (same as Array(size, dtype))."};

}  // namespace

PyTypeObject* array_type() { return &array_type_object; }

py::object wrap_buffer(std::unique_ptr<Buffer> buffer) {
  PyObject* o = array_type_object.tp_alloc(&array_type_object, 0);
  if (o == nullptr) throw py::error_already_set();
  auto* a = reinterpret_cast<PyArray*>(o);
  a->size = buffer->size;
  a->buffer = buffer.release();
  a->weakrefs = nullptr;
  return py::reinterpret_steal<py::object>(o);
}

void add_array_type(py::module_& m) {
  if (PyType_Ready(&array_type_object) < 0) throw py::error_already_set();
  m.attr("Array") = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&array_type_object));
  PyObject* fn = PyCFunction_NewEx(&new_array_def, nullptr, m.attr("__name__").ptr());
  if (fn == nullptr) throw py::error_already_set();
  m.attr("new_array") = py::reinterpret_steal<py::object>(fn);
}

}  // namespace cpu
}  // namespace needle
