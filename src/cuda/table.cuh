// The function table of the CUDA module, as the bindings call it: each function
// checks its arguments on the host (common/checks.h, cuda/checks_cuda.cuh: one error
// policy for every device) and then calls its family's launcher (cuda/kernels.cuh).
// Names, argument order and semantics are those of the numpy twin,
// python/needle/backend_ndarray/ndarray_backend_numpy.py.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/checks.h"
#include "common/convert.h"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

// Array(size, dtype) after the size check.
std::unique_ptr<Array> make_array(int64_t size, DType dtype);

// ---- transfers, strided copies, fill, conversion ----
pybind11::array to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset);
void from_numpy(const pybind11::array& a, Array& out);
void fill(Array& out, Scalar val);
void astype(const Array& a, Array& out);
void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset);
void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset);
void scalar_setitem(int64_t size, Scalar val, Array& out, const Shape& shape, const Shape& strides, int64_t offset);

// ---- elementwise ----
void ewise_binary(const char* fn, BinaryOp op, const Array& a, const Array& b, Array& out);
void scalar_binary(const char* fn, BinaryOp op, const Array& a, Scalar val, Array& out);
void ewise_compare(const char* fn, CompareOp op, const Array& a, const Array& b, Array& out);
void scalar_compare(const char* fn, CompareOp op, const Array& a, Scalar val, Array& out);
void ewise_unary(const char* fn, UnaryOp op, const Array& a, Array& out);
void ewise_rows(const std::string& op, const Array& full, const Array& row, int64_t row_offset, Array& out,
                int64_t cols, bool swap);

// ---- reductions ----
void reduce_sum(const Array& a, Array& out, int64_t reduce_size);
void reduce_max(const Array& a, Array& out, int64_t reduce_size);
void reduce_sum_middle(const Array& a, Array& out, int64_t outer, int64_t reduce, int64_t inner);

// ---- matmul ladder ----
void set_matmul_kernel(int k);
int get_matmul_kernel();
void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p);
// kernel: 0 naive, 1 shared-memory tiled, 2 register-blocked (float32), 3 / 4 tensor cores
// (float16 / bfloat16); a dtype runs the highest rung at or below kernel that takes it.
void bmm(int kernel, const char* fn, const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
         int64_t p, const Shape& a_strides, int64_t a_offset, const Shape& b_strides, int64_t b_offset);

// ---- convolution ----
void conv2d(const Array& x, const Array& w, Array& out, const Shape& x_shape, const Shape& x_strides, int64_t x_offset,
            const Shape& w_shape, const Shape& w_strides, int64_t w_offset, const Shape& out_shape,
            const Shape& out_strides, const Shape& stride, const Shape& padding, const Shape& dilation, int64_t groups);

// ---- rows and fused ops ----
void gather_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim);
void scatter_add_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim);
void softmax_xent(const Array& a, const Array& labels, Array& lse, Array& loss, int64_t n, int64_t k);
void softmax_xent_grad(const Array& a, const Array& labels, const Array& lse, const Array& g, Array& out, int64_t n,
                       int64_t k, double scale);
void bn_forward(const Array& x, const Array& w, const Array& b, Array& out, Array& mean, Array& var, int64_t rows,
                int64_t cols, double eps);
void bn_backward(const Array& x, const Array& g, const Array& w, const Array& mean, const Array& var, Array& dx,
                 Array& dw, Array& db, int64_t rows, int64_t cols, double eps);
void adam_step(const Array& w, const Array& g, Array& m, Array& v, Array& out, double lr, double beta1, double beta2,
               double eps, double weight_decay, double decay, double bias_c1, double bias_c2);
void sgd_step(const Array& w, const Array& g, Array& u, Array& out, double lr, double momentum, double weight_decay);

}  // namespace cuda
}  // namespace needle
