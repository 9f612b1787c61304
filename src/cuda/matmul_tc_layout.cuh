// The index math of the tensor-core matmul rungs (matmul_tc.cu), kept apart from
// the kernels so that it compiles for the host too: tests/matmul_tc_emulation.cc
// runs these very functions against a model of cp.async, ldmatrix and mma.sync
// written from the PTX manual, on odd shapes, on a machine without a GPU.
//
// Operands follow the ladder's convention: A is (batch, m, n) and B is (batch, n, p)
// strided views, out is (batch, m, p) compact; k runs over n. "outer" is A's m or
// B's p: the dimension that is not k.
#pragma once
#include <cstdint>
#include <type_traits>

#include "common/half.h"  // NEEDLE_HD

namespace needle {
namespace cuda {

// Element (b, r, c) of a strided batched operand sits at ptr[b*sb + r*sr + c*sc];
// ptr already includes the operand's offset.
template <typename T>
struct MatView {
  const T* ptr;
  int64_t sb, sr, sc;
};

namespace tc {

NEEDLE_HD int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
NEEDLE_HD int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---- rung 4: mma.sync m16n8k16, ldmatrix, cp.async pipeline -------------------------
// A 128x128 output tile per block of 4 warps (2x2), each warp 64x64: 4 m16 by 8 n8
// mma tiles, 128 float accumulators a thread. k advances 32 at a time through a
// kStages-deep ring of shared-memory stages filled by 16-byte cp.async copies.
constexpr int kBM = 128, kBN = 128, kBK = 32;
constexpr int kWarpsM = 2, kWarpsN = 2;
constexpr int kWM = kBM / kWarpsM, kWN = kBN / kWarpsN;  // 64 x 64 per warp
constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
constexpr int kFragsM = kWM / kMmaM;  // 4
constexpr int kFragsN = kWN / kMmaN;  // 8
constexpr int kMmaThreads = kWarpsM * kWarpsN * 32;  // 128
constexpr int kStages = 4;
constexpr int kChunk = 8;   // halves per 16-byte copy
constexpr int kPad = 8;     // halves of padding per shared-memory row (see SmemTile)
constexpr int kGroupM = 8;  // row tiles per raster group (see tile_coords)

// A tile of R rows by C columns whose columns are contiguous in global memory, stored
// row by row in shared memory with each row padded by kPad halves. The padding makes
// the row pitch an odd multiple of 16 bytes (80 or 272 bytes here), so the 8 rows that
// one ldmatrix 8x8 matrix reads start in 8 distinct 16-byte bank groups: no conflicts.
template <int R, int C>
struct SmemTile {
  static constexpr int kRows = R, kCols = C, kStride = C + kPad;
  static constexpr int kElems = R * kStride;
  static constexpr int kChunksPerRow = C / kChunk;
  static constexpr int kChunks = R * kChunksPerRow;
  static_assert(C % kChunk == 0 && (kStride * 2) % 16 == 0 && ((kStride * 2 / 16) & 1) == 1,
                "rows must hold whole 16-byte chunks and have an odd 16-byte pitch");
  static_assert(kChunks % kMmaThreads == 0, "every thread copies the same number of chunks");
  NEEDLE_HD static int offset(int r, int c) { return r * kStride + c; }
  // The tile coordinates of chunk `id` (row, first column).
  NEEDLE_HD static void chunk(int id, int* r, int* c) {
    *r = id / kChunksPerRow;
    *c = (id % kChunksPerRow) * kChunk;
  }
};

// An operand contiguous along k is staged as [outer][k]; one contiguous along its
// outer dimension as [k][outer]. Either way shared memory mirrors global memory, so
// the 16-byte copies move straight across; ldmatrix (.trans for [k][outer] A and for
// [k][n] B) turns both into the fragments mma.sync wants.
template <bool KContig, int Outer>
using OperandTile = std::conditional_t<KContig, SmemTile<Outer, kBK>, SmemTile<kBK, Outer>>;

// Where one 16-byte chunk of an operand tile comes from: `offset` elements from the
// batch's operand base, of which the first `valid` (0..8) lie inside the matrix; the
// copy zero-fills the rest. An empty chunk points at the base itself (always a
// readable, aligned address; nothing is read from it).
struct ChunkSrc {
  int64_t offset;
  int valid;
};

// (r, c): the chunk's tile coordinates; outer0 / k0: the tile's origin; the extents
// bound the matrix; s_outer / s_k: the operand's strides (the contiguous one is 1).
template <bool KContig>
NEEDLE_HD ChunkSrc chunk_source(int r, int c, int64_t outer0, int64_t k0, int64_t outer_extent, int64_t k_extent,
                                int64_t s_outer, int64_t s_k) {
  int64_t outer, k, valid;
  if (KContig) {
    outer = outer0 + r;
    k = k0 + c;
    valid = outer < outer_extent ? clamp64(k_extent - k, 0, kChunk) : 0;
  } else {
    k = k0 + r;
    outer = outer0 + c;
    valid = k < k_extent ? clamp64(outer_extent - outer, 0, kChunk) : 0;
  }
  if (valid == 0) return ChunkSrc{0, 0};
  return ChunkSrc{outer * s_outer + k * s_k, static_cast<int>(valid)};
}

// Warp w's place in the block's 2x2 grid of warp tiles.
NEEDLE_HD int warp_m(int warp) { return warp % kWarpsM; }
NEEDLE_HD int warp_n(int warp) { return warp / kWarpsM; }

// The shared-memory (row, column) whose 16 bytes lane `lane` hands to ldmatrix.x4 for
// A's m16 x k16 fragment `mi` of warp row `wm` at k offset `kk` in the stage. Lanes
// 8j..8j+7 address matrix j, and matrix j becomes fragment register j:
// a0 = rows 0-7 / k 0-7, a1 = rows 8-15 / k 0-7, a2 = rows 0-7 / k 8-15, a3 = rows 8-15 / k 8-15.
template <bool KContig>
NEEDLE_HD void a_lane_coords(int lane, int wm, int mi, int kk, int* r, int* c) {
  const int m = wm * kWM + mi * kMmaM;
  if (KContig) {  // [m][k], plain ldmatrix: each lane names one row of m
    *r = m + (lane & 15);
    *c = kk + (lane >> 4) * 8;
  } else {  // [k][m], ldmatrix.trans: each lane names one row of k
    *r = kk + (lane & 7) + (lane >> 4) * 8;
    *c = m + ((lane >> 3) & 1) * 8;
  }
}

// The same for B: one ldmatrix.x4 loads the k16 x n8 fragments of two n8 tiles,
// 2j and 2j+1 of warp column `wn`: registers (b0, b1) of tile 2j, then of tile 2j+1.
template <bool KContig>
NEEDLE_HD void b_lane_coords(int lane, int wn, int j, int kk, int* r, int* c) {
  const int n = wn * kWN + j * 2 * kMmaN;
  if (KContig) {  // [n][k], plain ldmatrix: each lane names one row of n
    *r = n + (lane & 7) + (lane >> 4) * 8;
    *c = kk + ((lane >> 3) & 1) * 8;
  } else {  // [k][n], ldmatrix.trans: each lane names one row of k
    *r = kk + (lane & 7) + ((lane >> 3) & 1) * 8;
    *c = n + (lane >> 4) * 8;
  }
}

// The block-tile (row, column) of accumulator register `reg` (0..3) of mma tile
// (mi, ni) held by `lane`: registers 0, 1 are two neighbouring columns of row
// lane/4, registers 2, 3 the same columns 8 rows down.
NEEDLE_HD int acc_row(int lane, int wm, int mi, int reg) {
  return wm * kWM + mi * kMmaM + (lane >> 2) + (reg >> 1) * 8;
}
NEEDLE_HD int acc_col(int lane, int wn, int ni, int reg) {
  return wn * kWN + ni * kMmaN + (lane & 3) * 2 + (reg & 1);
}

// Output tile t -> (row tile, column tile). Tiles are walked in groups of kGroupM row
// tiles, down each group's columns first, so the blocks resident at one time share
// the same few rows of A and columns of B in L2 (rather than sweeping all of B for
// every row of tiles). A bijection on [0, row_tiles * col_tiles).
NEEDLE_HD void tile_coords(int64_t t, int64_t row_tiles, int64_t col_tiles, int64_t* tm, int64_t* tn) {
  const int64_t per_group = kGroupM * col_tiles;
  const int64_t first = (t / per_group) * kGroupM;
  const int64_t rows = row_tiles - first < kGroupM ? row_tiles - first : kGroupM;
  const int64_t in_group = t % per_group;
  *tm = first + in_group % rows;
  *tn = in_group / rows;
}

// Split-k. A product with few output tiles and a long k (a weight gradient: 576 x 64
// outputs summed over batch * height * width = 131072 terms) would leave most of the chip
// idle, one block walking all of k. Rung 4 then splits k into `splits` ranges of whole
// k-tiles, one block per (tile, range), each writing float32 partial sums; a second pass
// adds the ranges in a fixed order (deterministic) and rounds once to the output dtype.
// Enough blocks to fill the chip twice over (two resident per SM), each range at least
// kMinSplitKTiles k-tiles long so the partials stay cheap next to the products.
constexpr int kMinSplitKTiles = 8;
constexpr int kMaxSplits = 64;

// k-tiles per range (the last range may be shorter); splits = cdiv(k_tiles, this).
NEEDLE_HD int64_t k_tiles_per_split(int64_t blocks, int64_t k_tiles, int64_t sms) {
  const int64_t want = 2 * sms;
  if (blocks >= want || k_tiles < 2 * kMinSplitKTiles) return k_tiles;
  int64_t splits = cdiv(want, blocks);
  const int64_t most = k_tiles / kMinSplitKTiles;
  if (splits > most) splits = most;
  if (splits > kMaxSplits) splits = kMaxSplits;
  return cdiv(k_tiles, splits);
}

// Which staging an operand can take on rung 4: the element at stride 1 (k or outer)
// becomes the contiguous direction, and 16-byte copies need every chunk start on a
// 16-byte boundary (base aligned, the other strides multiples of 8 halves). The
// stride of a size-1 dimension is never used, so it is read as whatever suits.
struct Staging {
  bool ok;        // false: rung 4 cannot stage this operand (rung 3 runs instead)
  bool k_contig;  // true: [outer][k]; false: [k][outer]
};

inline Staging operand_staging(uintptr_t base, int64_t s_batch, int64_t s_outer, int64_t s_k, int64_t batch,
                               int64_t outer, int64_t k) {
  if (base % 16 != 0) return Staging{false, false};
  if (batch > 1 && s_batch % kChunk != 0) return Staging{false, false};
  const bool k_unit = k == 1 || s_k == 1;
  const bool outer_unit = outer == 1 || s_outer == 1;
  if (k_unit && (outer == 1 || s_outer % kChunk == 0)) return Staging{true, true};
  if (outer_unit && (k == 1 || s_k % kChunk == 0)) return Staging{true, false};
  return Staging{false, false};
}

// ---- rung 3: WMMA 16x16x16 fragments, plain shared-memory staging ---------------------
// A 64x64 output tile per block of 4 warps (2x2), each warp 32x32 (2x2 fragments);
// k advances 32 at a time. Loads take any strides (bounds-checked, zero-filled), so
// this rung is also where rung 4 sends the operands it cannot stage.
constexpr int kWBM = 64, kWBN = 64, kWBK = 32;
constexpr int kWFrag = 16;
constexpr int kWThreads = 128;
constexpr int kWAStride = kWBK + 8;   // As[m][k]: 80-byte rows (wmma needs ldm % 8 == 0)
constexpr int kWBStride = kWBN + 8;   // Bs[k][n]
constexpr int kWCStride = kWBN + 4;   // Cs[m][n] float accumulators on their way out
constexpr int kWLoads = kWBM * kWBK / kWThreads;  // elements of A (and of B) a thread stages per k-step
static_assert(kWBM * kWBK == kWBK * kWBN, "A and B tiles hold the same number of elements");

// Warp w's 32x32 quarter of the block tile, and where fragment (i, j) of it starts in
// As ([m][k]), Bs ([k][n]) and Cs ([m][n]) at k offset kk: element offsets, each a
// multiple of 32 bytes as wmma's loads and stores require.
NEEDLE_HD int wmma_warp_m(int warp) { return warp % 2; }
NEEDLE_HD int wmma_warp_n(int warp) { return warp / 2; }
NEEDLE_HD int wmma_a_offset(int wm, int i, int kk) { return (wm * 32 + i * kWFrag) * kWAStride + kk; }
NEEDLE_HD int wmma_b_offset(int wn, int j, int kk) { return kk * kWBStride + wn * 32 + j * kWFrag; }
NEEDLE_HD int wmma_c_offset(int wm, int wn, int i, int j) {
  return (wm * 32 + i * kWFrag) * kWCStride + wn * 32 + j * kWFrag;
}

// Element e (0 .. kWBM*kWBK) of A's k-step tile -> (m, k) within it. Consecutive
// threads take consecutive addresses of the operand's unit-stride direction, so a
// warp's loads coalesce: along k for row-major A, along m for a transposed view.
NEEDLE_HD void wmma_a_coords(int e, bool along_k, int* r, int* c) {
  if (along_k) {
    *r = e / kWBK;
    *c = e % kWBK;
  } else {
    *r = e % kWBM;
    *c = e / kWBM;
  }
}

// Element e of B's k-step tile -> (k, n): along n for row-major B, else along k.
NEEDLE_HD void wmma_b_coords(int e, bool along_n, int* r, int* c) {
  if (along_n) {
    *r = e / kWBN;
    *c = e % kWBN;
  } else {
    *r = e % kWBK;
    *c = e / kWBK;
  }
}

}  // namespace tc
}  // namespace cuda
}  // namespace needle
