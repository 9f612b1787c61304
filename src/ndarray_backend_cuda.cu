// ndarray_backend_cuda: the CUDA device module behind needle's NDArray. Bindings only:
// the table functions (host checks, then launchers) are in cuda/table.cu, the kernels
// under src/cuda/ one file per family (memory, strided, elementwise, reduce, matmul,
// rows, fused; launchers in cuda/kernels.cuh).
//
// Exports the function table of python/needle/backend_ndarray/ndarray_backend_numpy.py
// (same names, argument names and order, dtype rules), minus `matmul_tiled`, plus device
// helpers (memory_stats, empty_cache, device_count, device_name, matmul kernel
// selection). Buffers are flat and typed (`Array(size, dtype)`); shapes, strides and
// offsets are in elements and strides are signed (0 broadcasts, negative flips).
// Python scalars arrive as needle::Scalar (ints exact, common/scalar_caster.h) and are
// converted to the buffer's dtype as numpy converts them.
// No CUDA call happens at import time: the module loads on a machine without a GPU.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/py_dtypes.h"
#include "common/scalar_caster.h"
#include "common/shape_caster.h"
#include "cuda/table.cuh"

namespace py = pybind11;

using needle::Scalar;
using needle::Shape;
using needle::cuda::Array;
using needle::cuda::BinaryOp;
using needle::cuda::CompareOp;
using needle::cuda::UnaryOp;
namespace nc = needle::cuda;

namespace {

}  // namespace

PYBIND11_MODULE(ndarray_backend_cuda, m) {
  m.doc() = "needle CUDA backend: typed flat device buffers and the kernels NDArray dispatches to";
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

  py::class_<Array>(m, "Array")
      .def(py::init([](int64_t size, const py::object& dtype) { return nc::make_array(size, needle::dtype_arg(dtype)); }),
           py::arg("size"), py::arg("dtype") = "float32")
      .def_property_readonly("size", [](const Array& a) { return a.size; })
      .def_property_readonly("dtype", [](const Array& a) { return py::reinterpret_borrow<py::str>(needle::dtype_str(a.dtype)); })
      .def_property_readonly("itemsize", [](const Array& a) { return a.itemsize(); })
      .def("ptr", &Array::ptr_as_int);

  // ---- transfers, strided copies, fill, conversion (cuda/strided.cu) ----
  m.def("to_numpy", &nc::to_numpy, py::arg("a"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("from_numpy", &nc::from_numpy, py::arg("a"), py::arg("out"));
  m.def("fill", &nc::fill, py::arg("out"), py::arg("val"));
  m.def("astype", &nc::astype, py::arg("a"), py::arg("out"));
  m.def("compact", &nc::compact, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"));
  m.def("ewise_setitem", &nc::ewise_setitem, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"));
  m.def("scalar_setitem", &nc::scalar_setitem, py::arg("size"), py::arg("val"), py::arg("out"), py::arg("shape"),
        py::arg("strides"), py::arg("offset"));

  // ---- elementwise (cuda/elementwise.cu) ----
  m.def("ewise_add", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_binary("ewise_add", BinaryOp::kAdd, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_add", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_binary("scalar_add", BinaryOp::kAdd, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_mul", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_binary("ewise_mul", BinaryOp::kMul, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_mul", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_binary("scalar_mul", BinaryOp::kMul, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_div", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_binary("ewise_div", BinaryOp::kDiv, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_div", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_binary("scalar_div", BinaryOp::kDiv, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_power", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_binary("ewise_power", BinaryOp::kPower, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_power", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_binary("scalar_power", BinaryOp::kPower, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_maximum", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_binary("ewise_maximum", BinaryOp::kMaximum, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_maximum", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_binary("scalar_maximum", BinaryOp::kMaximum, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_relu_grad", [](const Array& g, const Array& x, Array& out) {
    nc::ewise_binary("ewise_relu_grad", BinaryOp::kReluGrad, g, x, out);
  }, py::arg("g"), py::arg("x"), py::arg("out"));

  m.def("ewise_eq", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_compare("ewise_eq", CompareOp::kEq, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_eq", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_compare("scalar_eq", CompareOp::kEq, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_ne", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_compare("ewise_ne", CompareOp::kNe, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_ne", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_compare("scalar_ne", CompareOp::kNe, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_lt", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_compare("ewise_lt", CompareOp::kLt, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_lt", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_compare("scalar_lt", CompareOp::kLt, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_le", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_compare("ewise_le", CompareOp::kLe, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_le", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_compare("scalar_le", CompareOp::kLe, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_gt", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_compare("ewise_gt", CompareOp::kGt, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_gt", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_compare("scalar_gt", CompareOp::kGt, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_ge", [](const Array& a, const Array& b, Array& out) {
    nc::ewise_compare("ewise_ge", CompareOp::kGe, a, b, out);
  }, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_ge", [](const Array& a, Scalar val, Array& out) {
    nc::scalar_compare("scalar_ge", CompareOp::kGe, a, val, out);
  }, py::arg("a"), py::arg("val"), py::arg("out"));

  m.def("ewise_log", [](const Array& a, Array& out) { nc::ewise_unary("ewise_log", UnaryOp::kLog, a, out); },
        py::arg("a"), py::arg("out"));
  m.def("ewise_exp", [](const Array& a, Array& out) { nc::ewise_unary("ewise_exp", UnaryOp::kExp, a, out); },
        py::arg("a"), py::arg("out"));
  m.def("ewise_tanh", [](const Array& a, Array& out) { nc::ewise_unary("ewise_tanh", UnaryOp::kTanh, a, out); },
        py::arg("a"), py::arg("out"));
  m.def("ewise_rows", &nc::ewise_rows, py::arg("op"), py::arg("full"), py::arg("row"), py::arg("row_offset"),
        py::arg("out"), py::arg("cols"), py::arg("swap"));

  // ---- reductions (cuda/reduce.cu) ----
  m.def("reduce_max", &nc::reduce_max, py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("reduce_sum", &nc::reduce_sum, py::arg("a"), py::arg("out"), py::arg("reduce_size"));
  m.def("reduce_sum_middle", &nc::reduce_sum_middle, py::arg("a"), py::arg("out"), py::arg("outer"),
        py::arg("reduce"), py::arg("inner"));

  // ---- matmul ladder (cuda/matmul.cu) ----
  m.def("matmul", &nc::matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("p"));
  m.def("bmm", [](const Array& a, const Array& b, Array& out, int64_t batch, int64_t mm, int64_t n, int64_t p,
                  const Shape& a_strides, int64_t a_offset, const Shape& b_strides, int64_t b_offset) {
    nc::bmm(nc::get_matmul_kernel(), "bmm", a, b, out, batch, mm, n, p, a_strides, a_offset, b_strides, b_offset);
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"), py::arg("n"), py::arg("p"),
     py::arg("a_strides"), py::arg("a_offset"), py::arg("b_strides"), py::arg("b_offset"));
  m.def("bmm_naive", [](const Array& a, const Array& b, Array& out, int64_t batch, int64_t mm, int64_t n, int64_t p,
                        const Shape& a_strides, int64_t a_offset, const Shape& b_strides, int64_t b_offset) {
    nc::bmm(0, "bmm_naive", a, b, out, batch, mm, n, p, a_strides, a_offset, b_strides, b_offset);
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"), py::arg("n"), py::arg("p"),
     py::arg("a_strides"), py::arg("a_offset"), py::arg("b_strides"), py::arg("b_offset"));
  m.def("conv2d", &nc::conv2d, py::arg("x"), py::arg("w"), py::arg("out"), py::arg("x_shape"), py::arg("x_strides"),
        py::arg("x_offset"), py::arg("w_shape"), py::arg("w_strides"), py::arg("w_offset"), py::arg("out_shape"),
        py::arg("out_strides"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"));
  m.def("set_matmul_kernel", &nc::set_matmul_kernel, py::arg("k"),
        "Select the kernel bmm/matmul use (see matmul_kernel_names()).");
  m.def("get_matmul_kernel", &nc::get_matmul_kernel);
  m.def("matmul_kernel_names", []() {
    return std::vector<std::string>(std::begin(nc::kMatmulKernelNames), std::end(nc::kMatmulKernelNames));
  });
  m.def("matmul_kernel_used", []() { return nc::g_last_matmul_kernel; },
        "The rung the last bmm/matmul ran (a dtype, device or layout a rung does not take steps down; "
        "-1 when no kernel ran).");

  // ---- rows and fused ops (cuda/rows.cu, cuda/fused.cu) ----
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

  // ---- memory and device (cuda/memory.cu) ----
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
  m.def("wrap_external", [](size_t address, int64_t size, const py::object& dtype) {
    const needle::DType dt = needle::dtype_arg(dtype);
    needle::check_array_size(size, needle::dtype_size(dt));
    return std::make_unique<Array>(reinterpret_cast<void*>(address), size, dt);
  }, py::arg("address"), py::arg("size"), py::arg("dtype"),
     "An Array over device memory at `address` that the caller owns and keeps alive (DLPack import).");
  m.def("synchronize", []() { CUDA_CHECK(cudaDeviceSynchronize()); },
        "Wait for every kernel and copy queued on the device.");
  m.def("device_count", &nc::device_count);
  m.def("device_name", &nc::device_name);
  m.def("device_capability", []() {
    if (nc::device_count() == 0) throw std::runtime_error("device_capability: no CUDA device is visible");
    const int cc = nc::device_capability();
    return py::make_tuple(cc / 10, cc % 10);
  }, "The current device's compute capability (major, minor); the tensor-core rungs need (8, 0).");
}
