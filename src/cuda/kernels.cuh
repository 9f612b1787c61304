// The device layer of the CUDA backend: one group of launchers per kernel family
// (each group's file is named beside it). A launcher picks the kernel for the
// buffers' dtype (common/dtypes.h dispatch) and launches it; it trusts its
// arguments. Every check (sizes, views, dtypes, indices) runs before, in table.cu,
// so these files stay free of pybind11 (which costs every CUDA translation unit
// seconds per architecture). The semantics are those of the numpy twin,
// python/needle/backend_ndarray/ndarray_backend_numpy.py.
#pragma once
#include <cstdint>

#include "common/conv_geometry.h"
#include "common/convert.h"
#include "cuda/matmul_tc_layout.cuh"
#include "cuda/memory.cuh"

namespace needle {
namespace cuda {

// ---- strided.cu: copies between strided views, fill, dtype conversion ----
// Views (shape, strides, offset) reach the kernels by value with size-1 dims dropped
// and contiguous neighbours merged; at most kMaxDims dims may remain.
constexpr int kMaxDims = 8;
int merged_ndim(const Shape& shape, const Shape& strides);
// The non-empty view is one unit-stride run from its offset (a plain copy serves).
bool contiguous_run(const Shape& shape, const Shape& strides);
// out (n,) compact = a's view of n > 0 elements (any dtype; a and out share it).
void launch_compact(const Array& a, void* out, const Shape& shape, const Shape& strides, int64_t offset, int64_t n);
// out's view of n > 0 elements = a[0 : n).
void launch_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset, int64_t n);
// out's view of n > 0 elements = val in out's dtype.
void launch_fill_view(Array& out, Scalar val, const Shape& shape, const Shape& strides, int64_t offset, int64_t n);
// Every element of out = val in out's dtype.
void launch_fill(Array& out, Scalar val);
// out[0 : n) = 0 bits (0 for every dtype).
void zero_fill(Array& out, int64_t n);
// out = a converted to out's dtype (same size).
void launch_astype(const Array& a, Array& out);

// ---- elementwise.cu: binary, scalar, comparison, unary and row-broadcast functions ----
enum class BinaryOp { kAdd, kMul, kDiv, kPower, kMaximum, kReluGrad };  // kReluGrad: array operands only
enum class CompareOp { kEq, kNe, kLt, kLe, kGt, kGe };
enum class UnaryOp { kLog, kExp, kTanh };
enum class RowOp { kAdd, kMul, kDiv };
// out = op(a, b) (b non-null) or op(a, val in a's dtype); a, b, out share size and dtype.
// false when an integer exponent of b was negative (the caller raises; out is then junk).
bool launch_binary(const char* name, BinaryOp op, const Array& a, const Array* b, Scalar val, Array& out);
// out (bool) = op(a, b) or op(a, val in a's dtype).
void launch_compare(const char* name, CompareOp op, const Array& a, const Array* b, Scalar val, Array& out);
void launch_unary(const char* name, UnaryOp op, const Array& a, Array& out);
// full (rows, cols) compact, row's (cols,) run at row_offset: out = op(full, row) (swap: op(row, full)).
void launch_rows(RowOp op, const Array& full, const Array& row, int64_t row_offset, Array& out, int64_t cols,
                 bool swap);

// ---- reduce.cu: sums and maxima of contiguous runs, sums over a middle axis ----
// a is compact with at least out.size * reduce_size elements, reduce_size >= 1.
void launch_reduce_sum(const Array& a, Array& out, int64_t reduce_size);
void launch_reduce_max(const Array& a, Array& out, int64_t reduce_size);
// a is (outer, reduce, inner) compact, out (outer, inner) compact.
void launch_sum_middle(const Array& a, Array& out, int64_t outer, int64_t reduce, int64_t inner);

// ---- matmul.cu: the numbered kernel ladder ----
constexpr int kNumMatmulKernels = 5;
extern const char* const kMatmulKernelNames[kNumMatmulKernels];
extern int g_matmul_kernel;       // what bmm / matmul use (set_matmul_kernel)
extern int g_last_matmul_kernel;  // the rung the last bmm / matmul ran (-1 before any)
// kernel: 0 naive, 1 shared-memory tiled, 2 register-blocked (float32), 3 WMMA and
// 4 mma.sync pipeline (float16 / bfloat16 on compute capability 8.0+); each dtype
// runs the highest rung at or below `kernel` that takes it (and the device, and for
// rung 4 the operands' layout).
// a (batch, m, n) by a_strides from a_offset, b (batch, n, p) likewise, out (batch, m, p) compact.
void launch_bmm(int kernel, const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                int64_t p, const Shape& a_strides, int64_t a_offset, const Shape& b_strides, int64_t b_offset);

// ---- conv.cu: 2-D convolution as a direct loop (float32, float64) ----
// x, w from their offsets, out from 0, all at the geometry's strides (common/conv_geometry.h).
void launch_conv2d(const ConvGeometry& g, const Array& x, int64_t x_offset, const Array& w, int64_t w_offset,
                   Array& out);

// ---- matmul_tc.cu: rungs 3 and 4, float16 / bfloat16 on the tensor cores ----
// The current device's compute capability as major * 10 + minor (90 on an H200).
int device_capability();
// The highest tensor-core rung the current device runs: 0 (none), 3, or 4.
int tensor_core_rungs();
// A (batch, m, n) and B (batch, n, p) strided views, out (batch, m, p) compact; T is
// half_t or bfloat16_t. Rung 3 takes any strides; rung 4 returns false, launching
// nothing, when it cannot stage an operand (matmul_tc_layout.cuh operand_staging).
template <typename T>
void launch_matmul_wmma(const MatView<T>& A, const MatView<T>& B, T* out, int64_t batch, int64_t m, int64_t n,
                        int64_t p);
template <typename T>
bool launch_matmul_mma(const MatView<T>& A, const MatView<T>& B, T* out, int64_t batch, int64_t m, int64_t n,
                       int64_t p);

// ---- rows.cu: row gather and scatter-add; rows are k checked int64 row numbers on the device ----
void launch_gather_rows(const Array& a, const int64_t* rows, Array& out, int64_t k, int64_t dim);
void launch_scatter_add_rows(const Array& a, const int64_t* rows, Array& out, int64_t num_rows, int64_t k,
                             int64_t dim);

// ---- fused.cu: softmax cross-entropy, batch norm, optimizer steps (float32, float64) ----
void launch_softmax_xent(const Array& a, const int64_t* labels, Array& lse, Array& loss, int64_t n, int64_t k);
void launch_softmax_xent_grad(const Array& a, const int64_t* labels, const Array& lse, const Array& g, Array& out,
                              int64_t n, int64_t k, double scale);
void launch_bn_forward(const Array& x, const Array& w, const Array& b, Array& out, Array& mean, Array& var,
                       int64_t rows, int64_t cols, double eps);
void launch_bn_backward(const Array& x, const Array& g, const Array& w, const Array& mean, const Array& var,
                        Array& dx, Array& dw, Array& db, int64_t rows, int64_t cols, double eps);
void launch_adam_step(const Array& w, const Array& g, Array& m, Array& v, Array& out, double lr, double beta1,
                      double beta2, double eps, double weight_decay, double decay, double bias_c1, double bias_c2);
// u == nullptr: plain SGD (momentum 0).
void launch_sgd_step(const Array& w, const Array& g, Array* u, Array& out, double lr, double momentum,
                     double weight_decay);

}  // namespace cuda
}  // namespace needle
