// Fused softmax cross-entropy, batch norm and optimizer steps (few passes per
// tensor), for float32 and float64: every float buffer of one call shares the
// dtype; labels come in any integer dtype or float-encoded (table.cu uploads
// them as int64 after checking them on the host).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "common/convert.h"
#include "cuda/functors.cuh"
#include "cuda/kernels.cuh"

namespace needle {
namespace cuda {

namespace {

template <typename F>
void dispatch_fused(DType dt, F&& f) {
  dispatch<kFusedMask>(dt, std::forward<F>(f));
}

// ---- softmax cross-entropy ----

// One block per row (grid-stride over rows): lse[i] = max + log(sum(exp(x - max))),
// row_loss[i] = lse[i] - x[labels[i]] in double (labels already validated on the host).
template <typename T>
__global__ void softmax_xent_kernel(const T* a, const int64_t* labels, T* lse, double* row_loss, int64_t n,
                                    int64_t k) {
  __shared__ T shared[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* x = a + i * k;
    T m = MaxReduce::identity<T>();
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) m = MaxReduce::combine(m, x[j]);
    m = block_reduce<MaxReduce>(m, shared);
    T s = T(0);
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) s += ExpOp{}(T(x[j] - m));
    s = block_reduce<SumReduce>(s, shared);
    if (threadIdx.x == 0) {
      const T l = isfinite(m) ? T(m + LogOp{}(s)) : T(NAN);
      lse[i] = l;
      row_loss[i] = static_cast<double>(l) - static_cast<double>(x[labels[i]]);
    }
  }
}

// loss[0] = mean of the n row losses, summed in double by one block.
template <typename T>
__global__ void mean_kernel(const double* v, T* out, int64_t n) {
  __shared__ double shared[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  shared[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = n ? static_cast<T>(shared[0] / static_cast<double>(n)) : T(NAN);
}

// out (n, k) compact = (exp(a[i, j] - lse[i]) - [j == labels[i]]) * c, c = g[0] * scale.
template <typename T>
__global__ void softmax_xent_grad_kernel(const T* a, const int64_t* labels, const T* lse, const T* g, T* out,
                                         int64_t n, int64_t k, T scale) {
  const T c = g[0] * scale;
  for (int64_t e = grid_tid(); e < n * k; e += grid_stride()) {
    const int64_t i = e / k, j = e - i * k;
    const T onehot = labels[i] == j ? T(1) : T(0);
    out[e] = (ExpOp{}(T(a[e] - lse[i])) - onehot) * c;
  }
}

// ---- batch norm over the rows of a (rows, cols) layout (channels last) ----
// One block per 32 columns: threadIdx.x is the column, the kBnRows rows of threads
// stride over the rows (coalesced along each row), sums in double.
constexpr int kBnCols = 32, kBnRows = 8;

// The sum over threadIdx.y of v, in a fixed order; every thread of the column gets it.
// Called by all threads of the block.
__device__ double bn_column_total(double v, double (*shared)[kBnCols]) {
  __syncthreads();  // shared may still be read from a previous call
  shared[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  double t = 0.0;
  for (int i = 0; i < kBnRows; ++i) t += shared[i][threadIdx.x];
  return t;
}

// mean = T(sum(x) / rows), var = T(sum((x - mean)^2) / rows) with the differences
// taken in double from the rounded mean; out = (x - mean) * T(w / sqrt(var + eps)) + b.
template <typename T>
__global__ void bn_forward_kernel(const T* x, const T* w, const T* b, T* out, T* mean, T* var, int64_t rows,
                                  int64_t cols, double eps) {
  __shared__ double shared[kBnRows][kBnCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBnCols + threadIdx.x;
  const bool ok = c < cols;
  double s = 0.0;
  if (ok)
    for (int64_t r = threadIdx.y; r < rows; r += kBnRows) s += x[r * cols + c];
  s = bn_column_total(s, shared);
  const T m = rows ? static_cast<T>(s / static_cast<double>(rows)) : T(0);
  double q = 0.0;
  if (ok)
    for (int64_t r = threadIdx.y; r < rows; r += kBnRows) {
      const double d = static_cast<double>(x[r * cols + c]) - static_cast<double>(m);
      q += d * d;
    }
  q = bn_column_total(q, shared);
  if (!ok) return;
  const T v = rows ? static_cast<T>(q / static_cast<double>(rows)) : T(0);
  if (threadIdx.y == 0) {
    mean[c] = m;
    var[c] = v;
  }
  const T sc = static_cast<T>(static_cast<double>(w[c]) / sqrt(static_cast<double>(v) + eps));
  const T bc = b[c];
  for (int64_t r = threadIdx.y; r < rows; r += kBnRows) out[r * cols + c] = (x[r * cols + c] - m) * sc + bc;
}

// db = sum(g), dw = inv sum(g (x - mean)) (double sums of double(g) times the T
// difference), dx = k ((g - gm) - (x - mean) c) with k, gm, c rounded to T.
template <typename T>
__global__ void bn_backward_kernel(const T* x, const T* g, const T* w, const T* mean, const T* var, T* dx, T* dw,
                                   T* db, int64_t rows, int64_t cols, double eps) {
  __shared__ double shared[kBnRows][kBnCols];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBnCols + threadIdx.x;
  const bool ok = c < cols;
  const T m = ok ? mean[c] : T(0);
  double sg = 0.0, sgx = 0.0;
  if (ok)
    for (int64_t r = threadIdx.y; r < rows; r += kBnRows) {
      const T gr = g[r * cols + c];
      sg += gr;
      sgx += static_cast<double>(gr) * static_cast<double>(T(x[r * cols + c] - m));
    }
  sg = bn_column_total(sg, shared);
  sgx = bn_column_total(sgx, shared);
  if (!ok) return;
  const double inv = 1.0 / sqrt(static_cast<double>(var[c]) + eps), k = static_cast<double>(w[c]) * inv;
  const double dwc = sgx * inv, n = static_cast<double>(rows > 0 ? rows : 1);
  if (threadIdx.y == 0) {
    db[c] = static_cast<T>(sg);
    dw[c] = static_cast<T>(dwc);
  }
  const T kf = static_cast<T>(k), gm = static_cast<T>(sg / n), cf = static_cast<T>(inv * dwc / n);
  for (int64_t r = threadIdx.y; r < rows; r += kBnRows) {
    const int64_t e = r * cols + c;
    dx[e] = kf * ((g[e] - gm) - (x[e] - m) * cf);
  }
}

// ---- optimizer steps ----
template <typename T>
struct AdamParams {
  T b1, b2, ob1, ob2, wd, decay, c1, c2, lr, eps;
};

template <typename T>
__global__ void adam_step_kernel(const T* w, const T* g, T* m, T* v, T* out, int64_t n, AdamParams<T> q) {
  for (int64_t j = grid_tid(); j < n; j += grid_stride()) {
    const T gw = q.wd != T(0) ? T(g[j] + q.wd * w[j]) : g[j];
    const T mj = q.b1 * m[j] + q.ob1 * gw;
    const T vj = q.b2 * v[j] + q.ob2 * (gw * gw);
    m[j] = mj;
    v[j] = vj;
    const T x = q.decay != T(1) ? T(w[j] * q.decay) : w[j];
    out[j] = x - q.lr * ((mj / q.c1) / (sqrt(vj / q.c2) + q.eps));
  }
}

// u == nullptr: plain SGD (momentum 0).
template <typename T>
__global__ void sgd_step_kernel(const T* w, const T* g, T* u, T* out, int64_t n, T mu, T omu, T wd, T lr) {
  for (int64_t j = grid_tid(); j < n; j += grid_stride()) {
    T d = wd != T(0) ? T(g[j] + wd * w[j]) : g[j];
    if (u != nullptr) {
      d = mu * u[j] + omu * d;
      u[j] = d;
    }
    out[j] = w[j] - lr * d;
  }
}

}  // namespace

// a is (n, k) compact logits, labels (n,) class numbers; lse (n,) gets each row's
// log-sum-exp, loss (1,) the mean of lse[i] - a[i, labels[i]].
void launch_softmax_xent(const Array& a, const int64_t* labels, Array& lse, Array& loss, int64_t n, int64_t k) {
  Scratch<double> row_loss(n);
  dispatch_fused(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n > 0 && k > 0) {
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535));
      softmax_xent_kernel<T><<<blocks, kThreads>>>(a.data<T>(), labels, lse.data<T>(), row_loss.get(), n, k);
      CHECK_LAUNCH("softmax_xent_kernel");
    }
    mean_kernel<T><<<1, kThreads>>>(row_loss.get(), loss.data<T>(), n);
    CHECK_LAUNCH("mean_kernel");
  });
}

// out (n, k) compact = (exp(a[i, j] - lse[i]) - [j == labels[i]]) * g[0] * scale.
void launch_softmax_xent_grad(const Array& a, const int64_t* labels, const Array& lse, const Array& g, Array& out,
                              int64_t n, int64_t k, double scale) {
  if (n * k == 0) return;
  dispatch_fused(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_xent_grad_kernel<T><<<grid_for(n * k), kThreads>>>(a.data<T>(), labels, lse.data<T>(), g.data<T>(),
                                                               out.data<T>(), n, k, static_cast<T>(scale));
    CHECK_LAUNCH("softmax_xent_grad_kernel");
  });
}

// x (rows, cols) compact, w, b (cols,): mean, var (cols,) get the column mean and biased
// variance (two passes), out = (x - mean) * w / sqrt(var + eps) + b.
void launch_bn_forward(const Array& x, const Array& w, const Array& b, Array& out, Array& mean, Array& var,
                       int64_t rows, int64_t cols, double eps) {
  if (cols == 0) return;
  dispatch_fused(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bn_forward_kernel<T><<<static_cast<unsigned>(ceil_div(cols, kBnCols)), dim3(kBnCols, kBnRows)>>>(
        x.data<T>(), w.data<T>(), b.data<T>(), out.data<T>(), mean.data<T>(), var.data<T>(), rows, cols, eps);
    CHECK_LAUNCH("bn_forward_kernel");
  });
}

// The adjoint of bn_forward for g (rows, cols): db = sum(g), dw = inv sum(g (x - mean)),
// dx = k ((g - gm) - (x - mean) c) (k = w inv, gm = db / rows, c = inv dw / rows).
void launch_bn_backward(const Array& x, const Array& g, const Array& w, const Array& mean, const Array& var,
                        Array& dx, Array& dw, Array& db, int64_t rows, int64_t cols, double eps) {
  if (cols == 0) return;
  dispatch_fused(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bn_backward_kernel<T><<<static_cast<unsigned>(ceil_div(cols, kBnCols)), dim3(kBnCols, kBnRows)>>>(
        x.data<T>(), g.data<T>(), w.data<T>(), mean.data<T>(), var.data<T>(), dx.data<T>(), dw.data<T>(),
        db.data<T>(), rows, cols, eps);
    CHECK_LAUNCH("bn_backward_kernel");
  });
}

// All compact, same size; m, v in place: g' = g + wd w, m = b1 m + (1-b1) g',
// v = b2 v + (1-b2) g'^2, out = decay w - lr (m/c1) / (sqrt(v/c2) + eps).
void launch_adam_step(const Array& w, const Array& g, Array& m, Array& v, Array& out, double lr, double beta1,
                      double beta2, double eps, double weight_decay, double decay, double bias_c1, double bias_c2) {
  if (out.size == 0) return;
  dispatch_fused(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const AdamParams<T> q{T(beta1), T(beta2), T(1 - beta1), T(1 - beta2), T(weight_decay),
                          T(decay), T(bias_c1), T(bias_c2), T(lr), T(eps)};
    adam_step_kernel<T><<<grid_for(out.size), kThreads>>>(w.data<T>(), g.data<T>(), m.data<T>(), v.data<T>(),
                                                          out.data<T>(), out.size, q);
    CHECK_LAUNCH("adam_step_kernel");
  });
}

// g' = g + wd w; with momentum (u non-null) u = mu u + (1-mu) g' in place and
// out = w - lr u; else out = w - lr g'.
void launch_sgd_step(const Array& w, const Array& g, Array* u, Array& out, double lr, double momentum,
                     double weight_decay) {
  if (out.size == 0) return;
  dispatch_fused(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    sgd_step_kernel<T><<<grid_for(out.size), kThreads>>>(w.data<T>(), g.data<T>(), u ? u->data<T>() : nullptr,
                                                         out.data<T>(), out.size, T(momentum), T(1 - momentum),
                                                         T(weight_decay), T(lr));
    CHECK_LAUNCH("sgd_step_kernel");
  });
}

}  // namespace cuda
}  // namespace needle
