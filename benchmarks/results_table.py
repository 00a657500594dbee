"""Markdown table of evaluated models (from the bundle evaluation's ``summary.json`` files).

    python benchmarks/results_table.py NAME=eval_dir/summary.json [NAME=...] [--out results.json] [--png pareto.png]

Columns: mean per-volume Dice (std), pixel accuracy, IoU, mean weight bits (simple / size-weighted), mean
activation bits, weight memory, compression vs float32. Each number is read from the files, none typed in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PAPER = {"mean_weight_bits": 4.24, "dice_drop_points": 1.89}  # QuantU-Net paper: 4.24 bits, -1.89 accuracy points


def load(spec: str) -> tuple[str, dict]:
    name, path = spec.rsplit("=", 1)
    return name, json.loads(Path(path).read_text())["summary"]


def table(rows: list[tuple[str, dict]]) -> str:
    out = [
        "| model | Dice mean (std) | pixel accuracy | IoU | weight bits (simple / size-weighted) | activation bits | weights | vs float32 | GBOPs / slice |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows:
        b = s["bits"]
        out.append(
            f"| {name} | {s['dice']['mean']:.4f} ({s['dice']['std']:.3f}) | {100 * s['accuracy']['mean']:.2f}% | "
            f"{s['iou']['mean']:.4f} | {b['mean_weight_bits']:.2f} / {b['size_weighted_weight_bits']:.2f} | "
            f"{b['mean_activation_bits']:.2f} | {b['weight_memory_bytes'] / 1024:.1f} KiB | "
            f"{b['compression_vs_float32']:.1f}x | {s.get('cost_per_slice', {}).get('bops', float('nan')) / 1e9:.2f} |"
        )
    return "\n".join(out)


def pareto_png(rows: list[tuple[str, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in rows:
        kib = s["bits"]["weight_memory_bytes"] / 1024
        ax.scatter(kib, s["dice"]["mean"])
        ax.annotate(name, (kib, s["dice"]["mean"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("weight memory (KiB, log)")
    ax.set_ylabel("mean per-volume Dice")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=SUMMARY_JSON")
    parser.add_argument("--out", help="write the rows as JSON")
    parser.add_argument("--png", help="write Dice vs weight memory as PNG")
    args = parser.parse_args()
    rows = [load(spec) for spec in args.runs]
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({name: s for name, s in rows}, indent=1))
    if args.png:
        pareto_png(rows, args.png)


if __name__ == "__main__":
    main()
