// The CPU backend's entry points, one group per kernel family (each group's
// file is named beside it). Buffers carry their dtype; every entry checks
// sizes, views and dtypes (common/checks.h) before it touches memory. The
// semantics are those of the numpy twin,
// python/needle/backend_ndarray/ndarray_backend_numpy.py.
#pragma once
#include <cstdint>
#include <string>

#include "buffer.h"
#include "common/checks.h"
#include "common/convert.h"

namespace needle {
namespace cpu {

// ---- strided.cc: copies between strided views, fill, dtype conversion ----
void Compact(const Buffer& a, Buffer* out, Shape shape, Shape strides, int64_t offset);
void EwiseSetitem(const Buffer& a, Buffer* out, Shape shape, Shape strides, int64_t offset);
void ScalarSetitem(int64_t size, Scalar val, Buffer* out, Shape shape, Shape strides, int64_t offset);
void Fill(Buffer* out, Scalar val);
void Astype(const Buffer& a, Buffer* out);

// ---- elementwise.cc: binary, scalar, comparison and unary functions ----
enum class BinaryOp { kAdd, kMul, kDiv, kPower, kMaximum, kReluGrad };  // kReluGrad: array operands only
enum class CompareOp { kEq, kNe, kLt, kLe, kGt, kGe };
enum class UnaryOp { kLog, kExp, kTanh };
void EwiseBinary(const char* fn, BinaryOp op, const Buffer& a, const Buffer& b, Buffer* out);
void ScalarBinary(const char* fn, BinaryOp op, const Buffer& a, Scalar val, Buffer* out);
void EwiseCompare(const char* fn, CompareOp op, const Buffer& a, const Buffer& b, Buffer* out);
void ScalarCompare(const char* fn, CompareOp op, const Buffer& a, Scalar val, Buffer* out);
void EwiseUnary(const char* fn, UnaryOp op, const Buffer& a, Buffer* out);
// The libm loop behind ewise_<op> (the reference of the vectorised float32 paths).
void EwiseMathReference(const std::string& op, const Buffer& a, Buffer* out);
void EwiseRows(const std::string& op, const Buffer& full, const Buffer& row, int64_t row_offset, Buffer* out,
               int64_t cols, bool swap);

// ---- reduce.cc: sums and maxima of contiguous runs ----
void ReduceSum(const Buffer& a, Buffer* out, int64_t reduce_size);
void ReduceMax(const Buffer& a, Buffer* out, int64_t reduce_size);
void ReduceSumMiddle(const Buffer& a, Buffer* out, int64_t outer, int64_t reduce, int64_t inner);

// ---- matmul.cc: products over the typed GEMM (gemm.h) ----
void Matmul(const Buffer& a, const Buffer& b, Buffer* out, int64_t m, int64_t n, int64_t p);
void MatmulTiled(const Buffer& a, const Buffer& b, Buffer* out, int64_t m, int64_t n, int64_t p);
void Bmm(const Buffer& a, const Buffer& b, Buffer* out, int64_t batch, int64_t m, int64_t n, int64_t p, Shape sa,
         int64_t oa, Shape sb, int64_t ob);
void BmmNaive(const Buffer& a, const Buffer& b, Buffer* out, int64_t batch, int64_t m, int64_t n, int64_t p,
              Shape sa, int64_t oa, Shape sb, int64_t ob);

// ---- conv.cc: convolution as an implicit GEMM (x, w, out strided; see conv.h) ----
void Conv2d(const Buffer& x, const Buffer& w, Buffer* out, Shape x_shape, Shape x_strides, int64_t x_offset,
            Shape w_shape, Shape w_strides, int64_t w_offset, Shape out_shape, Shape out_strides, Shape stride,
            Shape padding, Shape dilation, int64_t groups);

// ---- rows.cc: row gather and scatter-add (embedding lookup and its adjoint) ----
void GatherRows(const Buffer& a, const Buffer& idx, Buffer* out, int64_t num_rows, int64_t dim);
void ScatterAddRows(const Buffer& a, const Buffer& idx, Buffer* out, int64_t num_rows, int64_t dim);

// ---- fused.cc: softmax cross-entropy, batch norm, optimizer steps ----
void SoftmaxXent(const Buffer& a, const Buffer& labels, Buffer* lse, Buffer* loss, int64_t n, int64_t k);
void SoftmaxXentGrad(const Buffer& a, const Buffer& labels, const Buffer& lse, const Buffer& g, Buffer* out,
                     int64_t n, int64_t k, double scale);
void BnForward(const Buffer& x, const Buffer& w, const Buffer& b, Buffer* out, Buffer* mean, Buffer* var,
               int64_t rows, int64_t cols, double eps);
void BnBackward(const Buffer& x, const Buffer& g, const Buffer& w, const Buffer& mean, const Buffer& var, Buffer* dx,
                Buffer* dw, Buffer* db, int64_t rows, int64_t cols, double eps);
void AdamStep(const Buffer& w, const Buffer& g, Buffer* m, Buffer* v, Buffer* out, double lr, double beta1,
              double beta2, double eps, double weight_decay, double decay, double bias_c1, double bias_c2);
void SgdStep(const Buffer& w, const Buffer& g, Buffer* u, Buffer* out, double lr, double momentum,
             double weight_decay);

// Row numbers of idx (any integer dtype, or integer-valued floats), each checked
// to lie in [0, num_rows) (rows.cc; the loss kernels read labels through it).
std::vector<int64_t> row_indices(const char* fn, const Buffer& idx, int64_t num_rows);

}  // namespace cpu
}  // namespace needle
