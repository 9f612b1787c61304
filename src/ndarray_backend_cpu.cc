// CPU backend of needle's NDArray: the Python bindings. The kernels live in
// src/cpu/ by family (kernels.h lists them); the function table and its dtype
// rules are those of python/needle/backend_ndarray/ndarray_backend_numpy.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "common/py_dtypes.h"
#include "common/scalar_caster.h"
#include "common/shape_caster.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/py_array.h"
#include "cpu/threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace needle;
using namespace needle::cpu;

namespace {

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: need n >= 1, got " + std::to_string(n));
  set_pool_threads(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

py::array ToNumpy(const Buffer& a, Shape shape, Shape strides, int64_t offset) {
  check_view("to_numpy", shape, strides, offset, a.size);
  py::array result(numpy_dtype(a.dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
  const int64_t size = shape_size(shape);
  if (size == 0) return result;
  Buffer tmp(size, a.dtype);
  Compact(a, &tmp, shape, strides, offset);
  std::memcpy(result.mutable_data(), tmp.ptr, size_t(size) * size_t(a.itemsize()));
  return result;
}

void FromNumpy(py::array a, Buffer* out) {
  // a is a numpy array of out's dtype with out.size elements (any layout).
  check_from_numpy(a.dtype().equal(numpy_dtype(out->dtype)), py::str(a.dtype()), out->dtype, a.size(), out->size);
  py::array c = py::array::ensure(a, py::array::c_style);
  std::memcpy(out->ptr, c.data(), size_t(out->size) * size_t(out->itemsize()));
}

}  // namespace

PYBIND11_MODULE(ndarray_backend_cpu, m) {
  m.attr("__device_name__") = "cpu";
  m.attr("__tile_size__") = 8;

  if (const char* env = std::getenv("NEEDLE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) set_num_threads(n);
  }

  add_array_type(m);  // Array and new_array(size, dtype): cpu/py_array.h
  m.def("wrap_external", [](size_t address, int64_t size, py::object dtype) {
    return wrap_buffer(std::make_unique<Buffer>(reinterpret_cast<void*>(address), size, dtype_arg(dtype)));
  }, py::arg("address"), py::arg("size"), py::arg("dtype"),
     "An Array over memory at `address` that the caller owns and keeps alive (DLPack import).");
  m.def("to_numpy", ToNumpy);
  m.def("from_numpy", FromNumpy);

  m.def("fill", Fill);
  m.def("astype", Astype);
  m.def("compact", Compact);
  m.def("ewise_setitem", EwiseSetitem);
  m.def("scalar_setitem", ScalarSetitem);

  using B = const Buffer&;
  m.def("ewise_add", [](B a, B b, Buffer* o) { EwiseBinary("ewise_add", BinaryOp::kAdd, a, b, o); });
  m.def("scalar_add", [](B a, Scalar v, Buffer* o) { ScalarBinary("scalar_add", BinaryOp::kAdd, a, v, o); });
  m.def("ewise_mul", [](B a, B b, Buffer* o) { EwiseBinary("ewise_mul", BinaryOp::kMul, a, b, o); });
  m.def("scalar_mul", [](B a, Scalar v, Buffer* o) { ScalarBinary("scalar_mul", BinaryOp::kMul, a, v, o); });
  m.def("ewise_div", [](B a, B b, Buffer* o) { EwiseBinary("ewise_div", BinaryOp::kDiv, a, b, o); });
  m.def("scalar_div", [](B a, Scalar v, Buffer* o) { ScalarBinary("scalar_div", BinaryOp::kDiv, a, v, o); });
  m.def("ewise_power", [](B a, B b, Buffer* o) { EwiseBinary("ewise_power", BinaryOp::kPower, a, b, o); });
  m.def("scalar_power", [](B a, Scalar v, Buffer* o) { ScalarBinary("scalar_power", BinaryOp::kPower, a, v, o); });
  m.def("ewise_maximum", [](B a, B b, Buffer* o) { EwiseBinary("ewise_maximum", BinaryOp::kMaximum, a, b, o); });
  m.def("scalar_maximum", [](B a, Scalar v, Buffer* o) { ScalarBinary("scalar_maximum", BinaryOp::kMaximum, a, v, o); });
  m.def("ewise_relu_grad", [](B g, B x, Buffer* o) { EwiseBinary("ewise_relu_grad", BinaryOp::kReluGrad, g, x, o); });

  m.def("ewise_eq", [](B a, B b, Buffer* o) { EwiseCompare("ewise_eq", CompareOp::kEq, a, b, o); });
  m.def("scalar_eq", [](B a, Scalar v, Buffer* o) { ScalarCompare("scalar_eq", CompareOp::kEq, a, v, o); });
  m.def("ewise_ne", [](B a, B b, Buffer* o) { EwiseCompare("ewise_ne", CompareOp::kNe, a, b, o); });
  m.def("scalar_ne", [](B a, Scalar v, Buffer* o) { ScalarCompare("scalar_ne", CompareOp::kNe, a, v, o); });
  m.def("ewise_lt", [](B a, B b, Buffer* o) { EwiseCompare("ewise_lt", CompareOp::kLt, a, b, o); });
  m.def("scalar_lt", [](B a, Scalar v, Buffer* o) { ScalarCompare("scalar_lt", CompareOp::kLt, a, v, o); });
  m.def("ewise_le", [](B a, B b, Buffer* o) { EwiseCompare("ewise_le", CompareOp::kLe, a, b, o); });
  m.def("scalar_le", [](B a, Scalar v, Buffer* o) { ScalarCompare("scalar_le", CompareOp::kLe, a, v, o); });
  m.def("ewise_gt", [](B a, B b, Buffer* o) { EwiseCompare("ewise_gt", CompareOp::kGt, a, b, o); });
  m.def("scalar_gt", [](B a, Scalar v, Buffer* o) { ScalarCompare("scalar_gt", CompareOp::kGt, a, v, o); });
  m.def("ewise_ge", [](B a, B b, Buffer* o) { EwiseCompare("ewise_ge", CompareOp::kGe, a, b, o); });
  m.def("scalar_ge", [](B a, Scalar v, Buffer* o) { ScalarCompare("scalar_ge", CompareOp::kGe, a, v, o); });

  m.def("ewise_log", [](B a, Buffer* o) { EwiseUnary("ewise_log", UnaryOp::kLog, a, o); });
  m.def("ewise_exp", [](B a, Buffer* o) { EwiseUnary("ewise_exp", UnaryOp::kExp, a, o); });
  m.def("ewise_tanh", [](B a, Buffer* o) { EwiseUnary("ewise_tanh", UnaryOp::kTanh, a, o); });
  m.def("ewise_math_reference", EwiseMathReference, "The libm loop behind ewise_<op> (op: exp, log, tanh).");
  m.def("ewise_rows", EwiseRows);

  m.def("matmul", Matmul);
  m.def("matmul_tiled", MatmulTiled);
  m.def("bmm", Bmm);
  m.def("bmm_naive", BmmNaive);
  m.def("conv2d", Conv2d);

  m.def("reduce_max", ReduceMax);
  m.def("reduce_sum", ReduceSum);
  m.def("reduce_sum_middle", ReduceSumMiddle);

  m.def("gather_rows", GatherRows);
  m.def("scatter_add_rows", ScatterAddRows);
  m.def("softmax_xent", SoftmaxXent);
  m.def("softmax_xent_grad", SoftmaxXentGrad);
  m.def("bn_forward", BnForward);
  m.def("bn_backward", BnBackward);
  m.def("adam_step", AdamStep);
  m.def("sgd_step", SgdStep);

  m.def("set_num_threads", set_num_threads, "Threads used by the kernels (default: NEEDLE_NUM_THREADS or all cores).");
  m.def("get_num_threads", pool_threads);
  m.def("sgemm_kernel_name", sgemm_kernel_name);
}
