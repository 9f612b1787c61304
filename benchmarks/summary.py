"""Condensed ratio table from a benchmarks/results JSON file, for the top-level README.

    python benchmarks/summary.py benchmarks/results/cpu-<date>.json
"""
import json
import math
import sys

# (section, name prefix) -> the reference whose ratio is shown
ROWS = [
    ("gemm", "sgemm 256^3", "numpy"), ("gemm", "sgemm 512^3", "numpy"),
    ("gemm", "sgemm 1024^3", "numpy"), ("gemm", "sgemm 2048^3", "numpy"),
    ("dtype_gemm", "float64 gemm 1024^3", "numpy"), ("dtype_gemm", "float64 gemm 2048^3", "numpy"),
    ("dtype_gemm", "float16 gemm 1024^3", "f32"), ("dtype_gemm", "float16 gemm 2048^3", "f32"),
    ("dtype_gemm", "bfloat16 gemm 1024^3", "f32"), ("dtype_gemm", "bfloat16 gemm 2048^3", "f32"),
    ("bandwidth", "ewise_add", "copy"), ("bandwidth", "reduce_sum", "copy"),
    ("compact", "transpose 2048^2", "numpy"),
    ("train", "step ResNet9", "torch"), ("train", "step MLPResNet", "torch"), ("train", "step LSTM", "torch"),
    ("overhead", "add 1-elem", "torch"), ("overhead", "tiny matmul", "torch"),
]

REF_NAMES = {"f32": "needle float32"}


def fmt(entry, ref):
    if entry["section"] == "overhead":
        v = entry["values"]
        return f"{v['needle']:.1f} µs vs {v['torch']:.1f} µs ({v['needle'] / v['torch']:.2f}x the time)"
    ratio = entry.get(f"ratio_vs_{ref}")
    return f"{ratio:.2f}" if ratio is not None else "n/a"


def main(path):
    data = json.load(open(path))
    results = data["results"]
    m = data["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores; needle GEMM kernel {m['needle_kernel']}; "
          f"numpy {m['numpy']}, torch {m.get('torch', 'absent')}; date {m['date']}. "
          f"Ratios are needle throughput / reference throughput (> 1: needle faster).\n")
    print(f"| benchmark | reference | 1 thread | 2 threads |")
    print("|---|---|---|---|")
    for section, prefix, ref in ROWS:
        cells = []
        for threads in (1, 2):
            hits = [e for e in results if e["section"] == section and e["threads"] == threads
                    and e["name"].startswith(prefix) and "settled" not in e["name"]]
            cell = fmt(hits[0], ref) if hits else ""
            settled = [e for e in results if e["section"] == section and e["threads"] == threads
                       and e["name"] == prefix + " settled"]
            if settled:
                cell += f" (settled {fmt(settled[0], ref)})"
            cells.append(cell)
        print(f"| {prefix} | {REF_NAMES.get(ref, ref)} | {cells[0]} | {cells[1]} |")
    conv = {t: [e for e in results if e["section"] == "conv" and e["name"].startswith("fwd+bwd") and e["threads"] == t]
            for t in (1, 2)}
    if conv[1]:
        cells = []
        for t in (1, 2):
            ratios = [e["ratio_vs_torch"] for e in conv[t]]
            geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
            cells.append(", ".join(f"{r:.2f}" for r in ratios) + (f" (geomean {geo:.2f})" if geo else ""))
        print(f"| conv fwd+bwd per ResNet9 layer | torch | {cells[0]} | {cells[1]} |")
    cmem = {t: [e for e in results if e["section"] == "conv_memory" and e["threads"] == t] for t in (1, 2)}
    for i, e in enumerate(cmem[1]):
        cells = []
        for t in (1, 2):
            if i < len(cmem[t]):
                v, x = cmem[t][i]["values"], cmem[t][i].get("memory_x")
                cells.append(f"{v['needle']:.1f} MiB vs {v['torch']:.1f} MiB" + (f" ({x:.2f}x)" if x else ""))
            else:
                cells.append("")
        print(f"| extra memory, conv {e['name']} | torch | {cells[0]} | {cells[1]} |")
    mem = [e for e in results if e["section"] == "memory" and e["threads"] == 1]
    if mem:
        v = mem[0]["values"]
        print(f"| ResNet9 step peak RSS | torch | {v['needle']:.0f} MiB vs {v['torch']:.0f} MiB | |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu-2026-11-24.json")
