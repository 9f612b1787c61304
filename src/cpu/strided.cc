// Copies between strided views (compact, setitem), fill and dtype conversion.
// A copy does not care what the bits mean: the kernels run on unsigned
// integers of the element's width, so four instantiations serve eight dtypes.
#include <algorithm>
#include <cstring>

#include "common/convert.h"
#include "kernels.h"
#include "threads.h"

namespace needle {
namespace cpu {

namespace {

// A strided view reduced to its essentials: size-1 dims dropped and adjacent
// dims merged where the layout allows, so e.g. an im2col view's contiguous
// (kw, C) tail becomes one long unit-stride run.
struct StridedView {
  Shape shape;
  Shape strides;
  int64_t offset;
  int64_t size;
};

StridedView simplify(const Shape& shape, const Shape& strides, int64_t offset) {
  StridedView v{{}, {}, offset, shape_size(shape)};
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    if (!v.shape.empty() && v.strides.back() == strides[i] * shape[i]) {
      v.shape.back() *= shape[i];
      v.strides.back() = strides[i];
    } else {
      v.shape.push_back(shape[i]);
      v.strides.push_back(strides[i]);
    }
  }
  if (v.shape.empty()) {
    v.shape.push_back(1);
    v.strides.push_back(1);
  }
  return v;
}

// Calls body(flat_index, strided_offset, run_length, run_stride) for each
// innermost run of the view, splitting the runs across threads when large.
template <typename Body>
void for_each_run(const StridedView& v, Body body) {
  const int ndim = static_cast<int>(v.shape.size());
  const int64_t inner = v.shape[ndim - 1];
  const int64_t inner_stride = v.strides[ndim - 1];
  const int64_t runs = v.size / inner;
  const int64_t grain = std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(inner, 1));
  parallel_range(runs, grain, [&](int64_t begin, int64_t end) {
    Shape idx(ndim, 0);
    int64_t rem = begin, off = v.offset;
    for (int d = ndim - 2; d >= 0; --d) {
      idx[d] = rem % v.shape[d];
      rem /= v.shape[d];
      off += idx[d] * v.strides[d];
    }
    for (int64_t r = begin; r < end; ++r) {
      body(r * inner, off, inner, inner_stride);
      for (int d = ndim - 2; d >= 0; --d) {
        off += v.strides[d];
        if (++idx[d] < v.shape[d]) break;
        off -= idx[d] * v.strides[d];
        idx[d] = 0;
      }
    }
  });
}

// A view whose innermost dim is strided but another dim u has unit stride
// (a transpose or permutation): copy it plane by plane in kBlock x kBlock
// tiles, so reads run along u and writes along the last dim, both within
// cache lines. Returns false (caller takes the run-by-run path) otherwise.
constexpr int64_t kBlock = 32;

template <typename W>
bool compact_transposed(const StridedView& v, const W* src, W* dst) {
  const int ndim = static_cast<int>(v.shape.size());
  if (ndim < 2 || v.strides[ndim - 1] == 1) return false;
  int u = -1;
  for (int d = ndim - 2; d >= 0; --d)
    if (v.strides[d] == 1) { u = d; break; }
  if (u < 0 || v.shape[u] < kBlock / 2 || v.shape[ndim - 1] < kBlock / 2) return false;
  const int64_t nu = v.shape[u], nl = v.shape[ndim - 1], sl = v.strides[ndim - 1];
  // Compact (output) strides of dim u and of the other dims.
  Shape ostr(ndim, 1);
  for (int d = ndim - 2; d >= 0; --d) ostr[d] = ostr[d + 1] * v.shape[d + 1];
  const int64_t plane_count = v.size / (nu * nl);
  const int64_t ublocks = (nu + kBlock - 1) / kBlock;
  const int64_t ou = ostr[u];
  parallel_range(plane_count * ublocks, std::max<int64_t>(1, kParallelThreshold / (kBlock * nl)),
                 [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t plane = t / ublocks, ub = t % ublocks;
      // Offsets of this plane: decompose over every dim except u and the last.
      int64_t rem = plane, soff = v.offset, doff = 0;
      for (int d = ndim - 2; d >= 0; --d) {
        if (d == u) continue;
        const int64_t i = rem % v.shape[d];
        rem /= v.shape[d];
        soff += i * v.strides[d];
        doff += i * ostr[d];
      }
      const int64_t u0 = ub * kBlock, u1 = std::min(nu, u0 + kBlock);
      for (int64_t l0 = 0; l0 < nl; l0 += kBlock) {
        const int64_t l1 = std::min(nl, l0 + kBlock);
        for (int64_t i = u0; i < u1; ++i) {
          const W* s = src + soff + i + l0 * sl;
          W* o = dst + doff + i * ou + l0;
          for (int64_t l = 0; l < l1 - l0; ++l) o[l] = s[l * sl];
        }
      }
    }
  });
  return true;
}

// A view whose innermost run is short (an NHWC image with C = 3 read from
// NCHW, a small broadcast row): copy the last two dims per step, so the loop
// is not one callback per 3-element run. Returns false for other views.
constexpr int64_t kShortRun = 8;

template <typename W>
bool compact_short_runs(const StridedView& v, const W* src, W* dst) {
  const int ndim = static_cast<int>(v.shape.size());
  if (ndim < 2 || v.shape[ndim - 1] > kShortRun) return false;
  const int64_t n0 = v.shape[ndim - 1], s0 = v.strides[ndim - 1];
  StridedView rows{Shape(v.shape.begin(), v.shape.end() - 1), Shape(v.strides.begin(), v.strides.end() - 1),
                   v.offset, v.size / n0};
  for_each_run(rows, [&](int64_t i, int64_t off, int64_t n1, int64_t s1) {
    W* o = dst + i * n0;
    for (int64_t j = 0; j < n1; ++j) {
      const W* x = src + off + j * s1;
      for (int64_t k = 0; k < n0; ++k) o[j * n0 + k] = x[k * s0];
    }
  });
  return true;
}

template <typename W>
void compact_view(const StridedView& v, const W* src, W* dst) {
  if (compact_transposed(v, src, dst)) return;
  if (compact_short_runs(v, src, dst)) return;
  for_each_run(v, [&](int64_t i, int64_t off, int64_t n, int64_t s) {
    if (s == 0) {
      std::fill(dst + i, dst + i + n, src[off]);
    } else if (s == 1) {
      std::memcpy(dst + i, src + off, size_t(n) * sizeof(W));
    } else {
      for (int64_t k = 0; k < n; ++k) dst[i + k] = src[off + k * s];
    }
  });
}

template <typename W>
void set_view(const StridedView& v, const W* src, W* dst) {
  for_each_run(v, [&](int64_t i, int64_t off, int64_t n, int64_t s) {
    if (s == 1) {
      std::memmove(dst + off, src + i, size_t(n) * sizeof(W));
    } else {
      for (int64_t k = 0; k < n; ++k) dst[off + k * s] = src[i + k];
    }
  });
}

}  // namespace

void Compact(const Buffer& a, Buffer* out, Shape shape, Shape strides, int64_t offset) {
  // a is strided (shape, strides, offset); out is compact with prod(shape) elements, same dtype.
  check_same_dtype("compact", {a.dtype, out->dtype});
  check_view("compact", shape, strides, offset, a.size);
  StridedView v = simplify(shape, strides, offset);
  if (v.size != out->size)
    throw std::invalid_argument("compact: view of shape " + shape_str(shape) + " has " + std::to_string(v.size) +
                                " elements, out has " + std::to_string(out->size));
  if (v.size == 0) return;
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    compact_view<W>(v, a.data<W>(), out->data<W>());
  });
}

void EwiseSetitem(const Buffer& a, Buffer* out, Shape shape, Shape strides, int64_t offset) {
  // a is compact with prod(shape) elements; out is written through the strided view.
  check_same_dtype("ewise_setitem", {a.dtype, out->dtype});
  check_view("ewise_setitem", shape, strides, offset, out->size);
  StridedView v = simplify(shape, strides, offset);
  check_setitem_source("ewise_setitem", shape, v.size, a.size);
  if (v.size == 0) return;
  dispatch_width(a.dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    set_view<W>(v, a.data<W>(), out->data<W>());
  });
}

void ScalarSetitem(int64_t size, Scalar val, Buffer* out, Shape shape, Shape strides, int64_t offset) {
  // Writes val (converted to out's dtype) into every element of the strided view of out.
  check_view("scalar_setitem", shape, strides, offset, out->size);
  StridedView v = simplify(shape, strides, offset);
  check_setitem_count("scalar_setitem", shape, size, v.size);
  if (v.size == 0) return;
  dispatch_width(out->dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    const W bits = scalar_bits<W>(out->dtype, val);
    W* dst = out->data<W>();
    for_each_run(v, [&](int64_t, int64_t off, int64_t n, int64_t s) {
      for (int64_t k = 0; k < n; ++k) dst[off + k * s] = bits;
    });
  });
}

void Fill(Buffer* out, Scalar val) {
  dispatch_width(out->dtype, [&](auto tag) {
    using W = typename decltype(tag)::type;
    const W bits = scalar_bits<W>(out->dtype, val);
    W* o = out->data<W>();
    parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) { std::fill(o + lo, o + hi, bits); });
  });
}

void Astype(const Buffer& a, Buffer* out) {
  // a and out compact, same size: out = a converted to out's dtype (common/convert.h).
  check_same_size("astype", a.size, out->size);
  dispatch(a.dtype, [&](auto from_tag) {
    using From = typename decltype(from_tag)::type;
    dispatch(out->dtype, [&](auto to_tag) {
      using To = typename decltype(to_tag)::type;
      const From* x = a.data<From>();
      To* o = out->data<To>();
      parallel_range(a.size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) o[i] = convert<To>(x[i]);
      });
    });
  });
}

}  // namespace cpu
}  // namespace needle
