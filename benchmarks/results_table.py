"""Markdown table and Pareto plot of evaluated models (from the bundle evaluation's ``summary.json`` files).

    python benchmarks/results_table.py NAME=eval_dir/summary.json [NAME=...] [--out results.json] [--png pareto.png]

Columns: mean per-volume Dice (std), pixel accuracy, IoU, mean weight bits (simple / size-weighted), mean
activation bits, weight memory, compression vs float32, BOPs per slice, and the Dice change vs the float twin
(the row named ``float``, when present: mean of the per-volume differences and its standard error). Each number is read from the files, none typed in. The plot puts Dice
against weight memory and against BOPs, with the Pareto front and the paper's operating point as reference.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# QuantU-Net paper (arXiv 2503.08719): 4.24 mean bits, validation accuracy 1.89 points below its float model
PAPER = {"mean_weight_bits": 4.24, "dice_drop_points": 1.89}
FLOAT_ROW = "float"


def load(spec: str) -> tuple[str, dict]:
    """``NAME=path/summary.json`` -> (name, the file's ``summary`` with its per-volume ``cases`` added)."""
    name, path = spec.rsplit("=", 1)
    report = json.loads(Path(path).read_text())
    return name, {**report["summary"], "cases": report["cases"]}


def _float_row(rows: list[tuple[str, dict]]) -> dict | None:
    return next((s for name, s in rows if name == FLOAT_ROW), None)


def paired_difference(summary: dict, reference: dict) -> tuple[float, float]:
    """Mean and standard error of the per-volume Dice difference ``summary - reference`` (same volumes, by case
    name), in Dice points (x100). Pairing removes the volume-to-volume spread that both models share."""
    ref = {c["case"]: c["dice"] for c in reference["cases"]}
    diffs = [100 * (c["dice"] - ref[c["case"]]) for c in summary["cases"] if c["case"] in ref]
    if len(diffs) != len(reference["cases"]) or len(diffs) < 2:
        raise ValueError("paired comparison needs both evaluations on the same (at least 2) volumes")
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, (var / len(diffs)) ** 0.5


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table, one row per model, in the given order."""
    ref = _float_row(rows)
    out = [
        "| model | Dice mean (std) | Δ Dice vs float, points (paired s.e.) | pixel accuracy | IoU | weight bits (simple / size-weighted) "
        "| activation bits | weights | vs float32 | GBOPs / slice |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows:
        b, dice = s["bits"], s["dice"]["mean"]
        delta = "%+.2f (%.2f)" % paired_difference(s, ref) if ref is not None else "n/a"
        out.append(
            f"| {name} | {dice:.4f} ({s['dice']['std']:.3f}) | {delta} | {100 * s['accuracy']['mean']:.2f}% | "
            f"{s['iou']['mean']:.4f} | {b['mean_weight_bits']:.2f} / {b['size_weighted_weight_bits']:.2f} | "
            f"{b['mean_activation_bits']:.2f} | {b['weight_memory_bytes'] / 1024:.1f} KiB | "
            f"{b['compression_vs_float32']:.1f}x | {s['cost_per_slice']['bops'] / 1e9:.2f} |"
        )
    return "\n".join(out)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal Dice, one strictly),
    sorted by cost. ``points``: (cost, dice)."""
    front = [
        i for i, (c, d) in enumerate(points)
        if not any((c2 <= c and d2 >= d) and (c2 < c or d2 > d) for c2, d2 in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def _short(name: str) -> str:
    """Plot label: ``learned@0.25:init4`` -> ``λ=0.25``."""
    return re.sub(r"^learned@([0-9.]+).*$", r"λ=\1", name)


def pareto_png(rows: list[tuple[str, dict]], path: str) -> None:
    """Two panels: Dice vs weight memory (KiB) and Dice vs GBOPs per slice, log x; front as a line; the paper's
    point (4.24 bits, float Dice - 1.89 points) where a float row gives its reference. Runs that collapsed (Dice
    below half the best) are listed under the plot instead of stretching the axis."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    from matplotlib.ticker import NullFormatter

    best = max(s["dice"]["mean"] for _, s in rows)
    shown = [(n, s) for n, s in rows if s["dice"]["mean"] >= best / 2]
    collapsed = [f"{n} (Dice {s['dice']['mean']:.3f})" for n, s in rows if s["dice"]["mean"] < best / 2]
    axes_def = [
        ("weight memory (KiB, log)", lambda s: s["bits"]["weight_memory_bytes"] / 1024),
        ("GBOPs per 128 x 128 slice (log)", lambda s: s["cost_per_slice"]["bops"] / 1e9),
    ]
    float_row = _float_row(rows)
    ref = float_row["dice"]["mean"] if float_row else None
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (label, cost) in zip(axes, axes_def):
        points = [(cost(s), s["dice"]["mean"]) for _, s in shown]
        for i, ((name, _), (x, y)) in enumerate(zip(shown, points)):
            ax.scatter(x, y, s=18)
            ax.annotate(_short(name), (x, y), fontsize=7, xytext=(4, 6 - 9 * (i % 3)), textcoords="offset points")
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8, label="Pareto front")
        if ref is not None:
            ax.axhline(ref - PAPER["dice_drop_points"] / 100, color="tab:red", lw=0.8, ls=":",
                       label=f"float - {PAPER['dice_drop_points']} points (paper's drop)")
            if label.startswith("weight"):
                float_kib = next(s["bits"]["float32_weight_memory_bytes"] for _, s in rows) / 1024
                ax.plot(float_kib * PAPER["mean_weight_bits"] / 32, ref - PAPER["dice_drop_points"] / 100, "r*",
                        ms=12, label=f"paper: {PAPER['mean_weight_bits']} bits, -{PAPER['dice_drop_points']} points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("mean per-volume Dice")
    if collapsed:
        fig.text(0.01, 0.01, "not shown (collapsed): " + ", ".join(collapsed), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if collapsed else 0, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=SUMMARY_JSON")
    parser.add_argument("--out", help="write the rows as JSON")
    parser.add_argument("--png", help="write the Pareto plot (Dice vs weight memory and vs BOPs) as PNG")
    args = parser.parse_args()
    rows = [load(spec) for spec in args.runs]
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(rows), indent=1))
    if args.png:
        pareto_png(rows, args.png)


if __name__ == "__main__":
    main()
