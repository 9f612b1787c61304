// The CUDA backend's entry points, one group per kernel family (each group's
// file is named beside it). Buffers carry their dtype; every entry checks sizes,
// views and dtypes (common/checks.h, cuda/checks_cuda.cuh) on the host before it
// launches anything. The semantics are those of the numpy twin,
// python/needle/backend_ndarray/ndarray_backend_numpy.py.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/checks.h"
#include "cuda/memory.cuh"

namespace needle {
namespace cuda {

// ---- strided.cu: transfers, copies between strided views, fill, dtype conversion ----
pybind11::array to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset);
void from_numpy(const pybind11::array& a, Array& out);
void fill(Array& out, double val);
void astype(const Array& a, Array& out);
void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset);
void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset);
void scalar_setitem(int64_t size, double val, Array& out, const Shape& shape, const Shape& strides, int64_t offset);
// out[0 : n) = 0 bits (0 for every dtype); no checks.
void zero_fill(Array& out, int64_t n);

// ---- elementwise.cu: binary, scalar, comparison, unary and row-broadcast functions ----
enum class BinaryOp { kAdd, kMul, kDiv, kPower, kMaximum };
enum class CompareOp { kEq, kNe, kLt, kLe, kGt, kGe };
enum class UnaryOp { kLog, kExp, kTanh };
void ewise_binary(const char* fn, BinaryOp op, const Array& a, const Array& b, Array& out);
void scalar_binary(const char* fn, BinaryOp op, const Array& a, double val, Array& out);
void ewise_compare(const char* fn, CompareOp op, const Array& a, const Array& b, Array& out);
void scalar_compare(const char* fn, CompareOp op, const Array& a, double val, Array& out);
void ewise_unary(const char* fn, UnaryOp op, const Array& a, Array& out);
void ewise_rows(const std::string& op, const Array& full, const Array& row, int64_t row_offset, Array& out,
                int64_t cols, bool swap);

// ---- reduce.cu: sums and maxima of contiguous runs, sums over a middle axis ----
void reduce_sum(const Array& a, Array& out, int64_t reduce_size);
void reduce_max(const Array& a, Array& out, int64_t reduce_size);
void reduce_sum_middle(const Array& a, Array& out, int64_t outer, int64_t reduce, int64_t inner);

// ---- matmul.cu: the numbered kernel ladder ----
constexpr int kNumMatmulKernels = 3;
extern const char* const kMatmulKernelNames[kNumMatmulKernels];
void set_matmul_kernel(int k);
int get_matmul_kernel();
void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p);
// kernel: 0 naive, 1 shared-memory tiled, 2 register-blocked (float32; others use 1).
void bmm(int kernel, const char* fn, const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
         int64_t p, const Shape& a_strides, int64_t a_offset, const Shape& b_strides, int64_t b_offset);

// ---- rows.cu: row gather and scatter-add (embedding lookup and its adjoint) ----
void gather_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim);
void scatter_add_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim);
// idx's row numbers (any integer dtype, or integer-valued floats) copied to the host,
// checked to lie in [0, num_rows) and uploaded as int64 for the kernels to read.
std::unique_ptr<Scratch<int64_t>> upload_row_indices(const char* fn, const Array& idx, int64_t num_rows);

// ---- fused.cu: softmax cross-entropy, batch norm, optimizer steps (float32, float64) ----
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
