// Fused kernels, one pass or two per tensor: softmax cross-entropy and its
// adjoint, batch norm and its adjoint, and the Adam and SGD steps. Each is
// written once for float and double (all float buffers of a call share one of
// those dtypes); float rows of the loss run on the vector layer.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "column_sums.h"
#include "kernels.h"
#include "simd.h"
#include "threads.h"

namespace needle {
namespace cpu {

namespace {

// log(sum(exp(x))) of one row of k values (max-subtracted); NaN if the row holds a NaN
// or its max is not finite (as the composition max + log(sum(exp(x - max))) gives).
template <typename T>
T row_logsumexp(const T* x, int64_t k) {
  T m = -INFINITY;
  bool nan = false;
  int64_t j = 0;
#ifdef NEEDLE_VEC_MATH
  if constexpr (std::is_same_v<T, float>) {
    VF vm = Vec::set(-INFINITY);
    bool vnan = false;
    for (; j + Vec::W <= k; j += Vec::W) {
      const VF v = Vec::load(x + j);
      vm = Vec::max(vm, v);
      vnan = vnan || Vec::any(Vec::is_nan(v));
    }
    m = Vec::hmax(vm);
    nan = vnan;
  }
#endif
  for (; j < k; ++j) {
    m = std::max(m, x[j]);
    nan |= std::isnan(x[j]);
  }
  if (nan || !std::isfinite(m)) return T(NAN);
  T s = 0;
  j = 0;
#ifdef NEEDLE_VEC_MATH
  if constexpr (std::is_same_v<T, float>) {
    const VF vmax = Vec::set(m);
    VF acc = Vec::set(0.0f);
    for (; j + Vec::W <= k; j += Vec::W) acc = Vec::add(acc, vexp(Vec::sub(Vec::load(x + j), vmax)));
    s = Vec::sum(acc);
  }
#endif
  for (; j < k; ++j) s += std::exp(x[j] - m);
  return m + std::log(s);
}

// o[j] = exp(x[j] - l) * c for one row (l is the row's log-sum-exp, so x - l <= 0).
template <typename T>
void row_softmax_scaled(const T* x, T* o, int64_t k, T l, T c) {
  if (std::isnan(l)) {
    std::fill(o, o + k, T(NAN));
    return;
  }
  int64_t j = 0;
#ifdef NEEDLE_VEC_MATH
  if constexpr (std::is_same_v<T, float>) {
    const VF vl = Vec::set(l), vc = Vec::set(c);
    for (; j + Vec::W <= k; j += Vec::W) Vec::store(o + j, Vec::mul(vexp(Vec::sub(Vec::load(x + j), vl)), vc));
  }
#endif
  for (; j < k; ++j) o[j] = std::exp(x[j] - l) * c;
}

// out[j] = sum over all rows of term(r, j). Rows split into a number of pieces fixed by
// the size alone (so the result does not depend on the thread count), added in order.
template <typename T, int64_t W, typename Term>
void column_sums(int64_t rows, int64_t cols, double* out, Term term) {
  std::fill(out, out + cols, 0.0);
  const int64_t pieces = std::max<int64_t>(1, std::min<int64_t>({64, rows, rows * cols / kParallelThreshold}));
  if (pieces == 1) {
    add_column_sums<T, double, W>(0, rows, cols, out, term);
    return;
  }
  std::vector<double> part(size_t(pieces * cols), 0.0);
  parallel_for(pieces, [&](int64_t t) {
    add_column_sums<T, double, W>(rows * t / pieces, rows * (t + 1) / pieces, cols, part.data() + t * cols, term);
  });
  for (int64_t t = 0; t < pieces; ++t)
    for (int64_t j = 0; j < cols; ++j) out[j] += part[size_t(t * cols + j)];
}

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(cols, 1)); }

}  // namespace

void SoftmaxXent(const Buffer& a, const Buffer& labels, Buffer* lse, Buffer* loss, int64_t n, int64_t k) {
  // a is (n, k) compact logits, labels (n,) class numbers; lse (n,) gets each row's
  // log-sum-exp, loss (1,) the mean of lse[i] - a[i, labels[i]].
  const DType dt = check_fused_dtype("softmax_xent", {a.dtype, lse->dtype, loss->dtype});
  check_softmax_xent("softmax_xent", a.size, labels.size, lse->size, loss->size, n, k);
  const std::vector<int64_t> y = row_indices("softmax_xent", labels, k);
  dispatch<kFusedMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    std::vector<double> row_loss(size_t(n), 0.0);
    parallel_range(n, row_grain(k), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* x = a.data<T>() + i * k;
        const T l = row_logsumexp(x, k);
        lse->data<T>()[i] = l;
        row_loss[size_t(i)] = double(l) - double(x[y[size_t(i)]]);
      }
    });
    double total = 0.0;
    for (double r : row_loss) total += r;
    loss->data<T>()[0] = n ? T(total / double(n)) : T(NAN);
  });
}

void SoftmaxXentGrad(const Buffer& a, const Buffer& labels, const Buffer& lse, const Buffer& g, Buffer* out,
                     int64_t n, int64_t k, double scale) {
  // a is (n, k) compact, labels and lse (n,), g (1,); out (n, k) compact gets
  // (exp(a[i, j] - lse[i]) - [j == labels[i]]) * g[0] * scale.
  const DType dt = check_fused_dtype("softmax_xent_grad", {a.dtype, lse.dtype, g.dtype, out->dtype});
  check_softmax_xent_grad("softmax_xent_grad", a.size, labels.size, lse.size, g.size, out->size, n, k);
  const std::vector<int64_t> y = row_indices("softmax_xent_grad", labels, k);
  dispatch<kFusedMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T c = g.data<T>()[0] * T(scale);
    parallel_range(n, row_grain(k), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        T* o = out->data<T>() + i * k;
        row_softmax_scaled(a.data<T>() + i * k, o, k, lse.data<T>()[i], c);
        o[y[size_t(i)]] -= c;
      }
    });
  });
}

// x is (rows, cols) compact, w, b (cols,); mean, var (cols,) get the column mean and
// biased variance (two passes: the centred second pass stays exact when |mean| >> std),
// out (rows, cols) = (x - mean) * s + b with s = w / sqrt(var + eps).
void BnForward(const Buffer& x, const Buffer& w, const Buffer& b, Buffer* out, Buffer* mean, Buffer* var,
               int64_t rows, int64_t cols, double eps) {
  const DType dt = check_fused_dtype("bn_forward", {x.dtype, w.dtype, b.dtype, out->dtype, mean->dtype, var->dtype});
  check_bn("bn_forward", rows, cols, {x.size, out->size}, {w.size, b.size, mean->size, var->size});
  dispatch<kFusedMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* m = mean->data<T>();
    T* v = var->data<T>();
    if (rows == 0) {
      std::fill(m, m + cols, T(0));
      std::fill(v, v + cols, T(0));
      return;
    }
    with_width(cols, [&](auto width) {
      constexpr int64_t W = decltype(width)::value;
      const int64_t nc = W ? W : cols;
      const T* xp = x.data<T>();
      std::vector<double> acc(static_cast<size_t>(nc));
      column_sums<T, W>(rows, nc, acc.data(), [xp, nc](int64_t r, int64_t j) { return xp[r * nc + j]; });
      for (int64_t j = 0; j < nc; ++j) m[j] = T(acc[size_t(j)] / double(rows));
      column_sums<T, W>(rows, nc, acc.data(), [xp, m, nc](int64_t r, int64_t j) {
        const T d = xp[r * nc + j] - m[j];
        return d * d;
      });
      std::vector<T> scale(static_cast<size_t>(nc));
      for (int64_t j = 0; j < nc; ++j) {
        v[j] = T(acc[size_t(j)] / double(rows));
        scale[size_t(j)] = T(double(w.data<T>()[j]) / std::sqrt(double(v[j]) + eps));
      }
      const T* s = scale.data();
      const T* bb = b.data<T>();
      T* o = out->data<T>();
      parallel_range(rows, row_grain(nc), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const T* xr = xp + r * nc;
          T* orow = o + r * nc;
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) orow[j] = (xr[j] - m[j]) * s[j] + bb[j];
        }
      });
    });
  });
}

// The adjoint of BnForward for g (rows, cols) compact: db = sum(g), dw = inv sum(g (x - mean))
// with inv = 1 / sqrt(var + eps), and dx = k ((g - gm) - (x - mean) c) with k = w inv,
// gm = db / rows, c = inv dw / rows (in double, rounded to T; differences first, so a
// constant column gives dx = 0 exactly).
void BnBackward(const Buffer& x, const Buffer& g, const Buffer& w, const Buffer& mean, const Buffer& var, Buffer* dx,
                Buffer* dw, Buffer* db, int64_t rows, int64_t cols, double eps) {
  const DType dt = check_fused_dtype("bn_backward", {x.dtype, g.dtype, w.dtype, mean.dtype, var.dtype, dx->dtype,
                                               dw->dtype, db->dtype});
  check_bn("bn_backward", rows, cols, {x.size, g.size, dx->size}, {w.size, mean.size, var.size, dw->size, db->size});
  dispatch<kFusedMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows == 0) {
      std::fill(dw->data<T>(), dw->data<T>() + cols, T(0));
      std::fill(db->data<T>(), db->data<T>() + cols, T(0));
      return;
    }
    with_width(cols, [&](auto width) {
      constexpr int64_t W = decltype(width)::value;
      const int64_t nc = W ? W : cols;
      const T* xp = x.data<T>();
      const T* gp = g.data<T>();
      const T* m = mean.data<T>();
      std::vector<double> sg(static_cast<size_t>(nc)), sgx(static_cast<size_t>(nc));
      column_sums<T, W>(rows, nc, sg.data(), [gp, nc](int64_t r, int64_t j) { return gp[r * nc + j]; });
      column_sums<T, W>(rows, nc, sgx.data(), [xp, gp, m, nc](int64_t r, int64_t j) {
        return gp[r * nc + j] * (xp[r * nc + j] - m[j]);
      });
      std::vector<T> coef(static_cast<size_t>(3 * nc));
      T* k = coef.data();
      T* gm = k + nc;
      T* c = gm + nc;
      for (int64_t j = 0; j < nc; ++j) {
        const double inv = 1.0 / std::sqrt(double(var.data<T>()[j]) + eps), kj = double(w.data<T>()[j]) * inv;
        const double dwj = sgx[size_t(j)] * inv;
        db->data<T>()[j] = T(sg[size_t(j)]);
        dw->data<T>()[j] = T(dwj);
        k[j] = T(kj);
        gm[j] = T(sg[size_t(j)] / double(rows));
        c[j] = T(inv * dwj / double(rows));
      }
      T* o = dx->data<T>();
      parallel_range(rows, row_grain(nc), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const T* xr = xp + r * nc;
          const T* gr = gp + r * nc;
          T* orow = o + r * nc;
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) orow[j] = k[j] * ((gr[j] - gm[j]) - (xr[j] - m[j]) * c[j]);
        }
      });
    });
  });
}

void AdamStep(const Buffer& w, const Buffer& g, Buffer* m, Buffer* v, Buffer* out, double lr, double beta1,
              double beta2, double eps, double weight_decay, double decay, double bias_c1, double bias_c2) {
  // All compact, same size and dtype; m, v in place: g' = g + wd w, m = b1 m + (1-b1) g',
  // v = b2 v + (1-b2) g'^2, out = decay w - lr (m/c1) / (sqrt(v/c2) + eps).
  const DType dt = check_fused_dtype("adam_step", {w.dtype, g.dtype, m->dtype, v->dtype, out->dtype});
  check_step("adam_step", out->size, {w.size, g.size, m->size, v->size});
  dispatch<kFusedMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T b1 = T(beta1), b2 = T(beta2), ob1 = T(1 - beta1), ob2 = T(1 - beta2);
    const T wd = T(weight_decay), dc = T(decay), c1 = T(bias_c1), c2 = T(bias_c2), fl = T(lr), fe = T(eps);
    const T* x = w.data<T>();
    const T* gr = g.data<T>();
    T* mm = m->data<T>();
    T* vv = v->data<T>();
    T* o = out->data<T>();
    parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
      int64_t j = lo;
#ifdef NEEDLE_VEC_MATH
      if constexpr (std::is_same_v<T, float>) {
        // The same steps in vector registers (the scalar loop does not vectorise: sqrt may set errno).
        const VF vb1 = Vec::set(b1), vb2 = Vec::set(b2), vob1 = Vec::set(ob1), vob2 = Vec::set(ob2),
                 vwd = Vec::set(wd), vdc = Vec::set(dc), vc1 = Vec::set(c1), vc2 = Vec::set(c2), vlr = Vec::set(fl),
                 veps = Vec::set(fe);
        for (; j + Vec::W <= hi; j += Vec::W) {
          const VF xj = Vec::load(x + j);
          const VF gw = Vec::fma(vwd, xj, Vec::load(gr + j));
          const VF mj = Vec::fma(vb1, Vec::load(mm + j), Vec::mul(vob1, gw));
          const VF vj = Vec::fma(vb2, Vec::load(vv + j), Vec::mul(vob2, Vec::mul(gw, gw)));
          Vec::store(mm + j, mj);
          Vec::store(vv + j, vj);
          const VF den = Vec::add(Vec::sqrt(Vec::div(vj, vc2)), veps);
          const VF upd = Vec::div(Vec::div(mj, vc1), den);
          Vec::store(o + j, Vec::fnma(vlr, upd, Vec::mul(vdc, xj)));
        }
      }
#endif
      for (; j < hi; ++j) {
        const T gw = gr[j] + wd * x[j];
        const T mj = b1 * mm[j] + ob1 * gw;
        const T vj = b2 * vv[j] + ob2 * (gw * gw);
        mm[j] = mj;
        vv[j] = vj;
        o[j] = dc * x[j] - fl * ((mj / c1) / (std::sqrt(vj / c2) + fe));
      }
    });
  });
}

void SgdStep(const Buffer& w, const Buffer& g, Buffer* u, Buffer* out, double lr, double momentum,
             double weight_decay) {
  // All compact, same size: g' = g + wd w; with momentum u = mu u + (1-mu) g' (in
  // place) and out = w - lr u, else out = w - lr g' (u untouched).
  const bool use_u = momentum != 0.0;
  if (use_u) {
    check_fused_dtype("sgd_step", {w.dtype, g.dtype, u->dtype, out->dtype});
    check_step("sgd_step", out->size, {w.size, g.size, u->size});
  } else {
    check_fused_dtype("sgd_step", {w.dtype, g.dtype, out->dtype});
    check_step("sgd_step", out->size, {w.size, g.size});
  }
  dispatch<kFusedMask>(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T mu = T(momentum), omu = T(1 - momentum), wd = T(weight_decay), fl = T(lr);
    const T* x = w.data<T>();
    const T* gr = g.data<T>();
    T* uu = u->data<T>();
    T* o = out->data<T>();
    parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
      if (use_u) {
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) {
          const T uj = mu * uu[j] + omu * (gr[j] + wd * x[j]);
          uu[j] = uj;
          o[j] = x[j] - fl * uj;
        }
      } else {
#pragma omp simd
        for (int64_t j = lo; j < hi; ++j) o[j] = x[j] - fl * (gr[j] + wd * x[j]);
      }
    });
  });
}

}  // namespace cpu
}  // namespace needle
