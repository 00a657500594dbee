"""Write the benchmark results into the README and the bundle docs (the numbers are never typed by hand).

Reads a ``train_sweep.py`` output folder, a ``cost.py`` JSON and the evaluations of the shipped models, rewrites
the blocks between ``<!-- BEGIN generated: NAME ... -->`` and ``<!-- END generated: NAME -->`` markers, and copies
the figures to the bundle's ``docs/images``:

    python benchmarks/update_docs.py --sweep runs/sweep_full --cost benchmarks/results/cost.json \
        --shipped float=runs/ship/eval_float/summary.json "fixed4=..." "shipped model=..."

Each of ``--sweep``, ``--cost``, ``--shipped`` rewrites only its own blocks.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from cost import markdown_tables
from machine import describe
from results_table import PAPER, load, paired_difference, table
from train_sweep import run_dir, training_time_table

REPO = Path(__file__).resolve().parents[1]
BUNDLE_DOCS = REPO / "bundles" / "quantunet_brain_tumor_seg" / "docs"
README = REPO / "README.md"


def replace_block(text: str, name: str, content: str, source: str) -> str:
    """``text`` with the body of block ``name`` replaced by ``content``; raises if the markers are missing."""
    pattern = re.compile(rf"(<!-- BEGIN generated: {name} [^\n]*-->\n).*?(<!-- END generated: {name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{source}: no '<!-- BEGIN generated: {name} ... -->' / '<!-- END generated: {name} -->' block")
    return pattern.sub(lambda m: m[1] + content.rstrip("\n") + "\n" + m[2], text)


SAME_SIZE_TOLERANCE = 0.02  # "same size": weight memory within 2% of the baseline's


def findings(results: dict, chosen: str) -> list[str]:
    """Plain statements computed from the rows: the best learned run at each fixed baseline's weight memory,
    the chosen run against the paper's point, bits by λ."""
    out = []
    flt = results.get("float")
    learned = {n: s for n, s in results.items() if n.startswith("learned@")}
    fixed = {n: s for n, s in results.items() if re.fullmatch(r"fixed\d", n)}
    for name, f in sorted(fixed.items(), key=lambda item: -item[1]["bits"]["weight_memory_bytes"]):
        budget = f["bits"]["weight_memory_bytes"] * (1 + SAME_SIZE_TOLERANCE)
        fits = {n: s for n, s in learned.items() if s["bits"]["weight_memory_bytes"] <= budget}
        if not fits:
            continue
        best = max(fits, key=lambda n: fits[n]["dice"]["mean"])
        b = fits[best]
        gain = b["dice"]["mean"] - f["dice"]["mean"]
        verdict = "beats" if gain > 0 else ("ties with" if gain == 0 else "does **not** beat")
        diff, diff_se = paired_difference(b, f)
        out.append(
            f"Best learned run at {name}'s weight memory or less: `{best}`, Dice {b['dice']['mean']:.4f} at "
            f"{b['bits']['weight_memory_bytes'] / 1024:.1f} KiB ({b['bits']['mean_weight_bits']:.2f} mean weight bits), "
            f"{verdict} {name}'s {f['dice']['mean']:.4f} at {f['bits']['weight_memory_bytes'] / 1024:.1f} KiB "
            f"({100 * b['bits']['weight_memory_bytes'] / f['bits']['weight_memory_bytes']:.0f}% of its memory; "
            f"per-volume difference {diff:+.2f} ± {diff_se:.2f} points, mean ± s.e.)."
        )
    if chosen in results and flt:
        c = results[chosen]
        drop, drop_se = paired_difference(c, flt)
        out.append(
            f"`{chosen}` against the paper's point ({PAPER['mean_weight_bits']} mean bits, "
            f"-{PAPER['dice_drop_points']} points vs float): {c['bits']['mean_weight_bits']:.2f} mean weight bits "
            f"({c['bits']['size_weighted_weight_bits']:.2f} size-weighted), {c['bits']['mean_activation_bits']:.2f} "
            f"activation bits, {c['bits']['compression_vs_float32']:.1f}x smaller weights, Dice {drop:+.2f} ± {drop_se:.2f} "
            f"points vs the float run (pixel accuracy {100 * (c['accuracy']['mean'] - flt['accuracy']['mean']):+.2f} points)."
        )
    lam = sorted((float(n.split("@")[1].split(":")[0]), n) for n in learned)
    if len(lam) > 1:
        out.append("Mean weight bits by λ: " + ", ".join(
            f"{v:g} → {learned[n]['bits']['mean_weight_bits']:.2f} (Dice {learned[n]['dice']['mean']:.3f})" for v, n in lam) + ".")
    return out


def sweep_block(sweep_dir: Path, chosen: str, images: Path) -> tuple[str, str]:
    """(bundle-docs block, README block) from a train_sweep output folder; copies its figures to ``images``."""
    results = json.loads((sweep_dir / "results.json").read_text())
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    timing = json.loads((sweep_dir / "training_time.json").read_text())
    rows = list(results.items())
    wall = max(r["wall_seconds"] for r in sweep["runs"].values()) / 60
    chosen_dir = run_dir(sweep_dir, chosen)
    figures = {"sweep_pareto.png": sweep_dir / "pareto.png", "sweep_widths_by_lambda.png": sweep_dir / "widths_by_lambda.png",
               "sweep_bit_widths.png": chosen_dir / "bit_widths.png", "sweep_bit_widths_history.png": chosen_dir / "bit_widths_history.png"}
    images.mkdir(parents=True, exist_ok=True)
    for dst, src in figures.items():
        shutil.copyfile(src, images / dst)
    settings = (f"{len(rows)} runs in parallel (one process each), every run initialised from "
                f"`{Path(sweep['init_checkpoint']).name if sweep.get('init_checkpoint') else 'random weights'}`, "
                f"{sweep['epochs']} epochs x {sweep['samples_per_epoch']} slices (batch {sweep['batch_size']}), seed "
                f"{sweep['seed']}, cosine learning rate, bit learning rate {sweep.get('bit_learning_rate') or 'as in train.json'}; "
                "each evaluated at its best validation epoch")
    main = "\n".join([
        f"Machine: {describe(timing['machine'])}. {settings}; training took {wall:.0f} min of wall time.",
        "",
        f"```bash\n{sweep['command']}\n```",
        "",
        table(rows),
        "",
        *[f"- {line}" for line in findings(results, chosen)],
    ])
    docs = "\n".join([
        main,
        "",
        "Training time per epoch in the same run (the runs shared the cores, so these ratios are rough; "
        "`benchmarks/cost.py` below times one step of each model alone):",
        "",
        training_time_table(timing["median_epoch_seconds"]),
        "",
        "![Dice vs weight memory and vs BOPs](images/sweep_pareto.png)",
        "",
        "Where the bits go: final widths of every learned run, and the widths of "
        f"`{chosen}` after training and epoch by epoch:",
        "",
        "![final widths by lambda](images/sweep_widths_by_lambda.png)",
        f"![final widths of {chosen}](images/sweep_bit_widths.png)",
        f"![widths of {chosen} during training](images/sweep_bit_widths_history.png)",
    ])
    return docs, main


def cost_block(cost: dict) -> str:
    """Machine, command and the tables of a cost.py report."""
    header = (f"Machine: {describe(cost['machine'])}; {cost['threads']} threads; channels {cost['channels']}; "
              f"volume {cost['volume']}; weights: {cost['weights']['quant']} (QuantU-Net), {cost['weights']['float']} (float).")
    return "\n".join([header, "", f"```bash\n{cost['command']}\n```", "", markdown_tables(cost)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=None, help="train_sweep.py output folder")
    parser.add_argument("--cost", default=None, help="cost.py JSON report (e.g. benchmarks/results/cost.json)")
    parser.add_argument("--shipped", nargs="+", default=None, metavar="NAME=SUMMARY_JSON",
                        help="evaluations of the shipped models (bundle evaluate.json's summary.json), in table order")
    parser.add_argument("--chosen", default="learned@0.25:init4", help="learned run whose widths are shown")
    parser.add_argument("--readme", default=str(README), help="top-level README to update")
    parser.add_argument("--bundle-docs", default=str(BUNDLE_DOCS), help="bundle docs folder (README.md, images/)")
    args = parser.parse_args(argv)
    docs_dir, readme = Path(args.bundle_docs), Path(args.readme)
    docs_blocks, readme_blocks = {}, {}  # only the blocks whose inputs are given are rewritten
    if args.sweep:
        docs_blocks["sweep"], readme_blocks["sweep"] = sweep_block(Path(args.sweep), args.chosen, docs_dir / "images")
    if args.cost:
        docs_blocks["cost"] = cost_block(json.loads(Path(args.cost).read_text()))
    if args.shipped:
        docs_blocks["shipped"] = readme_blocks["shipped"] = table([load(spec) for spec in args.shipped])
    if not docs_blocks:
        parser.error("give at least one of --sweep, --cost, --shipped")
    docs_path = docs_dir / "README.md"
    docs = docs_path.read_text()
    for name, content in docs_blocks.items():
        docs = replace_block(docs, name, content, str(docs_path))
    docs_path.write_text(docs)
    text = readme.read_text()
    for name, content in readme_blocks.items():
        text = replace_block(text, name, content, str(readme))
    readme.write_text(text)
    print(f"updated {docs_path} and {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
