// Host emulation of the tensor-core matmul rungs (src/cuda/matmul_tc.cu) for machines
// without a GPU. The kernels' index math lives in src/cuda/matmul_tc_layout.cuh and is
// compiled here unchanged; what the hardware does with it (cp.async with zero-fill and
// commit groups, ldmatrix with and without .trans, mma.sync m16n8k16 fragments, WMMA
// row-major loads and stores) is modelled below from the PTX ISA manual's tables, not
// from that header. Each run multiplies one strided batched problem the way the
// kernels would and compares every output with a float64 product rounded once.
//
//   matmul_tc_emulation DTYPE BATCH M N P  A_SB A_SR A_SC A_OFF A_SIZE  B_SB B_SR B_SC B_OFF B_SIZE  [SMS]
//
// DTYPE is float16 or bfloat16; A is (batch, m, n) and B (batch, n, p) as in bmm; SMS
// the multiprocessor count rung 4 sizes its split of k for (default 132, an H200's).
// Prints "rung4 ran" (with its staging and k split) or "rung4 declined" (the operands
// cannot be staged: the kernel would run rung 3), then "rung3 ran", and exits 0 when
// every output matched and every check held; otherwise prints what went wrong and exits 1.
//
// Checked besides the values: every global read lies inside its buffer and inside the
// operand's view (elements outside the view hold NaN), every 16-byte copy and every
// ldmatrix row is 16-byte aligned, no ldmatrix row reaches into a row's padding,
// WMMA pointers are 32-byte aligned, the tile raster visits every tile once, every
// output (and split-k partial sum) is written exactly once, every k-tile is summed once,
// and the cp.async pipeline gives the same result
// whether a copy lands as soon as it is issued or only at the wait that covers it
// (so no stage is read before it is complete or overwritten while still in use).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/convert.h"
#include "cuda/matmul_tc_layout.cuh"

using namespace needle;
using namespace needle::cuda;
using namespace needle::cuda::tc;

namespace {

int g_failures = 0;
#define EXPECT(cond, ...)                                        \
  do {                                                           \
    if (!(cond)) {                                               \
      if (g_failures++ < 20) {                                   \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                \
        std::printf("\n");                                       \
      }                                                          \
    }                                                            \
  } while (0)

bool g_bf16 = true;
const uint16_t kPoison = 0x7fc0;  // NaN in bfloat16; 0x7fc0 is a NaN in float16 too

float to_float(uint16_t bits) { return g_bf16 ? bf16_to_float(bfloat16_t{bits}) : f16_to_float(half_t{bits}); }
uint16_t round_bits(float v) { return g_bf16 ? float_to_bf16(v).bits : float_to_f16(v).bits; }

// A global buffer whose allocation starts 256-byte aligned (as the device allocator's).
struct Buffer {
  std::vector<uint16_t> data;
  int64_t size() const { return static_cast<int64_t>(data.size()); }
};

struct Operand {
  Buffer buf;
  int64_t sb, sr, sc, off;  // element strides and offset of the (batch, rows, cols) view
  int64_t at(int64_t b, int64_t r, int64_t c) const { return off + b * sb + r * sr + c * sc; }
};

// ---- the hardware, modelled from the PTX ISA manual --------------------------------------
// Shared memory of one block: NaN until written, so reading anything never written shows.
struct Smem {
  std::vector<uint16_t> h;
  explicit Smem(size_t n) : h(n, kPoison) {}
};

// One pending cp.async: 16 bytes to shared memory, `valid` elements from global, zeros after.
struct Copy {
  uint16_t* dst;
  const uint16_t* src;
  int valid;
};

// cp.async commit groups of one thread group (the block's threads issue identical
// sequences, so one queue models them all). Eager: a copy lands when issued (the
// earliest the hardware may); lazy: only when a wait_group retires its group (the latest).
struct AsyncCopies {
  bool eager;
  std::vector<Copy> open;
  std::deque<std::vector<Copy>> pending;
  static void land(const Copy& c) {
    for (int j = 0; j < kChunk; ++j) c.dst[j] = j < c.valid ? c.src[j] : uint16_t(0);
  }
  void issue(const Copy& c) {
    if (eager) land(c);
    else open.push_back(c);
  }
  void commit() {
    pending.push_back(open);
    open.clear();
  }
  void wait(int n) {  // cp.async.wait_group n
    while (static_cast<int>(pending.size()) > n) {
      for (const Copy& c : pending.front()) land(c);
      pending.pop_front();
    }
  }
};

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8j+i gives the address of row i
// of matrix j; every lane receives, in register j, elements (lane/4, 2*(lane%4)) and
// (lane/4, 2*(lane%4)+1) of matrix j, or of its transpose with .trans; the element with
// the lower column index sits in the lower 16 bits.
void ldmatrix_x4(const Smem& s, const int64_t addr[32], bool trans, uint32_t out[32][4]) {
  for (int j = 0; j < 4; ++j) {
    uint16_t M[8][8];
    for (int i = 0; i < 8; ++i)
      for (int q = 0; q < 8; ++q) M[i][q] = s.h[addr[8 * j + i] + q];
    for (int l = 0; l < 32; ++l) {
      const int r = l / 4, c = 2 * (l % 4);
      const uint16_t lo = trans ? M[c][r] : M[r][c];
      const uint16_t hi = trans ? M[c + 1][r] : M[r][c + 1];
      out[l][j] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

uint16_t half_of(uint32_t reg, int i) { return static_cast<uint16_t>(i ? reg >> 16 : reg & 0xffff); }

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: with g = lane/4, t = lane%4,
// A's registers hold (row, col) = (g, 2t+i), (g+8, 2t+i), (g, 2t+8+i), (g+8, 2t+8+i);
// B's hold (k, n) = (2t+i, g), (2t+8+i, g); C's (row, col) = (g, 2t+i), (g+8, 2t+i).
void mma_16816(float d[32][4], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 2; ++i) {
      A[g][2 * t + i] = to_float(half_of(a[l][0], i));
      A[g + 8][2 * t + i] = to_float(half_of(a[l][1], i));
      A[g][2 * t + 8 + i] = to_float(half_of(a[l][2], i));
      A[g + 8][2 * t + 8 + i] = to_float(half_of(a[l][3], i));
      B[2 * t + i][g] = to_float(half_of(b[l][0], i));
      B[2 * t + 8 + i][g] = to_float(half_of(b[l][1], i));
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int reg = 0; reg < 4; ++reg) {
      const int row = g + (reg >= 2 ? 8 : 0), col = 2 * t + (reg & 1);
      float sum = 0.f;
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      d[l][reg] += sum;
    }
  }
}

// ---- the problem --------------------------------------------------------------------------
struct Problem {
  int64_t batch, m, n, p;
  Operand A, B;
  std::vector<double> ref;  // (batch, m, p) float64 products of the stored values
};

// Fills the elements the view reaches with small integers (exact in both half types,
// their sums exact in float32) and leaves the rest NaN.
void fill_view(Operand& op, int64_t batch, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(-3, 3);
  for (auto& v : op.buf.data) v = kPoison;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = op.at(b, r, c);
        if (i < 0 || i >= op.buf.size()) {
          std::printf("bad case: element (%lld, %lld, %lld) at %lld outside a buffer of %lld\n", (long long)b,
                      (long long)r, (long long)c, (long long)i, (long long)op.buf.size());
          std::exit(2);
        }
        op.buf.data[i] = round_bits(static_cast<float>(d(rng)));
      }
}

void reference(Problem& P) {
  P.ref.assign(P.batch * P.m * P.p, 0.0);
  for (int64_t b = 0; b < P.batch; ++b)
    for (int64_t r = 0; r < P.m; ++r)
      for (int64_t c = 0; c < P.p; ++c) {
        double s = 0;
        for (int64_t k = 0; k < P.n; ++k)
          s += double(to_float(P.A.buf.data[P.A.at(b, r, k)])) * double(to_float(P.B.buf.data[P.B.at(b, k, c)]));
        P.ref[(b * P.m + r) * P.p + c] = s;
      }
}

// Compares an emulated output (bits, with a write count per element) with the reference.
void check_output(const Problem& P, const std::vector<uint16_t>& out, const std::vector<int>& writes,
                  const char* rung) {
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT(writes[i] == 1, "%s: output %zu written %d times", rung, i, writes[i]);
    const uint16_t want = round_bits(static_cast<float>(P.ref[i]));
    EXPECT(out[i] == want, "%s: output %zu (batch %lld, row %lld, col %lld) is %g, want %g", rung, i,
           (long long)(i / (P.m * P.p)), (long long)(i / P.p % P.m), (long long)(i % P.p), to_float(out[i]),
           to_float(want));
  }
}

// A global read of `count` elements from operand op at element index g: inside the
// buffer, and (with `in_view`) only elements the view reaches (NaN marks the others).
void check_read(const Operand& op, int64_t g, int count, const char* what) {
  EXPECT(g >= 0 && g + count <= op.buf.size(), "%s: read [%lld, %lld) outside a buffer of %lld", what,
         (long long)g, (long long)(g + count), (long long)op.buf.size());
}

// ---- rung 4 --------------------------------------------------------------------------------
template <bool A_K, bool B_K>
void emulate_rung4(const Problem& P, bool eager, int64_t sms, std::vector<uint16_t>& out, std::vector<int>& writes,
                   int64_t* splits_used) {
  using ATile = OperandTile<A_K, kBM>;
  using BTile = OperandTile<B_K, kBN>;
  const int64_t m = P.m, n = P.n, p = P.p;
  const int64_t row_tiles = cdiv(m, kBM), col_tiles = cdiv(p, kBN), tiles = row_tiles * col_tiles;
  const int64_t all_k_tiles = cdiv(n, kBK);
  // The launcher's split of k (grid y), for the blocks of grid x and z it launches.
  const int64_t grid_z = P.batch < 65535 ? P.batch : 65535;
  const int64_t per_split = k_tiles_per_split(tiles * grid_z, all_k_tiles, sms);
  const int64_t splits = cdiv(all_k_tiles, per_split);
  *splits_used = splits;
  EXPECT(per_split >= 1 && (splits == 1 || per_split >= kMinSplitKTiles), "%lld k-tiles per range",
         (long long)per_split);
  const int64_t total = P.batch * m * p;
  std::vector<float> partial(splits > 1 ? splits * total : 0, NAN);
  std::vector<int> partial_writes(partial.size(), 0);
  std::vector<int> visits(tiles, 0);

  for (int64_t bz = 0; bz < P.batch; ++bz) {
    const int64_t a_base = P.A.off + bz * P.A.sb, b_base = P.B.off + bz * P.B.sb;
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t tm, tn;
      tile_coords(t, row_tiles, col_tiles, &tm, &tn);
      EXPECT(tm >= 0 && tm < row_tiles && tn >= 0 && tn < col_tiles, "tile %lld -> (%lld, %lld)", (long long)t,
             (long long)tm, (long long)tn);
      if (bz == 0 && tm >= 0 && tm < row_tiles && tn >= 0 && tn < col_tiles) visits[tm * col_tiles + tn]++;
      const int64_t m0 = tm * kBM, n0 = tn * kBN;
      std::vector<int> k_visits(all_k_tiles, 0);
      for (int64_t split = 0; split < splits; ++split) {
        // The kernel's range of k-tiles for block row `split`.
        const int64_t kt_begin = split * per_split;
        const int64_t kt_end = kt_begin + per_split < all_k_tiles ? kt_begin + per_split : all_k_tiles;
        const int64_t k_tiles = kt_end - kt_begin;
        EXPECT(k_tiles >= 1, "split %lld has no k-tiles", (long long)split);
        for (int64_t kt = kt_begin; kt < kt_end; ++kt) k_visits[kt]++;
        Smem As(kStages * ATile::kElems), Bs(kStages * BTile::kElems);
        AsyncCopies copies{eager, {}, {}};

        auto issue = [&](const Operand& op, int64_t base, Smem& sm, int stage_elems, int s, int r, int c, int cols,
                         ChunkSrc src, const char* what) {
          const int64_t so = int64_t(s) * stage_elems + r * (cols + kPad) + c;
          EXPECT(c + kChunk <= cols, "%s: chunk at column %d spills into the padding", what, c);
          EXPECT(so * 2 % 16 == 0, "%s: shared destination %lld not 16-byte aligned", what, (long long)so);
          const int64_t g = base + src.offset;
          if (src.valid > 0) {
            check_read(op, g, src.valid, what);
            EXPECT(g * 2 % 16 == 0, "%s: global source element %lld not 16-byte aligned", what, (long long)g);
          }
          copies.issue(Copy{&sm.h[so], src.valid > 0 ? &op.buf.data[g] : nullptr, src.valid});
        };
        auto load_stage = [&](int64_t kt, int s) {
          const int64_t k0 = (kt_begin + kt) * kBK;
          for (int tid = 0; tid < kMmaThreads; ++tid) {
            for (int i = 0; i < ATile::kChunks / kMmaThreads; ++i) {
              int r, c;
              ATile::chunk(tid + i * kMmaThreads, &r, &c);
              issue(P.A, a_base, As, ATile::kElems, s, r, c, ATile::kCols,
                    chunk_source<A_K>(r, c, m0, k0, m, n, P.A.sr, P.A.sc), "A chunk");
            }
            for (int i = 0; i < BTile::kChunks / kMmaThreads; ++i) {
              int r, c;
              BTile::chunk(tid + i * kMmaThreads, &r, &c);
              issue(P.B, b_base, Bs, BTile::kElems, s, r, c, BTile::kCols,
                    chunk_source<B_K>(r, c, n0, k0, p, n, P.B.sc, P.B.sr), "B chunk");
            }
          }
        };

        static float acc[4][kFragsM][kFragsN][32][4];
        std::memset(acc, 0, sizeof(acc));
        // The kernel's schedule, step for step.
        for (int s = 0; s < kStages - 1; ++s) {
          if (s < k_tiles) load_stage(s, s);
          copies.commit();
        }
        int read_stage = 0, write_stage = kStages - 1;
        for (int64_t kt = 0; kt < k_tiles; ++kt) {
          copies.wait(kStages - 2);
          if (kt + kStages - 1 < k_tiles) load_stage(kt + kStages - 1, write_stage);
          copies.commit();
          for (int warp = 0; warp < 4; ++warp) {
            const int wm = warp_m(warp), wn = warp_n(warp);
            for (int kk = 0; kk < kBK; kk += kMmaK) {
              uint32_t fa[kFragsM][32][4], fb[kFragsN][32][2];
              for (int mi = 0; mi < kFragsM; ++mi) {
                int64_t addr[32];
                for (int lane = 0; lane < 32; ++lane) {
                  int r, c;
                  a_lane_coords<A_K>(lane, wm, mi, kk, &r, &c);
                  EXPECT(r >= 0 && r < ATile::kRows && c >= 0 && c + 8 <= ATile::kCols, "A ldmatrix row (%d, %d)",
                         r, c);
                  addr[lane] = int64_t(read_stage) * ATile::kElems + ATile::offset(r, c);
                  EXPECT(addr[lane] * 2 % 16 == 0, "A ldmatrix row address not 16-byte aligned");
                }
                ldmatrix_x4(As, addr, !A_K, fa[mi]);
              }
              for (int j = 0; j < kFragsN / 2; ++j) {
                int64_t addr[32];
                for (int lane = 0; lane < 32; ++lane) {
                  int r, c;
                  b_lane_coords<B_K>(lane, wn, j, kk, &r, &c);
                  EXPECT(r >= 0 && r < BTile::kRows && c >= 0 && c + 8 <= BTile::kCols, "B ldmatrix row (%d, %d)",
                         r, c);
                  addr[lane] = int64_t(read_stage) * BTile::kElems + BTile::offset(r, c);
                  EXPECT(addr[lane] * 2 % 16 == 0, "B ldmatrix row address not 16-byte aligned");
                }
                uint32_t q[32][4];
                ldmatrix_x4(Bs, addr, !B_K, q);
                for (int lane = 0; lane < 32; ++lane) {
                  fb[2 * j][lane][0] = q[lane][0];
                  fb[2 * j][lane][1] = q[lane][1];
                  fb[2 * j + 1][lane][0] = q[lane][2];
                  fb[2 * j + 1][lane][1] = q[lane][3];
                }
              }
              for (int mi = 0; mi < kFragsM; ++mi)
                for (int ni = 0; ni < kFragsN; ++ni) mma_16816(acc[warp][mi][ni], fa[mi], fb[ni]);
            }
          }
          read_stage = read_stage + 1 == kStages ? 0 : read_stage + 1;
          write_stage = write_stage + 1 == kStages ? 0 : write_stage + 1;
        }
        copies.wait(0);
        // The kernel's epilogue.
        for (int warp = 0; warp < 4; ++warp) {
          const int wm = warp_m(warp), wn = warp_n(warp);
          for (int lane = 0; lane < 32; ++lane)
            for (int mi = 0; mi < kFragsM; ++mi)
              for (int ni = 0; ni < kFragsN; ++ni)
                for (int h = 0; h < 2; ++h) {
                  const int64_t row = m0 + acc_row(lane, wm, mi, 2 * h);
                  const int64_t col = n0 + acc_col(lane, wn, ni, 2 * h);
                  EXPECT(acc_row(lane, wm, mi, 2 * h + 1) == acc_row(lane, wm, mi, 2 * h) &&
                             acc_col(lane, wn, ni, 2 * h + 1) == acc_col(lane, wn, ni, 2 * h) + 1,
                         "accumulator pair (%d, %d) is not two neighbouring outputs", 2 * h, 2 * h + 1);
                  if (row >= m || col >= p) continue;
                  const int64_t o = (bz * m + row) * p + col;
                  for (int e = 0; e < 2 && col + e < p; ++e) {
                    const float v = acc[warp][mi][ni][lane][2 * h + e];
                    if (splits > 1) {  // the partial sums of range `split`
                      partial[split * total + o + e] = v;
                      partial_writes[split * total + o + e]++;
                    } else {
                      out[o + e] = round_bits(v);
                      writes[o + e]++;
                    }
                  }
                }
        }
      }
      for (int64_t kt = 0; kt < all_k_tiles; ++kt)
        EXPECT(k_visits[kt] == 1, "k-tile %lld summed %d times", (long long)kt, k_visits[kt]);
    }
  }
  for (int64_t i = 0; i < tiles; ++i) EXPECT(visits[i] == 1, "tile %lld visited %d times", (long long)i, visits[i]);
  if (splits > 1) {  // sum_partials: the ranges in order, one rounding
    for (size_t i = 0; i < partial_writes.size(); ++i)
      EXPECT(partial_writes[i] == 1, "partial sum %zu written %d times", i, partial_writes[i]);
    for (int64_t i = 0; i < total; ++i) {
      float s = 0.f;
      for (int64_t r = 0; r < splits; ++r) s += partial[r * total + i];
      out[i] = round_bits(s);
      writes[i]++;
    }
  }
}

// ---- rung 3 --------------------------------------------------------------------------------
void emulate_rung3(const Problem& P, std::vector<uint16_t>& out, std::vector<int>& writes) {
  const int64_t m = P.m, n = P.n, p = P.p;
  // The launcher's choice of walking directions.
  const bool a_along_k = !(P.A.sr == 1 && P.A.sc != 1);
  const bool b_along_n = !(P.B.sr == 1 && P.B.sc != 1);
  for (int64_t bz = 0; bz < P.batch; ++bz)
    for (int64_t by = 0; by < cdiv(m, kWBM); ++by)
      for (int64_t bx = 0; bx < cdiv(p, kWBN); ++bx) {
        const int64_t row0 = by * kWBM, col0 = bx * kWBN;
        std::vector<float> acc(kWBM * kWBN, 0.f);
        for (int64_t k0 = 0; k0 < n; k0 += kWBK) {
          Smem As(kWBM * kWAStride), Bs(kWBK * kWBStride);
          std::vector<int> a_cover(kWBM * kWBK, 0), b_cover(kWBK * kWBN, 0);
          for (int tid = 0; tid < kWThreads; ++tid)
            for (int i = 0; i < kWLoads; ++i) {
              int r, c;
              wmma_a_coords(tid + i * kWThreads, a_along_k, &r, &c);
              EXPECT(r >= 0 && r < kWBM && c >= 0 && c < kWBK, "A element (%d, %d) outside the tile", r, c);
              a_cover[r * kWBK + c]++;
              const int64_t gm = row0 + r, gk = k0 + c;
              uint16_t v = 0;
              if (gm < m && gk < n) {
                const int64_t g = P.A.at(bz, gm, gk);
                check_read(P.A, g, 1, "rung 3 A");
                v = P.A.buf.data[g];
              }
              As.h[r * kWAStride + c] = v;
            }
          for (int tid = 0; tid < kWThreads; ++tid)
            for (int i = 0; i < kWLoads; ++i) {
              int r, c;
              wmma_b_coords(tid + i * kWThreads, b_along_n, &r, &c);
              EXPECT(r >= 0 && r < kWBK && c >= 0 && c < kWBN, "B element (%d, %d) outside the tile", r, c);
              b_cover[r * kWBN + c]++;
              const int64_t gk = k0 + r, gn = col0 + c;
              uint16_t v = 0;
              if (gk < n && gn < p) {
                const int64_t g = P.B.at(bz, gk, gn);
                check_read(P.B, g, 1, "rung 3 B");
                v = P.B.buf.data[g];
              }
              Bs.h[r * kWBStride + c] = v;
            }
          for (int v : a_cover) EXPECT(v == 1, "rung 3 stages an A element %d times", v);
          for (int v : b_cover) EXPECT(v == 1, "rung 3 stages a B element %d times", v);
          // wmma::load_matrix_sync(row_major, ldm): element (x, y) of a fragment at
          // pointer q is q[x * ldm + y]; mma_sync accumulates the 16x16x16 product.
          for (int warp = 0; warp < 4; ++warp) {
            const int wm = wmma_warp_m(warp), wn = wmma_warp_n(warp);
            for (int kk = 0; kk < kWBK; kk += kWFrag)
              for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 2; ++j) {
                  const int ao = wmma_a_offset(wm, i, kk), bo = wmma_b_offset(wn, j, kk);
                  const int co = wmma_c_offset(wm, wn, i, j);
                  EXPECT(ao * 2 % 32 == 0 && bo * 2 % 32 == 0 && co * 4 % 32 == 0, "wmma pointer not 32-byte aligned");
                  for (int x = 0; x < kWFrag; ++x)
                    for (int y = 0; y < kWFrag; ++y) {
                      float s = 0.f;
                      for (int q = 0; q < kWFrag; ++q)
                        s += to_float(As.h[ao + x * kWAStride + q]) * to_float(Bs.h[bo + q * kWBStride + y]);
                      // the accumulator fragment (i, j) is stored at Cs + co with ldm kWCStride
                      const int cr = (co + x * kWCStride + y) / kWCStride, cc = (co + x * kWCStride + y) % kWCStride;
                      EXPECT(cc < kWBN, "wmma store reaches the padding of Cs");
                      acc[cr * kWBN + cc] += s;
                    }
                }
          }
        }
        for (int e = 0; e < kWBM * kWBN; ++e) {
          const int r = e / kWBN, c = e % kWBN;
          const int64_t gm = row0 + r, gn = col0 + c;
          if (gm < m && gn < p) {
            const int64_t o = (bz * m + gm) * p + gn;
            out[o] = round_bits(acc[r * kWBN + c]);
            writes[o]++;
          }
        }
      }
}

int64_t arg(char** argv, int i) { return std::strtoll(argv[i], nullptr, 10); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 16 && argc != 17) {
    std::printf("usage: %s DTYPE BATCH M N P A_SB A_SR A_SC A_OFF A_SIZE B_SB B_SR B_SC B_OFF B_SIZE [SMS]\n", argv[0]);
    return 2;
  }
  const int64_t sms = argc == 17 ? arg(argv, 16) : 132;
  g_bf16 = std::string(argv[1]) == "bfloat16";
  if (!g_bf16 && std::string(argv[1]) != "float16") {
    std::printf("dtype must be float16 or bfloat16\n");
    return 2;
  }
  Problem P;
  P.batch = arg(argv, 2);
  P.m = arg(argv, 3);
  P.n = arg(argv, 4);
  P.p = arg(argv, 5);
  P.A = Operand{Buffer{std::vector<uint16_t>(arg(argv, 10))}, arg(argv, 6), arg(argv, 7), arg(argv, 8), arg(argv, 9)};
  P.B = Operand{Buffer{std::vector<uint16_t>(arg(argv, 15))}, arg(argv, 11), arg(argv, 12), arg(argv, 13),
                arg(argv, 14)};
  // As the launcher does: a batch of one never uses its batch stride.
  if (P.batch == 1) P.A.sb = P.B.sb = 0;
  std::mt19937 rng(12345);
  fill_view(P.A, P.batch, P.m, P.n, rng);
  fill_view(P.B, P.batch, P.n, P.p, rng);
  reference(P);
  const size_t total = P.batch * P.m * P.p;

  // Rung 4 takes the operands when both can be staged (the views' first elements sit at
  // element offsets off in 256-byte aligned allocations).
  const Staging a = operand_staging(uintptr_t(P.A.off * 2), P.A.sb, P.A.sr, P.A.sc, P.batch, P.m, P.n);
  const Staging b = operand_staging(uintptr_t(P.B.off * 2), P.B.sb, P.B.sc, P.B.sr, P.batch, P.p, P.n);
  if (a.ok && b.ok) {
    int64_t splits = 0;
    for (bool eager : {false, true}) {
      std::vector<uint16_t> out(total, kPoison);
      std::vector<int> writes(total, 0);
      if (a.k_contig && b.k_contig) emulate_rung4<true, true>(P, eager, sms, out, writes, &splits);
      else if (a.k_contig) emulate_rung4<true, false>(P, eager, sms, out, writes, &splits);
      else if (b.k_contig) emulate_rung4<false, true>(P, eager, sms, out, writes, &splits);
      else emulate_rung4<false, false>(P, eager, sms, out, writes, &splits);
      check_output(P, out, writes, eager ? "rung 4 (copies land at issue)" : "rung 4 (copies land at the wait)");
    }
    std::printf("rung4 ran (A staged %s, B staged %s) in %lld k-range%s\n", a.k_contig ? "[m][k]" : "[k][m]",
                b.k_contig ? "[n][k]" : "[k][n]", (long long)splits, splits == 1 ? "" : "s");
  } else {
    std::printf("rung4 declined\n");
  }
  std::vector<uint16_t> out(total, kPoison);
  std::vector<int> writes(total, 0);
  emulate_rung3(P, out, writes);
  check_output(P, out, writes, "rung 3");
  std::printf("rung3 ran\n");
  if (g_failures) {
    std::printf("%d checks failed\n", g_failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
