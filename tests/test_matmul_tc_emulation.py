"""The tensor-core matmul rungs' index math, checked without a GPU.

tests/matmul_tc_emulation.cc compiles src/cuda/matmul_tc_layout.cuh (the tiles, the
16-byte chunks, the ldmatrix lane addresses, the accumulator coordinates, the tile
raster and the staging rule that the CUDA kernels use) against a model of cp.async,
ldmatrix and mma.sync written from the PTX manual, multiplies strided batched problems
of odd shapes with it, and compares every output with a float64 product rounded once
(see its header for everything it checks). Here each case states which rung the
launcher must pick for its layout, so a staging rule that silently sends everything to
the fallback fails too.
"""
import os
import shutil
import subprocess

import pytest
from tc_layouts import layout, stageable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "matmul_tc_emulation.cc")
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if not CXX:
        pytest.skip("no C++ compiler")
    exe = str(tmp_path_factory.mktemp("tc") / "matmul_tc_emulation")
    r = subprocess.run([CXX, "-std=c++17", "-O2", "-Wall", "-I", os.path.join(ROOT, "src"), SOURCE, "-o", exe],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


SHAPES = [(1, 1, 1, 1), (1, 7, 13, 5), (2, 130, 72, 136), (3, 67, 45, 131), (1, 129, 200, 257),
          (2, 17, 1, 9), (1, 1, 40, 1), (1, 1, 45, 16), (1, 1157, 8, 136),
          (1, 130, 1000, 136), (2, 67, 600, 40)]  # the last two split k (too few tiles for the chip)
KINDS = [("compact", "compact"), ("transposed", "compact"), ("compact", "transposed"),
         ("transposed", "transposed"), ("pitched", "pitched"), ("pitched", "pitched_transposed"),
         ("pitched_transposed", "pitched"), ("pitched_transposed", "pitched_transposed"),
         ("compact", "broadcast"), ("broadcast", "compact"), ("misaligned", "compact"), ("flipped", "compact"),
         ("compact", "every_other")]


def run(emulator, dtype, batch, m, n, p, a_kind, b_kind):
    a = layout(a_kind, batch, m, n)
    b = layout(b_kind, batch, n, p)
    args = [emulator, dtype] + [str(v) for v in (batch, m, n, p) + a + b]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout


@pytest.mark.parametrize("a_kind,b_kind", KINDS, ids=[f"{a}-{b}" for a, b in KINDS])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_emulated_rungs_match_float64(emulator, shape, a_kind, b_kind):
    batch, m, n, p = shape
    dtype = "bfloat16" if (m + n + p) % 2 else "float16"
    rc, out = run(emulator, dtype, batch, m, n, p, a_kind, b_kind)
    assert rc == 0, out[-3000:]
    expect4 = stageable(a_kind, batch, m, n) and stageable(b_kind, batch, n, p)
    assert ("rung4 ran" in out) == expect4, out
    assert "rung4 declined" in out or expect4
    assert "rung3 ran" in out and out.rstrip().endswith("ok")


def test_every_staging_of_rung4_is_emulated(emulator):
    # the four kernels of rung 4: A staged [m][k] or [k][m], B staged [n][k] or [k][n]
    seen = set()
    for a_kind in ("compact", "pitched_transposed"):
        for b_kind in ("compact", "pitched_transposed"):
            rc, out = run(emulator, "bfloat16", 2, 130, 72, 136, a_kind, b_kind)
            assert rc == 0, out[-3000:]
            seen.add(out.splitlines()[0])
    assert seen == {f"rung4 ran (A staged {a}, B staged {b}) in 1 k-range" for a in ("[m][k]", "[k][m]")
                    for b in ("[n][k]", "[k][n]")}


@pytest.mark.parametrize("sms,ranges", [(132, 4), (16, 4), (2, 1)])
def test_split_k_is_emulated(emulator, sms, ranges):
    # 4 output tiles, 32 k-tiles of 32: the launcher wants two blocks per multiprocessor,
    # in ranges of at least 8 k-tiles, so at most 4 ranges, and none once the tiles fill the chip
    a, b = layout("compact", 1, 130, 1000), layout("compact", 1, 1000, 136)
    r = subprocess.run([emulator, "bfloat16", "1", "130", "1000", "136"] + [str(v) for v in a + b] + [str(sms)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"in {ranges} k-range" in r.stdout.splitlines()[0]


def test_emulator_refuses_views_outside_their_buffer(emulator):
    r = subprocess.run([emulator, "bfloat16", "1", "4", "4", "4", "0", "4", "1", "0", "15", "0", "4", "1", "0", "16"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "outside a buffer" in r.stdout


# Slips the emulation must catch: an ldmatrix lane one matrix off, a chunk that reads one
# element past the edge of k, a raster that revisits tiles.
MUTATIONS = [("*c = kk + (lane >> 4) * 8;", "*c = kk + ((lane >> 3) & 1) * 8;"),
             ("clamp64(k_extent - k, 0, kChunk)", "clamp64(k_extent - k + 1, 0, kChunk)"),
             ("*tm = first + in_group % rows;", "*tm = first + in_group % kGroupM;")]


@pytest.mark.parametrize("old,new", MUTATIONS, ids=["ldmatrix_lane", "chunk_edge", "raster"])
def test_emulation_fails_on_a_wrong_index(tmp_path, old, new):
    if not CXX:
        pytest.skip("no C++ compiler")
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "src", "common"), src / "common")
    (src / "cuda").mkdir()
    text = open(os.path.join(ROOT, "src", "cuda", "matmul_tc_layout.cuh")).read()
    assert text.count(old) == 1
    (src / "cuda" / "matmul_tc_layout.cuh").write_text(text.replace(old, new))
    exe = str(tmp_path / "emu")
    r = subprocess.run([CXX, "-std=c++17", "-O1", "-I", str(src), SOURCE, "-o", exe], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = layout("compact", 1, 1157, 72), layout("compact", 1, 72, 136)
    r = subprocess.run([exe, "bfloat16", "1", "1157", "72", "136"] + [str(v) for v in a + b], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "checks failed" in r.stdout, r.stdout[-2000:]
