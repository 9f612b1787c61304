// Products of typed buffers over the GEMM of gemm.h: strided batched products
// (bmm, with the naive reference beside it) and the course's tiled layout.
#include <algorithm>
#include <type_traits>

#include "common/convert.h"
#include "gemm.h"
#include "kernels.h"
#include "threads.h"

namespace needle {
namespace cpu {

namespace {

constexpr int64_t kTile = 8;

template <typename T>
using GemmFn = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, int64_t, int64_t, T*,
                        int64_t);

// a is (batch, m, n) strided by sa from oa, b is (batch, n, p) strided by sb from ob,
// out is (batch, m, p) compact. A batch stride of 0 broadcasts.
template <bool Naive>
void batched(const char* fn, const Buffer& a, const Buffer& b, Buffer* out, int64_t batch, int64_t m, int64_t n,
             int64_t p, const Shape& sa, int64_t oa, const Shape& sb, int64_t ob) {
  const DType dt = check_matmul_dtype(fn, a.dtype, b.dtype, out->dtype);
  check_bmm(fn, a.size, b.size, out->size, batch, m, n, p, sa, oa, sb, ob);
  if (batch * m * p == 0) return;
  dispatch<kNumericMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const GemmFn<T> gemm_fn = Naive ? gemm_naive<T> : gemm<T>;
    const T* x = a.data<T>();
    const T* y = b.data<T>();
    T* o = out->data<T>();
    // Many small products (attention heads) parallelise over the batch; a few
    // large ones let the GEMM use the threads.
    auto one = [&](int64_t i) {
      gemm_fn(m, p, n, x + oa + i * sa[0], sa[1], sa[2], y + ob + i * sb[0], sb[1], sb[2], o + i * m * p, p);
    };
    const bool over_batch =
        batch > 1 && batch >= pool_threads() && m * n * p < (1 << 20) && batch * m * n * p >= (1 << 18);
    if (over_batch) {
      parallel_for(batch, one);
    } else {
      for (int64_t i = 0; i < batch; ++i) one(i);
    }
  });
}

}  // namespace

void Matmul(const Buffer& a, const Buffer& b, Buffer* out, int64_t m, int64_t n, int64_t p) {
  // a is (m, n) compact, b is (n, p) compact, out is (m, p) compact.
  const DType dt = check_matmul_dtype("matmul", a.dtype, b.dtype, out->dtype);
  check_matmul_sizes("matmul", a.size, b.size, out->size, m, n, p);
  if (m * p == 0) return;
  dispatch<kNumericMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    gemm<T>(m, p, n, a.data<T>(), n, 1, b.data<T>(), p, 1, out->data<T>(), p);
  });
}

void Bmm(const Buffer& a, const Buffer& b, Buffer* out, int64_t batch, int64_t m, int64_t n, int64_t p, Shape sa,
         int64_t oa, Shape sb, int64_t ob) {
  batched<false>("bmm", a, b, out, batch, m, n, p, sa, oa, sb, ob);
}

void BmmNaive(const Buffer& a, const Buffer& b, Buffer* out, int64_t batch, int64_t m, int64_t n, int64_t p,
              Shape sa, int64_t oa, Shape sb, int64_t ob) {
  batched<true>("bmm_naive", a, b, out, batch, m, n, p, sa, oa, sb, ob);
}

void MatmulTiled(const Buffer& a, const Buffer& b, Buffer* out, int64_t m, int64_t n, int64_t p) {
  // a is (m/T, n/T, T, T), b is (n/T, p/T, T, T), out is (m/T, p/T, T, T); all
  // compact, dims multiples of T. Kept for the course's tiled-layout path.
  const DType dt = check_matmul_dtype("matmul_tiled", a.dtype, b.dtype, out->dtype);
  check_matmul_sizes("matmul_tiled", a.size, b.size, out->size, m, n, p);
  if (m % kTile || n % kTile || p % kTile)
    throw std::invalid_argument("matmul_tiled: dims (" + std::to_string(m) + ", " + std::to_string(n) + ", " +
                                std::to_string(p) + ") must be multiples of " + std::to_string(kTile));
  dispatch<kNumericMask>(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const int64_t mt = m / kTile, nt = n / kTile, pt = p / kTile;
    const int64_t grain = m * n * p > (1 << 18) ? 1 : std::max<int64_t>(1, mt * pt);
    parallel_range(mt * pt, grain, [&](int64_t lo, int64_t hi) {
      C acc[kTile * kTile];
      for (int64_t t = lo; t < hi; ++t) {
        const int64_t i = t / pt, j = t % pt;
        std::fill(acc, acc + kTile * kTile, C(0));
        for (int64_t k = 0; k < nt; ++k) {
          const T* x = a.data<T>() + (i * nt + k) * kTile * kTile;
          const T* y = b.data<T>() + (k * pt + j) * kTile * kTile;
          for (int64_t r = 0; r < kTile; ++r)
            for (int64_t s = 0; s < kTile; ++s)
              for (int64_t c = 0; c < kTile; ++c)
                acc[r * kTile + c] = C(acc[r * kTile + c] + C(widen(x[r * kTile + s])) * C(widen(y[s * kTile + c])));
        }
        T* o = out->data<T>() + (i * pt + j) * kTile * kTile;
        for (int64_t e = 0; e < kTile * kTile; ++e) o[e] = convert<T>(acc[e]);
      }
    });
  });
}

}  // namespace cpu
}  // namespace needle
