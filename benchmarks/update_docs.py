"""Write the benchmark results into the bundle docs and the README (the numbers are never typed by hand).

Reads a ``train_sweep.py`` results folder, ``cost.py`` JSONs (one per machine) and the evaluations of the shipped
models, rewrites the blocks between ``<!-- BEGIN generated: NAME ... -->`` and ``<!-- END generated: NAME -->``
markers, and copies the figures to the bundle's ``docs/images``:

    python benchmarks/update_docs.py --sweep benchmarks/results/sweep --cost benchmarks/results/cost*.json \
        --chosen "learned@0.25:init4" --shipped "float=benchmarks/results/shipped/float/summary.json" \
        "fixed 4-bit=benchmarks/results/shipped/fixed4/summary.json" \
        "shipped: learned (λ=0.125, from 4 bits)=benchmarks/results/shipped/learned/summary.json"
    python benchmarks/update_docs.py --cv benchmarks/results/cv_long   # after train_sweep.py --folds (its README)
    python benchmarks/update_docs.py --click-robot benchmarks/results/click_robot.json --finetune benchmarks/results/finetune.json

Each of ``--sweep``, ``--cost``, ``--shipped``, ``--cv`` rewrites only its own blocks. Results live in the bundle
docs; the README carries only the table of the shipped models (``--shipped``), whose ``shipped...`` row also
writes ``eval_metrics`` of the bundle's ``configs/metadata.json``, and the short out-of-fold table (``--cv``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import click_robot
import finetune
from cost import markdown_tables
from machine import describe
from results_table import PAPER, load, paired_difference, table
from paths import INTERACTIVE_BUNDLE, REPO, SEG_BUNDLE
from train_sweep import collect, plateau_table, run_dir, run_overrides, seed_table, training_time_table

INTERACTIVE_DOCS = INTERACTIVE_BUNDLE / "docs" / "README.md"
APP_README = REPO / "slicer_app" / "README.md"
BUNDLE_DOCS = SEG_BUNDLE / "docs"
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
    learned = {n: s for n, s in results.items() if n.startswith("learned@") and ":ctx" not in n}
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
    for name, s in results.items():
        base, _, k = name.partition(":ctx")
        if k and base in results:
            diff, diff_se = paired_difference(s, results[base])
            out.append(f"2.5D at the same budget: `{name}` ({k} adjacent slices as input channels) Dice "
                       f"{s['dice']['mean']:.4f} against `{base}`'s {results[base]['dice']['mean']:.4f} (2D), per-volume "
                       f"difference {diff:+.2f} ± {diff_se:.2f} points.")
    lam = sorted((float(n.split("@")[1].split(":")[0]), n) for n in learned)
    if len(lam) > 1:
        out.append("Mean weight bits by λ (at the best validation epoch): " + ", ".join(
            f"`{n}` → {learned[n]['bits']['mean_weight_bits']:.2f} (Dice {learned[n]['dice']['mean']:.3f})" for _, n in lam) + ".")
    return out


def click_robot_block(result: dict) -> str:
    """The robot-user table and targets of ``benchmarks/click_robot.py``, and the mean Dice after each click."""
    curve = " → ".join(f"{d:.3f}" for d in result["models"]["new"]["mean_dice"])
    return click_robot.markdown_table(result) + f"\n\nMean Dice per click (auto, 1..{result['clicks']}): {curve}."


def write_click_metrics(metadata_path: Path, result: dict) -> None:
    """The robot user's numbers in the interactive bundle's ``metadata.json`` ``eval_metrics`` (other entries kept)."""
    meta = json.loads(metadata_path.read_text())
    new = result["models"]["new"]
    dice = new["mean_dice"]
    meta["eval_metrics"] = {**meta.get("eval_metrics", {}), "mean_dice_auto": round(dice[0], 4),
                            **{f"mean_dice_{n}_click{'s' if n > 1 else ''}": round(dice[n], 4) for n in (1, 5, 10) if n < len(dice)},
                            "noc85": round(new["noc85"], 2), "noc90": round(new["noc90"], 2)}
    metadata_path.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n")


def write_block(path: Path, name: str, content: str) -> None:
    path.write_text(replace_block(path.read_text(), name, content, str(path)))


def write_eval_metrics(metadata_path: Path, shipped: list[tuple[str, dict]]) -> None:
    """``eval_metrics`` of the bundle's ``metadata.json`` from the evaluation of the shipped model (the ``--shipped``
    row whose name starts with ``shipped``)."""
    name, summary = next(((n, s) for n, s in shipped if n.startswith("shipped")), (None, None))
    if summary is None:
        raise ValueError("--shipped: no row named 'shipped...' (the model in models/model.pt) for metadata.json")
    meta = json.loads(metadata_path.read_text())
    bits = summary["bits"]
    meta["eval_metrics"] = {
        "mean_dice": round(summary["dice"]["mean"], 4),
        "pixel_accuracy": round(summary["accuracy"]["mean"], 4),
        "mean_weight_bits": round(bits["mean_weight_bits"], 2),
        "size_weighted_weight_bits": round(bits["size_weighted_weight_bits"], 2),
        "mean_activation_bits": round(bits["mean_activation_bits"], 2),
    }
    metadata_path.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n")


def sweep_block(results_dir: Path, chosen: str, images: Path) -> str:
    """The bundle-docs block of a train_sweep results folder (``report`` already run); copies its figures to
    ``images``."""
    found = collect(results_dir)
    rows = [(name, next(iter(seeds.values()))["summary"]) for name, seeds in found.items()]
    seeds_md, _ = seed_table(found)
    images.mkdir(parents=True, exist_ok=True)
    for name in ("pareto.png", "curves.png", "widths_by_lambda.png"):
        if (results_dir / name).is_file():
            shutil.copyfile(results_dir / name, images / f"sweep_{name}")
    if chosen in found:
        shutil.copyfile(run_dir(results_dir, chosen, next(iter(found[chosen]))) / "overlays.png", images / "sweep_overlays.png")
    runs = [r["run"] for seeds in found.values() for r in seeds.values()]
    budgets = sorted({(run_overrides(r["run"])["quantization"] == "float", r["overrides"]["max_epochs"], r["overrides"]["samples_per_epoch"],
                       r["overrides"]["init_checkpoint"] or "random weights") for r in runs})
    settings = "; ".join(f"{'float twin' if is_float else 'quantized arms'}: {e} epochs x {n} slices from {init}"
                         for is_float, e, n, init in budgets)
    machines = sorted({describe(r["machine"]) for r in runs})
    commands = list(dict.fromkeys(r["command"] for r in runs))
    wall = sum(r["wall_seconds"] for r in runs) / 3600
    main = "\n".join([
        f"Machine: {'; '.join(machines)}. {settings}; batch 16, cosine learning rate, each run evaluated at its best "
        f"validation epoch; {len(runs)} runs, {wall:.1f} h of training wall time in all. Commands, in order:",
        "",
        "```bash\n" + "\n".join(commands) + "\n```",
        "",
        table(rows),
        "",
        *[f"- {line}" for line in findings(dict(rows), chosen)],
        *(["", "Seeds (every arm of the key comparison trained with each seed):", "", seeds_md] if seeds_md else []),
    ])
    docs = "\n".join([
        main,
        "",
        "Validation Dice per epoch (the float twin's plateau justifies the quantized arms' budget):",
        "",
        "![validation Dice per epoch](images/sweep_curves.png)",
        "",
        plateau_table(json.loads((results_dir / "results.json").read_text())["plateau"]),
        "",
        "Training time per epoch in the same sweep (runs shared the cores; `benchmarks/cost.py` below times one "
        "step of each model alone):",
        "",
        training_time_table(json.loads((results_dir / "training_time.json").read_text())["median_epoch_seconds"]),
        "",
        "![Dice vs weight memory and vs BOPs](images/sweep_pareto.png)",
        "",
        "Where the bits go: final widths of every learned run:",
        "",
        "![final widths by lambda](images/sweep_widths_by_lambda.png)",
        *(["", f"What a radiologist would look at: `{chosen}` on the best, median and worst validation volumes, each "
           "on its most tumor-bearing slice (FLAIR; ground truth green; prediction red, ground-truth outline in "
           "lime), written by the bundle evaluation:", "", f"![{chosen}: best, median, worst](images/sweep_overlays.png)"]
          if chosen in found else []),
    ])
    return docs


def schedule(run: dict) -> str:
    """One cross-validation run's training schedule in words, from its ``run.json``."""
    o, then = run["overrides"], run.get("continuation")
    init = o.get("init_checkpoint", "")
    start = ("from random weights" if not init else "from the fold's float twin" if init.startswith("float/fold")
             else f"fine-tuned from {init}")
    text = f"{start}, {o['max_epochs']} epochs x {o['samples_per_epoch']} slices"
    if then:
        text += (f", then {then['max_epochs']} at learning rate {then['learning_rate']:g}"
                 + (" with the widths frozen" if then["freeze_bit_widths"] else ""))
    return text


def cv_block(results_dir: Path, images: Path) -> str:
    """The cross-validation block (``train_sweep.py --folds``; ``cv_report`` already run): settings, machines,
    commands and wall time from the kept ``run.json`` files, then ``results.md``; copies ``cv.png`` to ``images``."""
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*/fold*/run.json"))]
    folds = json.loads((results_dir / "folds.json").read_text())
    schedules: dict[str, dict[str, list[int]]] = {}  # arm -> schedule -> folds
    for r in sorted(runs, key=lambda r: (r["run"] != "float", r["run"], r["fold"])):
        schedules.setdefault(r["run"], {}).setdefault(schedule(r), []).append(r["fold"])
    settings = "; ".join(f"`{arm}`: " + ", ".join(f"{text} (fold{'s' * (len(f) > 1)} {', '.join(map(str, f))})"
                                                  for text, f in by_schedule.items())
                         for arm, by_schedule in schedules.items())
    wall = sum(r["wall_seconds"] + r["evaluation_seconds"] for r in runs) / 3600
    images.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results_dir / "cv.png", images / "sweep_cv.png")
    return "\n".join([
        f"Machine: {'; '.join(sorted({describe(r['machine']) for r in runs}))}. {len(folds['folds'])} patient-level folds: "
        f"{folds['rule'].replace('``', '`')} Schedules, per arm: {settings}; batch 16, cosine learning rate, the last epoch's weights "
        f"(nothing selected on held-out patients); {len(runs)} runs, {wall:.1f} h of training and evaluation wall time. "
        "Commands:",
        "",
        "```bash\n" + "\n".join(dict.fromkeys(r["command"] for r in runs)) + "\n```",
        "",
        (results_dir / "results.md").read_text().rstrip("\n"),
        "",
        "![out-of-fold Dice per patient, original and skull-stripped](images/sweep_cv.png)",
    ])


def cv_summary_table(results_dir: Path) -> str:
    """The README's short out-of-fold table (``cv_report``'s ``results.json``): bits, Dice on the original and the
    skull-stripped volumes, paired difference to the fixed 4-bit arm."""
    results = json.loads((results_dir / "results.json").read_text())
    arms, reference = results["arms"], results["reference"]
    lines = ["| arm (patients out of fold) | weight bits (simple / size-weighted) | act bits | Dice ± s.e. | "
             "skull-stripped Dice ± s.e. | Δ vs fixed 4-bit, points |", "| --- | --- | --- | --- | --- | --- |"]
    for name, a in arms.items():
        delta = f"{a[f'dice - {reference}'][0]:+.2f} ± {a[f'dice - {reference}'][1]:.2f}" if name != reference else "n/a"
        lines.append(f"| {name} ({a['patients']}) | {a['mean_weight_bits']:.2f} / {a['size_weighted_weight_bits']:.2f} | "
                     f"{a['mean_activation_bits']:.2f} | {a['dice'][0]:.4f} ± {a['dice'][1]:.4f} | "
                     f"{a['dice_skull_stripped'][0]:.4f} ± {a['dice_skull_stripped'][1]:.4f} | {delta} |")
    return "\n".join(lines)


def cost_block(costs: list[dict]) -> str:
    """Per cost.py report (one per machine): machine, code commit, command and its tables."""
    sections = []
    for cost in costs:
        commit = f" at commit {cost['commit']}" if cost.get("commit") else ""
        header = (f"**{describe(cost['machine'])}**{commit}; {cost['threads']} threads; channels {cost['channels']}; "
                  f"volume {cost['volume']}; weights: {cost['weights']['quant']} (QuantU-Net), "
                  f"{cost['weights']['float']} (float).")
        sections.append("\n".join([header, "", f"```bash\n{cost['command']}\n```", "", markdown_tables(cost)]))
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=None, help="train_sweep.py results folder (e.g. benchmarks/results/sweep)")
    parser.add_argument("--cost", nargs="+", default=None, metavar="COST_JSON",
                        help="cost.py JSON reports, one per machine (e.g. benchmarks/results/cost*.json)")
    parser.add_argument("--shipped", nargs="+", default=None, metavar="NAME=SUMMARY_JSON",
                        help="evaluations of the shipped models (bundle evaluate.json's summary.json), in table order")
    parser.add_argument("--cv", default=None, help="train_sweep.py --folds results folder (e.g. benchmarks/results/cv_long)")
    parser.add_argument("--click-robot", default=None, help="click_robot.py JSON (-> the interactive bundle docs)")
    parser.add_argument("--finetune", default=None, help="finetune.py JSON (-> slicer_app/README.md)")
    parser.add_argument("--interactive-docs", default=str(INTERACTIVE_DOCS), help="the interactive bundle's docs README")
    parser.add_argument("--app-readme", default=str(APP_README), help="the MONAI Label app's README")
    parser.add_argument("--chosen", default="learned@0.25:init4", help="learned run whose widths are shown")
    parser.add_argument("--readme", default=str(README), help="top-level README to update")
    parser.add_argument("--bundle-docs", default=str(BUNDLE_DOCS), help="bundle docs folder (README.md, images/)")
    args = parser.parse_args(argv)
    docs_dir, readme = Path(args.bundle_docs), Path(args.readme)
    docs_blocks, readme_blocks = {}, {}  # only the blocks whose inputs are given are rewritten
    if args.sweep:
        docs_blocks["sweep"] = sweep_block(Path(args.sweep), args.chosen, docs_dir / "images")
    if args.cost:
        docs_blocks["cost"] = cost_block([json.loads(Path(path).read_text()) for path in args.cost])
    if args.shipped:
        shipped = [load(spec) for spec in args.shipped]
        docs_blocks["shipped"] = readme_blocks["shipped"] = table(shipped)
        write_eval_metrics(docs_dir.parent / "configs" / "metadata.json", shipped)
    if args.cv:
        docs_blocks["cv"] = cv_block(Path(args.cv), docs_dir / "images")
        readme_blocks["cv"] = cv_summary_table(Path(args.cv))
    if args.click_robot:
        result = json.loads(Path(args.click_robot).read_text())
        interactive_docs = Path(args.interactive_docs)
        write_block(interactive_docs, "click_robot", click_robot_block(result))
        write_click_metrics(interactive_docs.parent.parent / "configs" / "metadata.json", result)
    if args.finetune:
        write_block(Path(args.app_readme), "finetune", finetune.table(json.loads(Path(args.finetune).read_text())))
    if not docs_blocks:
        if args.click_robot or args.finetune:
            return
        parser.error("give at least one of --sweep, --cost, --shipped, --cv, --click-robot, --finetune")
    docs_path = docs_dir / "README.md"
    docs = docs_path.read_text()
    for name, content in docs_blocks.items():
        docs = replace_block(docs, name, content, str(docs_path))
    docs_path.write_text(docs)
    if readme_blocks:
        text = readme.read_text()
        for name, content in readme_blocks.items():
            text = replace_block(text, name, content, str(readme))
        readme.write_text(text)
    print(f"updated {docs_path} and {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
