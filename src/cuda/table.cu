// The function table of the CUDA module: host-side checks, then the launchers.
// Every check of a call runs here, before any device work, in the order the numpy
// twin makes them (so the same bad call raises the same exception type first); the
// checks themselves are the shared ones of common/checks.h plus cuda/checks_cuda.cuh.
// This is the one translation unit of the kernels that includes pybind11.
#include <memory>
#include <string>
#include <vector>

#include "common/py_dtypes.h"
#include "cuda/checks_cuda.cuh"
#include "cuda/table.cuh"

namespace py = pybind11;

namespace needle {
namespace cuda {

namespace {

constexpr const char* kNumeric = "a numeric (not bool) dtype";
constexpr const char* kFloating = "a floating dtype";


// A non-empty view the kernels can take: check_view has passed, and its merged dims fit.
void check_view_dims(const char* fn, const Shape& shape, const Shape& strides) {
  check_max_dims(fn, merged_ndim(shape, strides), kMaxDims, shape);
}

// idx's row numbers (any integer dtype, or integer-valued floats) copied to the host,
// checked to lie in [0, num_rows) and uploaded as int64 for the kernels to read.
std::unique_ptr<Scratch<int64_t>> upload_row_indices(const char* fn, const Array& idx, int64_t num_rows) {
  std::vector<unsigned char> host(idx.nbytes());
  if (!host.empty()) CUDA_CHECK(cudaMemcpy(host.data(), idx.ptr, host.size(), cudaMemcpyDeviceToHost));
  std::vector<int64_t> rows(static_cast<size_t>(idx.size));
  dispatch(idx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* v = reinterpret_cast<const T*>(host.data());
    // double holds every integer a buffer can address exactly
    check_row_indices(fn, idx.dtype, idx.size, num_rows, [&](int64_t r) { return static_cast<double>(widen(v[r])); });
    for (size_t r = 0; r < rows.size(); ++r) rows[r] = static_cast<int64_t>(widen(v[r]));
  });
  auto dev = std::make_unique<Scratch<int64_t>>(idx.size);
  if (!rows.empty())
    CUDA_CHECK(cudaMemcpy(dev->ptr, rows.data(), rows.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
  return dev;
}

// The dtypes op takes, and what its TypeError says it needs.
unsigned binary_mask(BinaryOp op, const char** what) {
  switch (op) {
    case BinaryOp::kDiv:
    case BinaryOp::kReluGrad: *what = kFloating; return kFloatingMask;
    case BinaryOp::kPower: *what = kNumeric; return kNumericMask;
    default: *what = ""; return kAllMask;
  }
}

// An integer scalar exponent below 0 (in the array's dtype: uint8 has none).
bool negative_int_exponent(DType dt, const Scalar& val) {
  if (dt == DType::kInt32) return scalar_as<int32_t>(val) < 0;
  if (dt == DType::kInt64) return scalar_as<int64_t>(val) < 0;
  return false;
}

}  // namespace

std::unique_ptr<Array> make_array(int64_t size, DType dtype) {
  check_array_size(size, dtype_size(dtype));
  return std::make_unique<Array>(size, dtype);
}

// ---- transfers, strided copies, fill, conversion ----

// a's strided view -> a new numpy array of that shape and a's dtype (compacted on the
// device first when it is not one contiguous run).
py::array to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "to_numpy";
  check_view(fn, shape, strides, offset, a.size);
  const int64_t n = shape_size(shape);
  if (n > 0) check_view_dims(fn, shape, strides);
  py::array result(numpy_dtype(a.dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
  if (n == 0) return result;
  const size_t bytes = static_cast<size_t>(n) * a.itemsize();
  if (contiguous_run(shape, strides)) {
    CUDA_CHECK(cudaMemcpy(result.mutable_data(), a.bytes_at(offset), bytes, cudaMemcpyDeviceToHost));
    return result;
  }
  Array tmp(n, a.dtype);
  launch_compact(a, tmp.ptr, shape, strides, offset, n);
  CUDA_CHECK(cudaMemcpy(result.mutable_data(), tmp.ptr, bytes, cudaMemcpyDeviceToHost));
  return result;
}

// a is a numpy array of out's dtype with out.size elements (any layout).
void from_numpy(const py::array& a, Array& out) {
  check_from_numpy(a.dtype().equal(numpy_dtype(out.dtype)), py::str(a.dtype()).cast<std::string>(), out.dtype,
                   static_cast<int64_t>(a.size()), out.size);
  if (out.size == 0) return;
  const py::array c = py::array::ensure(a, py::array::c_style);
  if (!c) throw std::runtime_error("from_numpy: could not make a C-contiguous copy of the source");
  CUDA_CHECK(cudaMemcpy(out.ptr, c.data(), out.nbytes(), cudaMemcpyHostToDevice));
}

// Every element of out = val converted to out's dtype.
void fill(Array& out, Scalar val) { launch_fill(out, val); }

// a and out compact, same size: out = a converted to out's dtype (numpy's casts).
void astype(const Array& a, Array& out) {
  check_same_size("astype", a.size, out.size);
  launch_astype(a, out);
}

// a is strided (shape, strides, offset); out is (prod(shape),) compact, same dtype.
void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "compact";
  check_same_dtype(fn, {a.dtype, out.dtype});
  check_view(fn, shape, strides, offset, a.size);
  const int64_t n = shape_size(shape);
  check_same_size(fn, n, out.size);
  if (n == 0) return;
  check_view_dims(fn, shape, strides);
  launch_compact(a, out.ptr, shape, strides, offset, n);
}

// a is compact with at least prod(shape) elements; out is written through its strided view.
void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "ewise_setitem";
  check_same_dtype(fn, {a.dtype, out.dtype});
  check_view(fn, shape, strides, offset, out.size);
  const int64_t n = shape_size(shape);
  check_setitem_source(fn, shape, n, a.size);
  if (n == 0) return;
  check_view_dims(fn, shape, strides);
  launch_setitem(a, out, shape, strides, offset, n);
}

// Writes val (converted to out's dtype) into the strided view of out; size is prod(shape).
void scalar_setitem(int64_t size, Scalar val, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  const char* fn = "scalar_setitem";
  check_view(fn, shape, strides, offset, out.size);
  const int64_t n = shape_size(shape);
  check_setitem_count(fn, shape, size, n);
  if (n == 0) return;
  check_view_dims(fn, shape, strides);
  launch_fill_view(out, val, shape, strides, offset, n);
}

// ---- elementwise ----

void ewise_binary(const char* fn, BinaryOp op, const Array& a, const Array& b, Array& out) {
  const char* what;
  const unsigned mask = binary_mask(op, &what);
  const DType dt = check_same_dtype(fn, {a.dtype, b.dtype, out.dtype});
  check_dtype_in(fn, dt, mask, what);
  check_same_size(fn, a.size, out.size);
  check_same_size(fn, b.size, out.size);
  if (!launch_binary(fn, op, a, &b, Scalar{0.0, 0, false}, out)) throw_negative_int_power(fn);
}

void scalar_binary(const char* fn, BinaryOp op, const Array& a, Scalar val, Array& out) {
  const char* what;
  const unsigned mask = binary_mask(op, &what);
  const DType dt = check_same_dtype(fn, {a.dtype, out.dtype});
  check_dtype_in(fn, dt, mask, what);
  check_same_size(fn, a.size, out.size);
  if (op == BinaryOp::kPower && negative_int_exponent(dt, val)) throw_negative_int_power(fn);
  launch_binary(fn, op, a, nullptr, val, out);
}

void ewise_compare(const char* fn, CompareOp op, const Array& a, const Array& b, Array& out) {
  check_same_dtype(fn, {a.dtype, b.dtype});
  check_dtype_is(fn, "out", out.dtype, DType::kBool);
  check_same_size(fn, a.size, out.size);
  check_same_size(fn, b.size, out.size);
  launch_compare(fn, op, a, &b, Scalar{0.0, 0, false}, out);
}

void scalar_compare(const char* fn, CompareOp op, const Array& a, Scalar val, Array& out) {
  check_dtype_is(fn, "out", out.dtype, DType::kBool);
  check_same_size(fn, a.size, out.size);
  launch_compare(fn, op, a, nullptr, val, out);
}

void ewise_unary(const char* fn, UnaryOp op, const Array& a, Array& out) {
  const DType dt = check_same_dtype(fn, {a.dtype, out.dtype});
  check_dtype_in(fn, dt, kFloatingMask, kFloating);
  check_same_size(fn, a.size, out.size);
  launch_unary(fn, op, a, out);
}

// full is (rows, cols) compact, row is the (cols,) run at row[row_offset:]; out
// (rows, cols) compact gets op(full, row), or op(row, full) when swap.
void ewise_rows(const std::string& op, const Array& full, const Array& row, int64_t row_offset, Array& out,
                int64_t cols, bool swap) {
  const char* fn = "ewise_rows";
  const RowOp code = static_cast<RowOp>(parse_row_op(op));
  const DType dt = check_same_dtype(fn, {full.dtype, row.dtype, out.dtype});
  if (code == RowOp::kDiv) check_dtype_in(fn, dt, kFloatingMask, "a floating dtype for div");
  check_row_broadcast(fn, full.size, row.size, row_offset, out.size, cols);
  launch_rows(code, full, row, row_offset, out, cols, swap);
}

// ---- reductions ----

// a is compact with at least out.size * reduce_size elements; out[i] sums the
// contiguous run a[i * reduce_size : (i + 1) * reduce_size] (int64 for integers and bool).
void reduce_sum(const Array& a, Array& out, int64_t reduce_size) {
  const char* fn = "reduce_sum";
  check_dtype_is(fn, "out", out.dtype, sum_dtype(a.dtype));
  checked_product(fn, {out.size, reduce_size});
  check_reduce(fn, a.size, out.size, reduce_size);
  launch_reduce_sum(a, out, reduce_size);
}

// As reduce_sum, the maximum of each run, in a's dtype (bool: any; NaN propagates).
void reduce_max(const Array& a, Array& out, int64_t reduce_size) {
  const char* fn = "reduce_max";
  check_dtype_is(fn, "out", out.dtype, a.dtype);
  checked_product(fn, {out.size, reduce_size});
  check_reduce(fn, a.size, out.size, reduce_size);
  launch_reduce_max(a, out, reduce_size);
}

// a is (outer, reduce, inner) compact; out (outer, inner) compact, dtype as reduce_sum.
void reduce_sum_middle(const Array& a, Array& out, int64_t outer, int64_t reduce, int64_t inner) {
  const char* fn = "reduce_sum_middle";
  check_dtype_is(fn, "out", out.dtype, sum_dtype(a.dtype));
  checked_product(fn, {outer, reduce, inner});
  check_reduce_middle(fn, a.size, out.size, outer, reduce, inner);
  launch_sum_middle(a, out, outer, reduce, inner);
}

// ---- matmul ladder ----

void set_matmul_kernel(int k) {
  check_kernel_index("set_matmul_kernel", k, kNumMatmulKernels);
  g_matmul_kernel = k;
}

int get_matmul_kernel() { return g_matmul_kernel; }

// a is (m, n) compact, b is (n, p) compact, out is (m, p) compact.
void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  const char* fn = "matmul";
  check_matmul_dtype(fn, a.dtype, b.dtype, out.dtype);
  checked_product(fn, {m, n});
  checked_product(fn, {n, p});
  checked_product(fn, {m, p});
  check_matmul_sizes(fn, a.size, b.size, out.size, m, n, p);
  launch_bmm(g_matmul_kernel, a, b, out, 1, m, n, p, {m * n, n, 1}, 0, {n * p, p, 1}, 0);
}

// a is (batch, m, n) strided from a_offset, b is (batch, n, p) strided from b_offset
// (batch stride 0 broadcasts), out is (batch, m, p) compact.
void bmm(int kernel, const char* fn, const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
         int64_t p, const Shape& a_strides, int64_t a_offset, const Shape& b_strides, int64_t b_offset) {
  check_matmul_dtype(fn, a.dtype, b.dtype, out.dtype);
  // Broadcast (stride 0) operands can describe huge m and p over tiny buffers, so the
  // output size is overflow-checked before check_bmm compares it with out.
  checked_product(fn, {batch, m, p});
  check_bmm(fn, a.size, b.size, out.size, batch, m, n, p, a_strides, a_offset, b_strides, b_offset);
  launch_bmm(kernel, a, b, out, batch, m, n, p, a_strides, a_offset, b_strides, b_offset);
}

// ---- convolution ----
// x (n, h, w, c), w (kh, kw, c / groups, cout), out (n, ho, wo, cout): strided views.
void conv2d(const Array& x, const Array& w, Array& out, const Shape& x_shape, const Shape& x_strides, int64_t x_offset,
            const Shape& w_shape, const Shape& w_strides, int64_t w_offset, const Shape& out_shape,
            const Shape& out_strides, const Shape& stride, const Shape& padding, const Shape& dilation, int64_t groups) {
  const char* fn = "conv2d";
  const DType dt = check_same_dtype(fn, {x.dtype, w.dtype, out.dtype});
  check_dtype_in(fn, dt, kFusedMask, "float32 or float64");
  check_conv2d(fn, x.size, w.size, out.size, x_shape, x_strides, x_offset, w_shape, w_strides, w_offset, out_shape,
               out_strides, stride, padding, dilation, groups);
  if (shape_size(out_shape) == 0) return;
  launch_conv2d(conv_geometry(x_shape, x_strides, w_shape, w_strides, out_shape, out_strides, stride, padding, dilation,
                              groups),
                x, x_offset, w, w_offset, out);
}

// ---- rows ----

// a is (num_rows, dim) compact (any dtype), idx is (k,) compact, out is (k, dim) compact.
void gather_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim) {
  const char* fn = "gather_rows";
  check_same_dtype(fn, {a.dtype, out.dtype});
  checked_product(fn, {num_rows, dim});
  checked_product(fn, {idx.size, dim});
  check_rows(fn, a.size, out.size, num_rows, dim, idx.size);
  const auto rows = upload_row_indices(fn, idx, num_rows);
  launch_gather_rows(a, rows->get(), out, idx.size, dim);
}

// a is (k, dim) compact, idx is (k,) compact, out is (num_rows, dim) compact (accumulated into).
void scatter_add_rows(const Array& a, const Array& idx, Array& out, int64_t num_rows, int64_t dim) {
  const char* fn = "scatter_add_rows";
  const DType dt = check_same_dtype(fn, {out.dtype, a.dtype});
  checked_product(fn, {num_rows, dim});
  checked_product(fn, {idx.size, dim});
  check_rows(fn, out.size, a.size, num_rows, dim, idx.size);
  const auto rows = upload_row_indices(fn, idx, num_rows);
  check_dtype_in(fn, dt, kNumericMask, kNumeric);
  launch_scatter_add_rows(a, rows->get(), out, num_rows, idx.size, dim);
}

// ---- fused ops ----

// a is (n, k) compact logits, labels (n,) class numbers; lse (n,) gets each row's
// log-sum-exp, loss (1,) the mean of lse[i] - a[i, labels[i]].
void softmax_xent(const Array& a, const Array& labels, Array& lse, Array& loss, int64_t n, int64_t k) {
  const char* fn = "softmax_xent";
  check_fused_dtype(fn, {a.dtype, lse.dtype, loss.dtype});
  checked_product(fn, {n, k});
  check_softmax_xent(fn, a.size, labels.size, lse.size, loss.size, n, k);
  const auto rows = upload_row_indices(fn, labels, k);
  launch_softmax_xent(a, rows->get(), lse, loss, n, k);
}

// out (n, k) compact = (exp(a[i, j] - lse[i]) - [j == labels[i]]) * g[0] * scale.
void softmax_xent_grad(const Array& a, const Array& labels, const Array& lse, const Array& g, Array& out, int64_t n,
                       int64_t k, double scale) {
  const char* fn = "softmax_xent_grad";
  check_fused_dtype(fn, {a.dtype, lse.dtype, g.dtype, out.dtype});
  checked_product(fn, {n, k});
  check_softmax_xent_grad(fn, a.size, labels.size, lse.size, g.size, out.size, n, k);
  const auto rows = upload_row_indices(fn, labels, k);
  launch_softmax_xent_grad(a, rows->get(), lse, g, out, n, k, scale);
}

void bn_forward(const Array& x, const Array& w, const Array& b, Array& out, Array& mean, Array& var, int64_t rows,
                int64_t cols, double eps) {
  const char* fn = "bn_forward";
  check_fused_dtype(fn, {x.dtype, out.dtype, w.dtype, b.dtype, mean.dtype, var.dtype});
  checked_product(fn, {rows, cols});
  check_bn(fn, rows, cols, {x.size, out.size}, {w.size, b.size, mean.size, var.size});
  launch_bn_forward(x, w, b, out, mean, var, rows, cols, eps);
}

void bn_backward(const Array& x, const Array& g, const Array& w, const Array& mean, const Array& var, Array& dx,
                 Array& dw, Array& db, int64_t rows, int64_t cols, double eps) {
  const char* fn = "bn_backward";
  check_fused_dtype(fn, {x.dtype, g.dtype, dx.dtype, w.dtype, mean.dtype, var.dtype, dw.dtype, db.dtype});
  checked_product(fn, {rows, cols});
  check_bn(fn, rows, cols, {x.size, g.size, dx.size}, {w.size, mean.size, var.size, dw.size, db.size});
  launch_bn_backward(x, g, w, mean, var, dx, dw, db, rows, cols, eps);
}

void adam_step(const Array& w, const Array& g, Array& m, Array& v, Array& out, double lr, double beta1, double beta2,
               double eps, double weight_decay, double decay, double bias_c1, double bias_c2) {
  const char* fn = "adam_step";
  check_step(fn, out.size, {w.size, g.size, m.size, v.size});
  check_fused_dtype(fn, {out.dtype, w.dtype, g.dtype, m.dtype, v.dtype});
  launch_adam_step(w, g, m, v, out, lr, beta1, beta2, eps, weight_decay, decay, bias_c1, bias_c2);
}

// Without momentum u is neither checked nor touched (as in the twin).
void sgd_step(const Array& w, const Array& g, Array& u, Array& out, double lr, double momentum, double weight_decay) {
  const char* fn = "sgd_step";
  const bool use_u = momentum != 0.0;
  if (use_u) {
    check_step(fn, out.size, {w.size, g.size, u.size});
    check_fused_dtype(fn, {out.dtype, w.dtype, g.dtype, u.dtype});
  } else {
    check_step(fn, out.size, {w.size, g.size});
    check_fused_dtype(fn, {out.dtype, w.dtype, g.dtype});
  }
  launch_sgd_step(w, g, use_u ? &u : nullptr, out, lr, momentum, weight_decay);
}

}  // namespace cuda
}  // namespace needle
