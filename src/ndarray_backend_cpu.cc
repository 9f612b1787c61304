// CPU backend of needle's NDArray: flat float32 buffers and the kernels that
// read and write them. The function table mirrors
// python/needle/backend_ndarray/ndarray_backend_numpy.py exactly.
//
// Every entry point checks sizes, shapes and strided extents before touching
// memory, so a bad call is a Python exception rather than a wild access.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "cpu_gemm.h"
#include "cpu_threads.h"

namespace needle {
namespace cpu {

namespace py = pybind11;
using Shape = std::vector<int64_t>;

constexpr size_t kAlignment = 256;
constexpr int64_t kTile = 8;
// Below this many elements a loop stays on one thread: waking the team costs
// more than the work (a ResNet9 step's 64K-256K-element arrays ran 15% slower
// on 2 threads with 32K).
constexpr int64_t kParallelThreshold = 1 << 18;

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------
// Large buffers come from a small cache of freed blocks: a training step
// allocates the same shapes every iteration, and a fresh multi-megabyte
// buffer costs a page fault per 4 KiB on first touch (a 64 MiB ewise_add ran
// at half speed into a fresh output; a conv backward's 576 KiB GEMM output took
// 2-4x its 0.2 ms product in faults, since malloc serves such sizes from fresh
// mmaps). Blocks from kCachedBytes up are cached; fresh blocks from kLargeBytes
// up are 2 MiB aligned and marked for transparent huge pages. The cache holds
// at most kCacheBytes.
constexpr size_t kCachedBytes = size_t(64) << 10;
constexpr size_t kLargeBytes = size_t(1) << 20;
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kCacheBytes = size_t(512) << 20;

class BlockCache {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // leaked: outlives every array
    return *cache;
  }
  // bytes is already rounded to a multiple of kAlignment.
  float* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        float* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        return p;
      }
    }
    if (bytes < kLargeBytes) {
      void* p = std::aligned_alloc(kAlignment, bytes);
      if (p == nullptr) {
        trim();
        p = std::aligned_alloc(kAlignment, bytes);
      }
      return static_cast<float*>(p);
    }
    void* p = std::aligned_alloc(kHugePage, ((bytes + kHugePage - 1) / kHugePage) * kHugePage);
    if (p == nullptr) {
      trim();
      p = std::aligned_alloc(kHugePage, ((bytes + kHugePage - 1) / kHugePage) * kHugePage);
      if (p == nullptr) return nullptr;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, ((bytes + kHugePage - 1) / kHugePage) * kHugePage, MADV_HUGEPAGE);
#endif
    return static_cast<float*>(p);
  }
  void give(float* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= kCacheBytes) {
        free_[bytes].push_back(p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }
  void trim() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_)
      for (float* p : kv.second) std::free(p);
    free_.clear();
    cached_ = 0;
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<float*>> free_;
  size_t cached_ = 0;
};

struct AlignedArray {
  explicit AlignedArray(int64_t size) : size(size) {
    if (size < 0) throw std::invalid_argument("Array size must be >= 0, got " + std::to_string(size));
    bytes = std::max<size_t>(kAlignment, ((size_t(size) * sizeof(float) + kAlignment - 1) / kAlignment) * kAlignment);
    ptr = bytes >= kCachedBytes ? BlockCache::get().take(bytes)
                               : static_cast<float*>(std::aligned_alloc(kAlignment, bytes));
    if (ptr == nullptr) throw std::bad_alloc();
  }
  ~AlignedArray() {
    if (bytes >= kCachedBytes) {
      BlockCache::get().give(ptr, bytes);
    } else {
      std::free(ptr);
    }
  }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  size_t ptr_as_int() const { return reinterpret_cast<size_t>(ptr); }

  float* ptr;
  int64_t size;
  size_t bytes;
};

// Splits [0, n) into pieces of at least `grain` elements and runs
// body(begin, end) on the pool's threads; one piece (serial) when small.
template <typename Body>
void parallel_range(int64_t n, int64_t grain, Body body) {
  const int64_t nt = pool_threads();
  if (nt <= 1 || n <= grain) {
    body(int64_t(0), n);
    return;
  }
  // A few pieces per thread so a thread that loses its core is covered by the others.
  const int64_t pieces = std::min<int64_t>((n + grain - 1) / grain, nt * 4);
  parallel_for(pieces, [&](int64_t t) { body(n * t / pieces, n * (t + 1) / pieces); });
}

int num_threads() { return pool_threads(); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: need n >= 1, got " + std::to_string(n));
  set_pool_threads(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

// ---------------------------------------------------------------------------
// Compact and setitem
// ---------------------------------------------------------------------------
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
  StridedView v{{}, {}, offset, 1};
  for (size_t i = 0; i < shape.size(); ++i) v.size *= shape[i];
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

void check_view(const char* fn, const Shape& shape, const Shape& strides, int64_t offset, int64_t buffer_size) {
  if (shape.size() != strides.size())
    throw std::invalid_argument(std::string(fn) + ": shape " + shape_str(shape) + " and strides " + shape_str(strides) +
                                " differ in length");
  // Sizes and reaches are overflow-checked: a wrapped product could pass the
  // bounds test below and let a kernel walk outside the buffer.
  const auto overflow = [&]() {
    return std::invalid_argument(std::string(fn) + ": view of shape " + shape_str(shape) + ", strides " +
                                 shape_str(strides) + " overflows 64-bit indexing");
  };
  int64_t size = 1, lo = offset, hi = offset;
  bool empty = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) throw std::invalid_argument(std::string(fn) + ": negative dim in shape " + shape_str(shape));
    empty = empty || shape[i] == 0;
  }
  if (empty) return;
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t reach;
    if (__builtin_mul_overflow(size, shape[i], &size) || __builtin_mul_overflow(shape[i] - 1, strides[i], &reach) ||
        __builtin_add_overflow(reach < 0 ? lo : hi, reach, reach < 0 ? &lo : &hi))
      throw overflow();
  }
  if (lo < 0 || hi >= buffer_size)
    throw std::out_of_range(std::string(fn) + ": view of shape " + shape_str(shape) + ", strides " + shape_str(strides) +
                            ", offset " + std::to_string(offset) + " reaches elements [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "] outside a buffer of " + std::to_string(buffer_size));
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

bool compact_transposed(const StridedView& v, const float* src, float* dst) {
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
          const float* s = src + soff + i + l0 * sl;
          float* o = dst + doff + i * ou + l0;
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

bool compact_short_runs(const StridedView& v, const float* src, float* dst) {
  const int ndim = static_cast<int>(v.shape.size());
  if (ndim < 2 || v.shape[ndim - 1] > kShortRun) return false;
  const int64_t n0 = v.shape[ndim - 1], s0 = v.strides[ndim - 1];
  StridedView rows{Shape(v.shape.begin(), v.shape.end() - 1), Shape(v.strides.begin(), v.strides.end() - 1),
                   v.offset, v.size / n0};
  for_each_run(rows, [&](int64_t i, int64_t off, int64_t n1, int64_t s1) {
    float* o = dst + i * n0;
    for (int64_t j = 0; j < n1; ++j) {
      const float* x = src + off + j * s1;
      for (int64_t k = 0; k < n0; ++k) o[j * n0 + k] = x[k * s0];
    }
  });
  return true;
}

void Compact(const AlignedArray& a, AlignedArray* out, Shape shape, Shape strides, int64_t offset) {
  // a is strided (shape, strides, offset); out is compact with prod(shape) elements.
  check_view("compact", shape, strides, offset, a.size);
  StridedView v = simplify(shape, strides, offset);
  if (v.size != out->size)
    throw std::invalid_argument("compact: view of shape " + shape_str(shape) + " has " + std::to_string(v.size) +
                                " elements, out has " + std::to_string(out->size));
  if (v.size == 0) return;
  const float* src = a.ptr;
  float* dst = out->ptr;
  if (compact_transposed(v, src, dst)) return;
  if (compact_short_runs(v, src, dst)) return;
  for_each_run(v, [&](int64_t i, int64_t off, int64_t n, int64_t s) {
    if (s == 0) {
      std::fill(dst + i, dst + i + n, src[off]);
    } else if (s == 1) {
      std::memcpy(dst + i, src + off, size_t(n) * sizeof(float));
    } else {
      for (int64_t k = 0; k < n; ++k) dst[i + k] = src[off + k * s];
    }
  });
}

void EwiseSetitem(const AlignedArray& a, AlignedArray* out, Shape shape, Shape strides, int64_t offset) {
  // a is compact with prod(shape) elements; out is written through the strided view.
  check_view("ewise_setitem", shape, strides, offset, out->size);
  StridedView v = simplify(shape, strides, offset);
  if (v.size > a.size)
    throw std::invalid_argument("ewise_setitem: view of shape " + shape_str(shape) + " needs " +
                                std::to_string(v.size) + " elements, source has " + std::to_string(a.size));
  if (v.size == 0) return;
  const float* src = a.ptr;
  float* dst = out->ptr;
  for_each_run(v, [&](int64_t i, int64_t off, int64_t n, int64_t s) {
    if (s == 1) {
      std::memmove(dst + off, src + i, size_t(n) * sizeof(float));
    } else {
      for (int64_t k = 0; k < n; ++k) dst[off + k * s] = src[i + k];
    }
  });
}

void ScalarSetitem(int64_t size, float val, AlignedArray* out, Shape shape, Shape strides, int64_t offset) {
  // Writes val into every element of the strided view of out.
  check_view("scalar_setitem", shape, strides, offset, out->size);
  StridedView v = simplify(shape, strides, offset);
  if (v.size != size)
    throw std::invalid_argument("scalar_setitem: size " + std::to_string(size) + " does not match shape " +
                                shape_str(shape));
  if (v.size == 0) return;
  float* dst = out->ptr;
  for_each_run(v, [&](int64_t, int64_t off, int64_t n, int64_t s) {
    for (int64_t k = 0; k < n; ++k) dst[off + k * s] = val;
  });
}

void Fill(AlignedArray* out, float val) {
  float* o = out->ptr;
  parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) { std::fill(o + lo, o + hi, val); });
}

// ---------------------------------------------------------------------------
// Elementwise and scalar operations
// ---------------------------------------------------------------------------
struct Add { float operator()(float x, float y) const { return x + y; } };
struct Mul { float operator()(float x, float y) const { return x * y; } };
struct Div { float operator()(float x, float y) const { return x / y; } };
struct Power { float operator()(float x, float y) const { return std::pow(x, y); } };
struct Maximum { float operator()(float x, float y) const { return x > y || std::isnan(x) ? x : y; } };
struct Eq { float operator()(float x, float y) const { return x == y ? 1.0f : 0.0f; } };
struct Ge { float operator()(float x, float y) const { return x >= y ? 1.0f : 0.0f; } };
struct Log { float operator()(float x) const { return std::log(x); } };
struct Exp { float operator()(float x) const { return std::exp(x); } };
struct Tanh { float operator()(float x) const { return std::tanh(x); } };

void check_same_size(const char* fn, int64_t a, int64_t out) {
  if (a != out)
    throw std::invalid_argument(std::string(fn) + ": input has " + std::to_string(a) + " elements, out has " +
                                std::to_string(out));
}

template <typename F>
void ewise(const char* fn, const AlignedArray& a, const AlignedArray& b, AlignedArray* out) {
  check_same_size(fn, a.size, out->size);
  check_same_size(fn, b.size, out->size);
  const float* x = a.ptr;
  const float* y = b.ptr;
  float* o = out->ptr;
  const int64_t n = out->size;
  parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    F f;
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = f(x[i], y[i]);
  });
}

template <typename F>
void scalar(const char* fn, const AlignedArray& a, float val, AlignedArray* out) {
  check_same_size(fn, a.size, out->size);
  const float* x = a.ptr;
  float* o = out->ptr;
  const int64_t n = out->size;
  parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    F f;
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = f(x[i], val);
  });
}

template <typename F>
void unary(const char* fn, const AlignedArray& a, AlignedArray* out) {
  check_same_size(fn, a.size, out->size);
  const float* x = a.ptr;
  float* o = out->ptr;
  const int64_t n = out->size;
  parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    F f;
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) o[i] = f(x[i]);
  });
}

// ---- exp, log, tanh: vectorised fast paths beside the libm loop (unary<Exp> etc.) ----
// Cephes' single-precision algorithms, 8 (AVX2) or 16 (AVX-512) lanes wide with FMA:
// exp: n = round(x / ln 2), r = x - n ln 2 in two parts, a degree-5 polynomial, then
// the scale 2^n applied as 2^(n/2) * 2^(n - n/2) so that results near overflow and in
// the denormal range round once, like expf. log: x = m 2^e with m in [sqrt(1/2),
// sqrt(2)), a degree-9 polynomial in m - 1 (denormal inputs rescaled by 2^23 first).
// tanh: an odd degree-11 polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above.
// Special values are set explicitly: exp(NaN) = NaN, exp(+-inf) = inf / 0 (and
// overflow to inf, underflow through denormals to 0); log(0) = -inf, log(x < 0) = NaN,
// log(inf) = inf; tanh(+-inf) = +-1, tanh(-0) = -0. Within 2 ulp of libm over the float
// range (tests/test_cpu_kernels.py). The libm loops stay the reference and the path of
// builds without AVX2.
#if defined(__AVX512F__)
struct Vec {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  static constexpr int W = 16;
  static F set(float v) { return _mm512_set1_ps(v); }
  static I seti(int v) { return _mm512_set1_epi32(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(F a) { return _mm512_cvtps_epi32(a); }  // a already integral
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I andi(I a, I b) { return _mm512_and_si512(a, b); }
  static I ori(I a, I b) { return _mm512_or_si512(a, b); }
  static I shl23(I a) { return _mm512_slli_epi32(a, 23); }
  static I sra1(I a) { return _mm512_srai_epi32(a, 1); }
  static I srl23(I a) { return _mm512_srli_epi32(a, 23); }
  static F asf(I a) { return _mm512_castsi512_ps(a); }
  static I asi(F a) { return _mm512_castps_si512(a); }
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M not_ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_NGE_UQ); }  // a < b or unordered
  static M is_nan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static F sel(M m, F yes, F no) { return _mm512_mask_blend_ps(m, no, yes); }
  static I seli(M m, I yes, I no) { return _mm512_mask_blend_epi32(m, no, yes); }
};
#define NEEDLE_VEC_MATH 1
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  using F = __m256;
  using I = __m256i;
  using M = __m256;
  static constexpr int W = 8;
  static F set(float v) { return _mm256_set1_ps(v); }
  static I seti(int v) { return _mm256_set1_epi32(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(F a) { return _mm256_cvtps_epi32(a); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I andi(I a, I b) { return _mm256_and_si256(a, b); }
  static I ori(I a, I b) { return _mm256_or_si256(a, b); }
  static I shl23(I a) { return _mm256_slli_epi32(a, 23); }
  static I sra1(I a) { return _mm256_srai_epi32(a, 1); }
  static I srl23(I a) { return _mm256_srli_epi32(a, 23); }
  static F asf(I a) { return _mm256_castsi256_ps(a); }
  static I asi(F a) { return _mm256_castps_si256(a); }
  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M not_ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_NGE_UQ); }
  static M is_nan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static F sel(M m, F yes, F no) { return _mm256_blendv_ps(no, yes, m); }
  static I seli(M m, I yes, I no) { return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(no), _mm256_castsi256_ps(yes), m)); }
};
#define NEEDLE_VEC_MATH 1
#endif

#ifdef NEEDLE_VEC_MATH
using VF = Vec::F;

inline VF vexp(VF x) {
  // Clamped to [-104, 89]: below, exp rounds to 0; above, to inf (n = 128 still scales
  // by 2^64 * 2^64 without an invalid exponent). NaN lanes are put back at the end.
  const VF xc = Vec::min(Vec::max(x, Vec::set(-104.0f)), Vec::set(89.0f));
  const VF n = Vec::round(Vec::mul(xc, Vec::set(1.44269504088896341f)));
  VF r = Vec::fnma(n, Vec::set(0.693359375f), xc);
  r = Vec::fnma(n, Vec::set(-2.12194440e-4f), r);
  VF p = Vec::set(1.9875691500e-4f);
  p = Vec::fma(p, r, Vec::set(1.3981999507e-3f));
  p = Vec::fma(p, r, Vec::set(8.3334519073e-3f));
  p = Vec::fma(p, r, Vec::set(4.1665795894e-2f));
  p = Vec::fma(p, r, Vec::set(1.6666665459e-1f));
  p = Vec::fma(p, r, Vec::set(5.0000001201e-1f));
  const VF y = Vec::fma(Vec::mul(p, r), r, Vec::add(r, Vec::set(1.0f)));
  const auto ni = Vec::to_int(n);
  const auto n1 = Vec::sra1(ni);
  const auto n2 = Vec::subi(ni, n1);
  const VF s1 = Vec::asf(Vec::shl23(Vec::addi(n1, Vec::seti(127))));
  const VF s2 = Vec::asf(Vec::shl23(Vec::addi(n2, Vec::seti(127))));
  return Vec::sel(Vec::is_nan(x), x, Vec::mul(Vec::mul(y, s1), s2));
}

inline VF vlog(VF x) {
  // Denormals (and 0) are scaled into the normal range first; their exponent is fixed below.
  const auto tiny = Vec::lt(x, Vec::set(1.17549435e-38f));
  const VF xs = Vec::sel(tiny, Vec::mul(x, Vec::set(8388608.0f)), x);
  const auto bits = Vec::asi(xs);
  VF e = Vec::to_float(Vec::subi(Vec::srl23(bits), Vec::seti(126)));
  e = Vec::sub(e, Vec::sel(tiny, Vec::set(23.0f), Vec::set(0.0f)));
  // m in [0.5, 1); below sqrt(1/2) it is doubled (and e lowered) so that m - 1 is small.
  const VF m = Vec::asf(Vec::ori(Vec::andi(bits, Vec::seti(0x007fffff)), Vec::seti(0x3f000000)));
  const auto low = Vec::lt(m, Vec::set(0.707106781186547524f));
  e = Vec::sub(e, Vec::sel(low, Vec::set(1.0f), Vec::set(0.0f)));
  const VF f = Vec::sub(Vec::add(m, Vec::sel(low, m, Vec::set(0.0f))), Vec::set(1.0f));
  const VF z = Vec::mul(f, f);
  VF p = Vec::set(7.0376836292e-2f);
  p = Vec::fma(p, f, Vec::set(-1.1514610310e-1f));
  p = Vec::fma(p, f, Vec::set(1.1676998740e-1f));
  p = Vec::fma(p, f, Vec::set(-1.2420140846e-1f));
  p = Vec::fma(p, f, Vec::set(1.4249322787e-1f));
  p = Vec::fma(p, f, Vec::set(-1.6668057665e-1f));
  p = Vec::fma(p, f, Vec::set(2.0000714765e-1f));
  p = Vec::fma(p, f, Vec::set(-2.4999993993e-1f));
  p = Vec::fma(p, f, Vec::set(3.3333331174e-1f));
  VF y = Vec::mul(Vec::mul(p, f), z);
  y = Vec::fma(e, Vec::set(-2.12194440e-4f), y);
  y = Vec::fnma(Vec::set(0.5f), z, y);
  VF r = Vec::fma(e, Vec::set(0.693359375f), Vec::add(f, y));
  r = Vec::sel(Vec::eq(x, Vec::set(INFINITY)), x, r);
  r = Vec::sel(Vec::eq(x, Vec::set(0.0f)), Vec::set(-INFINITY), r);
  return Vec::sel(Vec::not_ge(x, Vec::set(0.0f)), Vec::set(NAN), r);  // x < 0 or NaN
}

inline VF vtanh(VF x) {
  const VF sign = Vec::asf(Vec::andi(Vec::asi(x), Vec::seti(int(0x80000000u))));
  const VF ax = Vec::asf(Vec::andi(Vec::asi(x), Vec::seti(0x7fffffff)));
  // Both branches compute tanh(|x|) >= 0 and take the sign of x last (so tanh(-0) = -0).
  const VF z = Vec::mul(x, x);
  VF p = Vec::set(-5.70498872745e-3f);
  p = Vec::fma(p, z, Vec::set(2.06390887954e-2f));
  p = Vec::fma(p, z, Vec::set(-5.37397155531e-2f));
  p = Vec::fma(p, z, Vec::set(1.33314422036e-1f));
  p = Vec::fma(p, z, Vec::set(-3.33332819422e-1f));
  const VF small = Vec::fma(Vec::mul(p, z), ax, ax);
  // 1 - 2 / (exp(2|x|) + 1); exp(2|x|) = inf gives exactly 1.
  const VF big = Vec::sub(Vec::set(1.0f), Vec::div(Vec::set(2.0f), Vec::add(vexp(Vec::add(ax, ax)), Vec::set(1.0f))));
  const VF t = Vec::sel(Vec::lt(ax, Vec::set(0.625f)), small, big);
  return Vec::asf(Vec::ori(Vec::asi(t), Vec::asi(sign)));
}

// out[i] = f(a[i]) over (n,) compact arrays; the ragged tail goes through the same
// vector code on a padded copy, so an element's result does not depend on its position.
template <typename F>
void unary_vec(const char* fn, const AlignedArray& a, AlignedArray* out, F f) {
  check_same_size(fn, a.size, out->size);
  const float* x = a.ptr;
  float* o = out->ptr;
  parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    for (; i + Vec::W <= hi; i += Vec::W) Vec::store(o + i, f(Vec::load(x + i)));
    if (i < hi) {
      alignas(64) float buf[Vec::W] = {};
      std::memcpy(buf, x + i, size_t(hi - i) * sizeof(float));
      Vec::store(buf, f(Vec::load(buf)));
      std::memcpy(o + i, buf, size_t(hi - i) * sizeof(float));
    }
  });
}
#endif

void EwiseExp(const AlignedArray& a, AlignedArray* out) {
#ifdef NEEDLE_VEC_MATH
  unary_vec("ewise_exp", a, out, vexp);
#else
  unary<Exp>("ewise_exp", a, out);
#endif
}

void EwiseLog(const AlignedArray& a, AlignedArray* out) {
#ifdef NEEDLE_VEC_MATH
  unary_vec("ewise_log", a, out, vlog);
#else
  unary<Log>("ewise_log", a, out);
#endif
}

void EwiseTanh(const AlignedArray& a, AlignedArray* out) {
#ifdef NEEDLE_VEC_MATH
  unary_vec("ewise_tanh", a, out, vtanh);
#else
  unary<Tanh>("ewise_tanh", a, out);
#endif
}

// The libm loops, for tests and benchmarks of the fast paths above.
void EwiseMathReference(const std::string& op, const AlignedArray& a, AlignedArray* out) {
  if (op == "exp") unary<Exp>("ewise_math_reference", a, out);
  else if (op == "log") unary<Log>("ewise_math_reference", a, out);
  else if (op == "tanh") unary<Tanh>("ewise_math_reference", a, out);
  else throw std::invalid_argument("ewise_math_reference: unknown op " + op);
}

// a is (rows, cols) compact, b is a (cols,) row read from b.ptr + b_offset and
// broadcast over the rows: out = f(a, b) (or f(b, a) when swap). A broadcast
// operand (bias, BatchNorm statistics) without materialising it.
template <typename F>
void ewise_rows(const char* fn, const AlignedArray& a, const AlignedArray& b, int64_t b_offset, AlignedArray* out,
                int64_t cols, bool swap) {
  check_same_size(fn, a.size, out->size);
  if (cols < 1 || a.size % cols || b_offset < 0 || b_offset + cols > b.size)
    throw std::invalid_argument(std::string(fn) + ": bad row broadcast (cols " + std::to_string(cols) + ")");
  const float* x = a.ptr;
  const float* y = b.ptr + b_offset;
  float* o = out->ptr;
  const int64_t rows = a.size / cols;
  parallel_range(rows, std::max<int64_t>(1, kParallelThreshold / cols), [&](int64_t lo, int64_t hi) {
    F f;
    for (int64_t i = lo; i < hi; ++i) {
      const float* xr = x + i * cols;
      float* orow = o + i * cols;
      if (swap) {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) orow[j] = f(y[j], xr[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) orow[j] = f(xr[j], y[j]);
      }
    }
  });
}

// a ** val: the exponents of BatchNorm, Adam and the power rule (2, 1, 0.5,
// -0.5, -1, small integers) skip powf, which does not vectorise. Each fast
// path rounds like powf does up to the last bit (double intermediates), and
// keeps powf's special cases (pow(-0, 0.5) = +0, pow(-inf, 0.5) = +inf,
// pow(-0, -0.5) = +inf).
void ScalarPower(const AlignedArray& a, float val, AlignedArray* out) {
  check_same_size("scalar_power", a.size, out->size);
  const float* x = a.ptr;
  float* o = out->ptr;
  const int64_t n = out->size;
  auto run = [&](auto f) {
    parallel_range(n, kParallelThreshold, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) o[i] = f(x[i]);
    });
  };
  if (val == 1.0f) {
    run([](float v) { return v; });
  } else if (val == 2.0f) {
    run([](float v) { return v * v; });
  } else if (val == 3.0f) {
    run([](float v) { return float(double(v) * double(v) * double(v)); });
  } else if (val == -1.0f) {
    run([](float v) { return 1.0f / v; });
  } else if (val == -2.0f) {
    run([](float v) { return float(1.0 / (double(v) * double(v))); });
  } else if (val == 0.5f) {
    run([](float v) { return v == -INFINITY ? INFINITY : std::sqrt(v) + 0.0f; });
  } else if (val == -0.5f) {
    run([](float v) { return v == 0.0f ? INFINITY : v == -INFINITY ? 0.0f : float(1.0 / std::sqrt(double(v))); });
  } else {
    scalar<Power>("scalar_power", a, val, out);
  }
}

// ---------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------
void check_reduce(const char* fn, const AlignedArray& a, const AlignedArray& out, int64_t reduce_size) {
  if (reduce_size < 1) throw std::invalid_argument(std::string(fn) + ": reduce_size must be >= 1");
  if (a.size < out.size * reduce_size)
    throw std::invalid_argument(std::string(fn) + ": input has " + std::to_string(a.size) + " elements, need " +
                                std::to_string(out.size) + " x " + std::to_string(reduce_size));
}

// Sum of n contiguous floats: 4 x 16 independent partial sums so the adds
// pipeline and vectorise without -ffast-math reassociation.
float sum_contiguous(const float* x, int64_t n) {
  constexpr int L = 64;
  float part[L] = {};
  int64_t k = 0;
  for (; k + L <= n; k += L) {
#pragma omp simd
    for (int j = 0; j < L; ++j) part[j] += x[k + j];
  }
  float acc = 0.0f;
  for (; k < n; ++k) acc += x[k];
  for (int j = 0; j < L; ++j) acc += part[j];
  return acc;
}

float max_contiguous(const float* x, int64_t n) {
  // NaN propagates: the comparison picks a NaN once seen.
  float acc = x[0];
  int64_t k = 1;
  constexpr int L = 32;
  if (n >= 2 * L) {
    float part[L];
    for (int j = 0; j < L; ++j) part[j] = x[j];
    for (k = L; k + L <= n; k += L) {
#pragma omp simd
      for (int j = 0; j < L; ++j) part[j] = (x[k + j] > part[j] || x[k + j] != x[k + j]) ? x[k + j] : part[j];
    }
    acc = part[0];
    for (int j = 1; j < L; ++j) acc = (part[j] > acc || std::isnan(part[j])) ? part[j] : acc;
  }
  for (; k < n; ++k) acc = (x[k] > acc || std::isnan(x[k])) ? x[k] : acc;
  return acc;
}

void ReduceSum(const AlignedArray& a, AlignedArray* out, int64_t reduce_size) {
  // a is (out.size, reduce_size) compact; out[i] = sum of row i.
  check_reduce("reduce_sum", a, *out, reduce_size);
  const int64_t rows = out->size;
  const float* x = a.ptr;
  if (rows == 1) {
    // One long row: per-thread partial sums over fixed pieces, added in order.
    const int64_t pieces = reduce_size > 4 * kParallelThreshold ? std::min<int64_t>(64, reduce_size / kParallelThreshold) : 1;
    if (pieces == 1) {
      out->ptr[0] = sum_contiguous(x, reduce_size);
      return;
    }
    std::vector<float> part(size_t(pieces), 0.0f);
    parallel_for(pieces, [&](int64_t t) {
      const int64_t lo = reduce_size * t / pieces, hi = reduce_size * (t + 1) / pieces;
      part[size_t(t)] = sum_contiguous(x + lo, hi - lo);
    });
    float acc = 0.0f;
    for (float p : part) acc += p;
    out->ptr[0] = acc;
    return;
  }
  float* o = out->ptr;
  parallel_range(rows, std::max<int64_t>(1, kParallelThreshold / reduce_size), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) o[i] = sum_contiguous(x + i * reduce_size, reduce_size);
  });
}

// a is (outer, reduce, inner) compact; out (outer, inner) = sum over the middle axis.
// The sum over leading axes (bias and BatchNorm gradients) without a transposed copy:
// rows are added into inner-wide float accumulators in blocks of 64 rows, and the block
// sums into the output, so the error grows with n / 64 + 64, not with n.
void ReduceSumMiddle(const AlignedArray& a, AlignedArray* out, int64_t outer, int64_t reduce, int64_t inner) {
  if (outer < 0 || reduce < 1 || inner < 1) throw std::invalid_argument("reduce_sum_middle: bad sizes");
  if (a.size < outer * reduce * inner || out->size < outer * inner)
    throw std::invalid_argument("reduce_sum_middle: arrays are smaller than (outer, reduce, inner)");
  constexpr int64_t kBlock = 64, kCols = 256;
  const float* x = a.ptr;
  float* o = out->ptr;
  const int64_t col_tiles = (inner + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(1, reduce * std::min(inner, kCols)));
  parallel_range(outer * col_tiles, grain, [&](int64_t lo, int64_t hi) {
    float block[kCols], total[kCols];
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t oi = t / col_tiles, c0 = (t % col_tiles) * kCols, nc = std::min(kCols, inner - c0);
      const float* base = x + oi * reduce * inner + c0;
      for (int64_t j = 0; j < nc; ++j) total[j] = 0.0f;
      for (int64_t r0 = 0; r0 < reduce; r0 += kBlock) {
        const int64_t r1 = std::min(reduce, r0 + kBlock);
        for (int64_t j = 0; j < nc; ++j) block[j] = 0.0f;
        for (int64_t r = r0; r < r1; ++r) {
          const float* row = base + r * inner;
#pragma omp simd
          for (int64_t j = 0; j < nc; ++j) block[j] += row[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) total[j] += block[j];
      }
      float* dst = o + oi * inner + c0;
      for (int64_t j = 0; j < nc; ++j) dst[j] = total[j];
    }
  });
}

void ReduceMax(const AlignedArray& a, AlignedArray* out, int64_t reduce_size) {
  // a is (out.size, reduce_size) compact; out[i] = max of row i.
  check_reduce("reduce_max", a, *out, reduce_size);
  const int64_t rows = out->size;
  const float* x = a.ptr;
  float* o = out->ptr;
  parallel_range(rows, std::max<int64_t>(1, kParallelThreshold / reduce_size), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) o[i] = max_contiguous(x + i * reduce_size, reduce_size);
  });
}

// ---------------------------------------------------------------------------
// Row gather / scatter-add (embedding lookup and its adjoint)
// ---------------------------------------------------------------------------
// Row numbers arrive float32-encoded; each must be an integer in [0, num_rows).
std::vector<int64_t> row_indices(const char* fn, const AlignedArray& idx, int64_t num_rows) {
  std::vector<int64_t> rows(size_t(idx.size));
  for (int64_t r = 0; r < idx.size; ++r) {
    const float v = idx.ptr[r];
    const int64_t i = (v >= 0.0f && v < float(num_rows)) ? static_cast<int64_t>(v) : -1;
    if (i < 0 || i >= num_rows || float(i) != v)
      throw std::out_of_range(std::string(fn) + ": row index " + std::to_string(v) + " is not an integer in [0, " +
                              std::to_string(num_rows) + ")");
    rows[size_t(r)] = i;
  }
  return rows;
}

void check_rows(const char* fn, const AlignedArray& table, const AlignedArray& rows, int64_t num_rows, int64_t dim,
                int64_t k) {
  if (num_rows < 0 || dim < 0 || table.size < num_rows * dim || rows.size != k * dim)
    throw std::invalid_argument(std::string(fn) + ": buffers of " + std::to_string(table.size) + " and " +
                                std::to_string(rows.size) + " elements do not fit (" + std::to_string(num_rows) +
                                ", " + std::to_string(dim) + ") and (" + std::to_string(k) + ", " +
                                std::to_string(dim) + ")");
}

void GatherRows(const AlignedArray& a, const AlignedArray& idx, AlignedArray* out, int64_t num_rows, int64_t dim) {
  // a is (num_rows, dim) compact, idx is (k,) compact, out is (k, dim) compact: out[r] = a[idx[r]].
  check_rows("gather_rows", a, *out, num_rows, dim, idx.size);
  const std::vector<int64_t> rows = row_indices("gather_rows", idx, num_rows);
  for (size_t r = 0; r < rows.size(); ++r)
    std::memcpy(out->ptr + int64_t(r) * dim, a.ptr + rows[r] * dim, size_t(dim) * sizeof(float));
}

void ScatterAddRows(const AlignedArray& a, const AlignedArray& idx, AlignedArray* out, int64_t num_rows,
                    int64_t dim) {
  // a is (k, dim) compact, idx is (k,) compact, out is (num_rows, dim) compact: out[idx[r]] += a[r], r in order.
  check_rows("scatter_add_rows", *out, a, num_rows, dim, idx.size);
  const std::vector<int64_t> rows = row_indices("scatter_add_rows", idx, num_rows);
  for (size_t r = 0; r < rows.size(); ++r) {
    const float* src = a.ptr + int64_t(r) * dim;
    float* dst = out->ptr + rows[r] * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) dst[j] += src[j];
  }
}

// ---------------------------------------------------------------------------
// Matrix multiplication
// ---------------------------------------------------------------------------
void check_matmul_sizes(const char* fn, const AlignedArray& a, const AlignedArray& b, const AlignedArray& out,
                        int64_t m, int64_t n, int64_t p) {
  if (m < 0 || n < 0 || p < 0) throw std::invalid_argument(std::string(fn) + ": negative dimension");
  if (a.size < m * n || b.size < n * p || out.size < m * p)
    throw std::invalid_argument(std::string(fn) + ": buffers of " + std::to_string(a.size) + ", " +
                                std::to_string(b.size) + ", " + std::to_string(out.size) +
                                " elements are too small for (" + std::to_string(m) + " x " + std::to_string(n) +
                                ") @ (" + std::to_string(n) + " x " + std::to_string(p) + ")");
}

void Matmul(const AlignedArray& a, const AlignedArray& b, AlignedArray* out, int64_t m, int64_t n, int64_t p) {
  // a is (m, n) compact, b is (n, p) compact, out is (m, p) compact.
  check_matmul_sizes("matmul", a, b, *out, m, n, p);
  if (m * p == 0) return;
  sgemm(m, p, n, a.ptr, n, 1, b.ptr, p, 1, out->ptr, p);
}

using GemmFn = void (*)(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                        float*, int64_t);

void batched(const char* fn, GemmFn gemm, const AlignedArray& a, const AlignedArray& b, AlignedArray* out,
             int64_t batch, int64_t m, int64_t n, int64_t p, Shape sa, int64_t oa, Shape sb, int64_t ob) {
  // a is (batch, m, n) strided by sa from oa, b is (batch, n, p) strided by sb
  // from ob, out is (batch, m, p) compact. A batch stride of 0 broadcasts.
  if (sa.size() != 3 || sb.size() != 3)
    throw std::invalid_argument(std::string(fn) + ": a_strides and b_strides need 3 entries (batch, row, col)");
  if (batch < 0 || m < 0 || n < 0 || p < 0) throw std::invalid_argument(std::string(fn) + ": negative dimension");
  check_view(fn, {batch, m, n}, sa, oa, a.size);
  check_view(fn, {batch, n, p}, sb, ob, b.size);
  if (out->size != batch * m * p)
    throw std::invalid_argument(std::string(fn) + ": out has " + std::to_string(out->size) + " elements, need " +
                                std::to_string(batch * m * p));
  if (batch * m * p == 0) return;
  if (n == 0) {
    std::fill(out->ptr, out->ptr + out->size, 0.0f);
    return;
  }
  // Many small products (attention heads) parallelise over the batch; a few
  // large ones let the GEMM use the threads.
  auto one = [&](int64_t i) {
    gemm(m, p, n, a.ptr + oa + i * sa[0], sa[1], sa[2], b.ptr + ob + i * sb[0], sb[1], sb[2],
         out->ptr + i * m * p, p);
  };
  const bool over_batch = batch > 1 && batch >= num_threads() && m * n * p < (1 << 20) &&
                          batch * m * n * p >= (1 << 18);
  if (over_batch) {
    parallel_for(batch, one);
  } else {
    for (int64_t i = 0; i < batch; ++i) one(i);
  }
}

void Bmm(const AlignedArray& a, const AlignedArray& b, AlignedArray* out, int64_t batch, int64_t m, int64_t n,
         int64_t p, Shape sa, int64_t oa, Shape sb, int64_t ob) {
  batched("bmm", sgemm, a, b, out, batch, m, n, p, sa, oa, sb, ob);
}

void BmmNaive(const AlignedArray& a, const AlignedArray& b, AlignedArray* out, int64_t batch, int64_t m,
              int64_t n, int64_t p, Shape sa, int64_t oa, Shape sb, int64_t ob) {
  batched("bmm_naive", sgemm_naive, a, b, out, batch, m, n, p, sa, oa, sb, ob);
}

void MatmulTiled(const AlignedArray& a, const AlignedArray& b, AlignedArray* out, int64_t m, int64_t n, int64_t p) {
  // a is (m/T, n/T, T, T), b is (n/T, p/T, T, T), out is (m/T, p/T, T, T); all
  // compact, dims multiples of T. Kept for the course's tiled-layout path.
  check_matmul_sizes("matmul_tiled", a, b, *out, m, n, p);
  if (m % kTile || n % kTile || p % kTile)
    throw std::invalid_argument("matmul_tiled: dims (" + std::to_string(m) + ", " + std::to_string(n) + ", " +
                                std::to_string(p) + ") must be multiples of " + std::to_string(kTile));
  const int64_t mt = m / kTile, nt = n / kTile, pt = p / kTile;
  std::fill(out->ptr, out->ptr + m * p, 0.0f);
  const int64_t grain = m * n * p > (1 << 18) ? 1 : std::max<int64_t>(1, mt * pt);
  parallel_range(mt * pt, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i = t / pt, j = t % pt;
      float* o = out->ptr + (i * pt + j) * kTile * kTile;
      for (int64_t k = 0; k < nt; ++k) {
        const float* x = a.ptr + (i * nt + k) * kTile * kTile;
        const float* y = b.ptr + (k * pt + j) * kTile * kTile;
        for (int64_t r = 0; r < kTile; ++r)
          for (int64_t s = 0; s < kTile; ++s)
#pragma omp simd
            for (int64_t c = 0; c < kTile; ++c) o[r * kTile + c] += x[r * kTile + s] * y[s * kTile + c];
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Fused softmax cross-entropy, batch norm and optimizer steps (few passes per tensor)
// ---------------------------------------------------------------------------
// exp(x) for x <= 0 (the loss kernels exponentiate x - max and x - lse): Cephes'
// expf (range reduction by ln 2, degree-5 polynomial, ~1 ulp); 0 below -87.3
// (where expf is denormal). The AVX2 version computes the same steps 8 lanes wide.
constexpr float kExpLow = -87.3f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline float exp_nonpositive(float x) {
  const float xc = x < kExpLow ? kExpLow : (x > 0.0f ? 0.0f : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = kExpP[0];
  for (int i = 1; i < 6; ++i) p = p * r + kExpP[i];
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return x < kExpLow ? 0.0f : y * scale;
}

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp_nonpositive8(__m256 x) {
  const __m256 low = _mm256_set1_ps(kExpLow);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_setzero_ps());
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP[i]));
  const __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(_mm256_cmp_ps(x, low, _CMP_LT_OQ), _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// log(sum(exp(x))) of one row of k floats (max-subtracted); NaN if the row holds a NaN
// or its max is not finite (as the composition max + log(sum(exp(x - max))) gives).
inline float row_logsumexp(const float* x, int64_t k) {
  float m = -INFINITY;
  bool nan = false;
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 vm = _mm256_set1_ps(-INFINITY), vnan = _mm256_setzero_ps();
  for (; j + 8 <= k; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    vm = _mm256_max_ps(vm, v);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vm);
  for (float l : lanes) m = std::max(m, l);
  nan = _mm256_movemask_ps(vnan) != 0;
#endif
  for (; j < k; ++j) {
    m = std::max(m, x[j]);
    nan |= std::isnan(x[j]);
  }
  if (nan || !std::isfinite(m)) return NAN;
  float s = 0.0f;
  j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vmax = _mm256_set1_ps(m);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; j + 16 <= k; j += 16) {
    acc0 = _mm256_add_ps(acc0, exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vmax)));
    acc1 = _mm256_add_ps(acc1, exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vmax)));
  }
  s = hsum8(_mm256_add_ps(acc0, acc1));
#endif
  for (; j < k; ++j) s += exp_nonpositive(x[j] - m);
  return m + std::log(s);
}

// o[j] = exp(x[j] - l) * c for one row (l is the row's log-sum-exp, so x - l <= 0).
inline void row_softmax_scaled(const float* x, float* o, int64_t k, float l, float c) {
  if (std::isnan(l)) {
    std::fill(o, o + k, NAN);
    return;
  }
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vl = _mm256_set1_ps(l), vc = _mm256_set1_ps(c);
  for (; j + 8 <= k; j += 8)
    _mm256_storeu_ps(o + j, _mm256_mul_ps(exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vl)), vc));
#endif
  for (; j < k; ++j) o[j] = exp_nonpositive(x[j] - l) * c;
}

std::vector<int64_t> class_labels(const char* fn, const AlignedArray& labels, int64_t n, int64_t k) {
  if (labels.size != n)
    throw std::invalid_argument(std::string(fn) + ": " + std::to_string(labels.size) + " labels for " +
                                std::to_string(n) + " rows");
  return row_indices(fn, labels, k);
}

void SoftmaxXent(const AlignedArray& a, const AlignedArray& labels, AlignedArray* lse, AlignedArray* loss, int64_t n,
                 int64_t k) {
  // a is (n, k) compact logits, labels (n,) class numbers; lse (n,) gets each row's
  // log-sum-exp, loss (1,) the mean of lse[i] - a[i, labels[i]].
  if (n < 0 || k < 0 || a.size < n * k || lse->size != n || loss->size != 1)
    throw std::invalid_argument("softmax_xent: buffers of " + std::to_string(a.size) + ", " +
                                std::to_string(lse->size) + ", " + std::to_string(loss->size) +
                                " elements do not fit (" + std::to_string(n) + ", " + std::to_string(k) +
                                ") logits, (n,) lse and (1,) loss");
  const std::vector<int64_t> y = class_labels("softmax_xent", labels, n, k);
  std::vector<double> row_loss(size_t(n), 0.0);
  parallel_range(n, std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(k, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* x = a.ptr + i * k;
      const float l = row_logsumexp(x, k);
      lse->ptr[i] = l;
      row_loss[size_t(i)] = double(l) - double(x[y[size_t(i)]]);
    }
  });
  double total = 0.0;
  for (double r : row_loss) total += r;
  loss->ptr[0] = n ? float(total / double(n)) : NAN;
}

void SoftmaxXentGrad(const AlignedArray& a, const AlignedArray& labels, const AlignedArray& lse,
                     const AlignedArray& g, AlignedArray* out, int64_t n, int64_t k, double scale) {
  // a is (n, k) compact, labels and lse (n,), g (1,); out (n, k) compact gets
  // (exp(a[i, j] - lse[i]) - [j == labels[i]]) * g[0] * scale.
  if (n < 0 || k < 0 || a.size < n * k || out->size != n * k || lse.size != n || g.size != 1)
    throw std::invalid_argument("softmax_xent_grad: buffers of " + std::to_string(a.size) + ", " +
                                std::to_string(lse.size) + ", " + std::to_string(g.size) + ", " +
                                std::to_string(out->size) + " elements do not fit (" + std::to_string(n) + ", " +
                                std::to_string(k) + ") logits, (n,) lse, (1,) g and (n, k) out");
  const std::vector<int64_t> y = class_labels("softmax_xent_grad", labels, n, k);
  const float c = g.ptr[0] * float(scale);
  parallel_range(n, std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(k, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* x = a.ptr + i * k;
      float* o = out->ptr + i * k;
      const float l = lse.ptr[i];
      row_softmax_scaled(x, o, k, l, c);
      o[y[size_t(i)]] -= c;
    }
  });
}

// ---- batch norm over the rows of a (rows, cols) layout (channels last) ----
void check_bn(const char* fn, int64_t rows, int64_t cols, std::initializer_list<const AlignedArray*> full,
              std::initializer_list<const AlignedArray*> vecs) {
  if (rows < 0 || cols < 0)
    throw std::invalid_argument(std::string(fn) + ": bad sizes (" + std::to_string(rows) + ", " +
                                std::to_string(cols) + ")");
  bool ok = true;
  for (const AlignedArray* a : full) ok = ok && a->size >= rows * cols;
  for (const AlignedArray* v : vecs) ok = ok && v->size >= cols;
  if (!ok)
    throw std::invalid_argument(std::string(fn) + ": buffers do not fit (" + std::to_string(rows) + ", " +
                                std::to_string(cols) + ") and (" + std::to_string(cols) + ",)");
}

// acc[j] += sum of term(r, j) over rows [lo, hi): float partial sums over blocks of
// 64 rows, added in double, so the error grows with 64 + n / 64, not with n.
template <typename Term>
void add_column_sums(int64_t lo, int64_t hi, int64_t cols, double* acc, Term term) {
  constexpr int64_t kBlock = 64, kCols = 256;
  float blk[kCols];
  for (int64_t c0 = 0; c0 < cols; c0 += kCols) {
    const int64_t nc = std::min(kCols, cols - c0);
    for (int64_t r0 = lo; r0 < hi; r0 += kBlock) {
      const int64_t r1 = std::min(hi, r0 + kBlock);
      for (int64_t j = 0; j < nc; ++j) blk[j] = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
#pragma omp simd
        for (int64_t j = 0; j < nc; ++j) blk[j] += term(r, c0 + j);
      }
      for (int64_t j = 0; j < nc; ++j) acc[c0 + j] += double(blk[j]);
    }
  }
}

// out[j] = sum over all rows of term(r, j). Rows split into a number of pieces fixed by
// the size alone (so the result does not depend on the thread count), added in order.
template <typename Term>
void column_sums(int64_t rows, int64_t cols, double* out, Term term) {
  std::fill(out, out + cols, 0.0);
  const int64_t pieces = std::max<int64_t>(1, std::min<int64_t>({64, rows, rows * cols / kParallelThreshold}));
  if (pieces == 1) {
    add_column_sums(0, rows, cols, out, term);
    return;
  }
  std::vector<double> part(size_t(pieces * cols), 0.0);
  parallel_for(pieces, [&](int64_t t) {
    add_column_sums(rows * t / pieces, rows * (t + 1) / pieces, cols, part.data() + t * cols, term);
  });
  for (int64_t t = 0; t < pieces; ++t)
    for (int64_t j = 0; j < cols; ++j) out[j] += part[size_t(t * cols + j)];
}

// x is (rows, cols) compact, w, b (cols,); mean, var (cols,) get the column mean and
// biased variance (two passes: the centred second pass stays exact when |mean| >> std),
// out (rows, cols) = (x - mean) * s + b with s = w / sqrt(var + eps).
void BnForward(const AlignedArray& x, const AlignedArray& w, const AlignedArray& b, AlignedArray* out,
               AlignedArray* mean, AlignedArray* var, int64_t rows, int64_t cols, double eps) {
  check_bn("bn_forward", rows, cols, {&x, out}, {&w, &b, mean, var});
  float* m = mean->ptr;
  float* v = var->ptr;
  if (rows == 0) {
    std::fill(m, m + cols, 0.0f);
    std::fill(v, v + cols, 0.0f);
    return;
  }
  const float* xp = x.ptr;
  std::vector<double> acc(static_cast<size_t>(cols));
  column_sums(rows, cols, acc.data(), [xp, cols](int64_t r, int64_t j) { return xp[r * cols + j]; });
  for (int64_t j = 0; j < cols; ++j) m[j] = float(acc[size_t(j)] / double(rows));
  column_sums(rows, cols, acc.data(), [xp, m, cols](int64_t r, int64_t j) {
    const float d = xp[r * cols + j] - m[j];
    return d * d;
  });
  std::vector<float> scale(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    v[j] = float(acc[size_t(j)] / double(rows));
    scale[size_t(j)] = float(double(w.ptr[j]) / std::sqrt(double(v[j]) + eps));
  }
  const float* s = scale.data();
  const float* bb = b.ptr;
  float* o = out->ptr;
  parallel_range(rows, std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(cols, 1)),
                 [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = xp + r * cols;
      float* orow = o + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) orow[j] = (xr[j] - m[j]) * s[j] + bb[j];
    }
  });
}

// The adjoint of BnForward for g (rows, cols) compact: db = sum(g), dw = inv sum(g (x - mean))
// with inv = 1 / sqrt(var + eps), and dx = k ((g - gm) - (x - mean) c) with k = w inv,
// gm = db / rows, c = inv dw / rows (in double, rounded to float; differences first, so a
// constant column gives dx = 0 exactly).
void BnBackward(const AlignedArray& x, const AlignedArray& g, const AlignedArray& w, const AlignedArray& mean,
                const AlignedArray& var, AlignedArray* dx, AlignedArray* dw, AlignedArray* db, int64_t rows,
                int64_t cols, double eps) {
  check_bn("bn_backward", rows, cols, {&x, &g, dx}, {&w, &mean, &var, dw, db});
  if (rows == 0) {
    std::fill(dw->ptr, dw->ptr + cols, 0.0f);
    std::fill(db->ptr, db->ptr + cols, 0.0f);
    return;
  }
  const float* xp = x.ptr;
  const float* gp = g.ptr;
  const float* m = mean.ptr;
  std::vector<double> sg(static_cast<size_t>(cols)), sgx(static_cast<size_t>(cols));
  column_sums(rows, cols, sg.data(), [gp, cols](int64_t r, int64_t j) { return gp[r * cols + j]; });
  column_sums(rows, cols, sgx.data(), [xp, gp, m, cols](int64_t r, int64_t j) {
    return gp[r * cols + j] * (xp[r * cols + j] - m[j]);
  });
  std::vector<float> coef(static_cast<size_t>(3 * cols));
  float* k = coef.data();
  float* gm = k + cols;
  float* c = gm + cols;
  for (int64_t j = 0; j < cols; ++j) {
    const double inv = 1.0 / std::sqrt(double(var.ptr[j]) + eps), kj = double(w.ptr[j]) * inv;
    const double dwj = sgx[size_t(j)] * inv;
    db->ptr[j] = float(sg[size_t(j)]);
    dw->ptr[j] = float(dwj);
    k[j] = float(kj);
    gm[j] = float(sg[size_t(j)] / double(rows));
    c[j] = float(inv * dwj / double(rows));
  }
  float* o = dx->ptr;
  parallel_range(rows, std::max<int64_t>(1, kParallelThreshold / std::max<int64_t>(cols, 1)),
                 [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = xp + r * cols;
      const float* gr = gp + r * cols;
      float* orow = o + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) orow[j] = k[j] * ((gr[j] - gm[j]) - (xr[j] - m[j]) * c[j]);
    }
  });
}

void check_step(const char* fn, const AlignedArray& out, std::initializer_list<const AlignedArray*> bufs) {
  for (const AlignedArray* b : bufs)
    if (b->size != out.size)
      throw std::invalid_argument(std::string(fn) + ": a buffer has " + std::to_string(b->size) +
                                  " elements, out has " + std::to_string(out.size));
}

void AdamStep(const AlignedArray& w, const AlignedArray& g, AlignedArray* m, AlignedArray* v, AlignedArray* out,
              double lr, double beta1, double beta2, double eps, double weight_decay, double decay, double bias_c1,
              double bias_c2) {
  // All compact, same size; m, v in place: g' = g + wd w, m = b1 m + (1-b1) g',
  // v = b2 v + (1-b2) g'^2, out = decay w - lr (m/c1) / (sqrt(v/c2) + eps).
  check_step("adam_step", *out, {&w, &g, m, v});
  const float b1 = float(beta1), b2 = float(beta2), ob1 = float(1 - beta1), ob2 = float(1 - beta2);
  const float wd = float(weight_decay), dc = float(decay), c1 = float(bias_c1), c2 = float(bias_c2);
  const float fl = float(lr), fe = float(eps);
  const float* x = w.ptr;
  const float* gr = g.ptr;
  float* mm = m->ptr;
  float* vv = v->ptr;
  float* o = out->ptr;
  parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    int64_t j = lo;
#if defined(__AVX2__) && defined(__FMA__)
    // The same steps 8 lanes wide (the scalar loop below does not vectorise: sqrt may set errno).
    const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), vob1 = _mm256_set1_ps(ob1),
                 vob2 = _mm256_set1_ps(ob2), vwd = _mm256_set1_ps(wd), vdc = _mm256_set1_ps(dc),
                 vc1 = _mm256_set1_ps(c1), vc2 = _mm256_set1_ps(c2), vlr = _mm256_set1_ps(fl),
                 veps = _mm256_set1_ps(fe);
    for (; j + 8 <= hi; j += 8) {
      const __m256 xj = _mm256_loadu_ps(x + j);
      const __m256 gw = _mm256_fmadd_ps(vwd, xj, _mm256_loadu_ps(gr + j));
      const __m256 mj = _mm256_fmadd_ps(vb1, _mm256_loadu_ps(mm + j), _mm256_mul_ps(vob1, gw));
      const __m256 vj = _mm256_fmadd_ps(vb2, _mm256_loadu_ps(vv + j), _mm256_mul_ps(vob2, _mm256_mul_ps(gw, gw)));
      _mm256_storeu_ps(mm + j, mj);
      _mm256_storeu_ps(vv + j, vj);
      const __m256 den = _mm256_add_ps(_mm256_sqrt_ps(_mm256_div_ps(vj, vc2)), veps);
      const __m256 upd = _mm256_div_ps(_mm256_div_ps(mj, vc1), den);
      _mm256_storeu_ps(o + j, _mm256_fnmadd_ps(vlr, upd, _mm256_mul_ps(vdc, xj)));
    }
#endif
    for (; j < hi; ++j) {
      const float gw = gr[j] + wd * x[j];
      const float mj = b1 * mm[j] + ob1 * gw;
      const float vj = b2 * vv[j] + ob2 * (gw * gw);
      mm[j] = mj;
      vv[j] = vj;
      o[j] = dc * x[j] - fl * ((mj / c1) / (std::sqrt(vj / c2) + fe));
    }
  });
}

void SgdStep(const AlignedArray& w, const AlignedArray& g, AlignedArray* u, AlignedArray* out, double lr,
             double momentum, double weight_decay) {
  // All compact, same size: g' = g + wd w; with momentum u = mu u + (1-mu) g' (in
  // place) and out = w - lr u, else out = w - lr g' (u untouched).
  if (momentum != 0.0)
    check_step("sgd_step", *out, {&w, &g, u});
  else
    check_step("sgd_step", *out, {&w, &g});
  const float mu = float(momentum), omu = float(1 - momentum), wd = float(weight_decay), fl = float(lr);
  const float* x = w.ptr;
  const float* gr = g.ptr;
  float* uu = u->ptr;
  float* o = out->ptr;
  const bool use_u = momentum != 0.0;
  parallel_range(out->size, kParallelThreshold, [&](int64_t lo, int64_t hi) {
    if (use_u) {
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) {
        const float uj = mu * uu[j] + omu * (gr[j] + wd * x[j]);
        uu[j] = uj;
        o[j] = x[j] - fl * uj;
      }
    } else {
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) o[j] = x[j] - fl * (gr[j] + wd * x[j]);
    }
  });
}

}  // namespace cpu
}  // namespace needle

// ---------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------
PYBIND11_MODULE(ndarray_backend_cpu, m) {
  namespace py = pybind11;
  using namespace needle::cpu;

  m.attr("__device_name__") = "cpu";
  m.attr("__tile_size__") = kTile;

  if (const char* env = std::getenv("NEEDLE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) set_num_threads(n);
  }

  py::class_<AlignedArray>(m, "Array")
      .def(py::init<int64_t>(), py::return_value_policy::take_ownership)
      .def("ptr", &AlignedArray::ptr_as_int)
      .def_readonly("size", &AlignedArray::size);

  m.def("to_numpy", [](const AlignedArray& a, Shape shape, Shape strides, int64_t offset) {
    check_view("to_numpy", shape, strides, offset, a.size);
    int64_t size = 1;
    for (auto s : shape) size *= s;
    py::array_t<float> result(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    if (size == 0) return result;
    AlignedArray tmp(size);
    Compact(a, &tmp, shape, strides, offset);
    std::memcpy(result.mutable_data(), tmp.ptr, size_t(size) * sizeof(float));
    return result;
  });
  m.def("from_numpy", [](py::array_t<float, py::array::c_style | py::array::forcecast> a, AlignedArray* out) {
    if (a.size() != out->size)
      throw std::invalid_argument("from_numpy: source has " + std::to_string(a.size()) + " elements, buffer has " +
                                  std::to_string(out->size));
    std::memcpy(out->ptr, a.data(), size_t(out->size) * sizeof(float));
  });

  m.def("fill", Fill);
  m.def("compact", Compact);
  m.def("ewise_setitem", EwiseSetitem);
  m.def("scalar_setitem", ScalarSetitem);

  m.def("ewise_add", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Add>("ewise_add", a, b, o); });
  m.def("scalar_add", [](const AlignedArray& a, float v, AlignedArray* o) { scalar<Add>("scalar_add", a, v, o); });
  m.def("ewise_mul", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Mul>("ewise_mul", a, b, o); });
  m.def("scalar_mul", [](const AlignedArray& a, float v, AlignedArray* o) { scalar<Mul>("scalar_mul", a, v, o); });
  m.def("ewise_div", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Div>("ewise_div", a, b, o); });
  m.def("scalar_div", [](const AlignedArray& a, float v, AlignedArray* o) { scalar<Div>("scalar_div", a, v, o); });
  m.def("ewise_power", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Power>("ewise_power", a, b, o); });
  m.def("scalar_power", ScalarPower);
  m.def("ewise_maximum", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Maximum>("ewise_maximum", a, b, o); });
  m.def("scalar_maximum", [](const AlignedArray& a, float v, AlignedArray* o) { scalar<Maximum>("scalar_maximum", a, v, o); });
  m.def("ewise_eq", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Eq>("ewise_eq", a, b, o); });
  m.def("scalar_eq", [](const AlignedArray& a, float v, AlignedArray* o) { scalar<Eq>("scalar_eq", a, v, o); });
  m.def("ewise_ge", [](const AlignedArray& a, const AlignedArray& b, AlignedArray* o) { ewise<Ge>("ewise_ge", a, b, o); });
  m.def("scalar_ge", [](const AlignedArray& a, float v, AlignedArray* o) { scalar<Ge>("scalar_ge", a, v, o); });

  m.def("ewise_log", EwiseLog);
  m.def("ewise_exp", EwiseExp);
  m.def("ewise_tanh", EwiseTanh);
  m.def("ewise_math_reference", EwiseMathReference, "The libm loop behind ewise_<op> (op: exp, log, tanh).");

  m.def("matmul", Matmul);
  m.def("matmul_tiled", MatmulTiled);
  m.def("bmm", Bmm);
  m.def("bmm_naive", BmmNaive);

  m.def("reduce_max", ReduceMax);
  m.def("reduce_sum", ReduceSum);
  m.def("reduce_sum_middle", ReduceSumMiddle);
  m.def("ewise_rows", [](const std::string& op, const AlignedArray& a, const AlignedArray& b, int64_t b_offset,
                         AlignedArray* o, int64_t cols, bool swap) {
    if (op == "add") ewise_rows<Add>("ewise_rows", a, b, b_offset, o, cols, swap);
    else if (op == "mul") ewise_rows<Mul>("ewise_rows", a, b, b_offset, o, cols, swap);
    else if (op == "div") ewise_rows<Div>("ewise_rows", a, b, b_offset, o, cols, swap);
    else throw std::invalid_argument("ewise_rows: unknown op " + op);
  });
  m.def("gather_rows", GatherRows);
  m.def("scatter_add_rows", ScatterAddRows);
  m.def("softmax_xent", SoftmaxXent);
  m.def("softmax_xent_grad", SoftmaxXentGrad);
  m.def("bn_forward", BnForward);
  m.def("bn_backward", BnBackward);
  m.def("adam_step", AdamStep);
  m.def("sgd_step", SgdStep);

  m.def("set_num_threads", set_num_threads, "Threads used by the kernels (default: NEEDLE_NUM_THREADS or all cores).");
  m.def("get_num_threads", num_threads);
  m.def("sgemm_kernel_name", sgemm_kernel_name);
}
