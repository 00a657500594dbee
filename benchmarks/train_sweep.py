"""Quality vs bits: train bundle configurations side by side (same data, sampler, augmentation, initialisation
and epoch budget; one or more seeds), evaluate each on the validation split, and tabulate and plot the results.

Each run is the bundle's ``training`` workflow with overrides, one process per run, ``--jobs`` at a time (the
cores split between them). Every run starts from ``--init-checkpoint`` (default: the bundle's converged float
twin, i.e. QAT from float as in the paper; ``""`` trains from scratch, as the float twin itself is trained).

Run names:
    float                       the float twin
    fixed<N>                    uniform N-bit weights and activations (N in 2..8)
    learned@<lambda>[:<reduction>][:init<N>]   learned widths, loss weight lambda, bit term reduction
                                             "mean" (paper), "size_weighted" or "bops" (MAC-weighted weight x
                                             activation bits), initial width N (default 8, the paper's setting);
                                             widths are clamped to [2, N]
    <quantized run>:kd          distillation from the float twin the run starts from (its logits on the same
                                augmented slices; bundle ``distill_weight`` 1, ``teacher_checkpoint``)
    <any of these>:ctx<k>       2.5D: the slice and its neighbours as k input channels (bundle ``context_slices``)
    <quantized run>:then<N>     (cross-validation) N more epochs from the run's last weights at learning rate
                                ``CONTINUATION_LEARNING_RATE`` (a new cosine), learned widths frozen: the weights
                                adapt to the final widths (the shipped recipe)

Outputs: ``--out`` holds what is not kept (checkpoints, TensorBoard, logs): ``<out>/<run>/seed<k>/``. What the
tables are made of is kept in the repository, ``--results`` (default ``benchmarks/results/sweep``):
``<results>/<run>/seed<k>/`` holds ``summary.json`` (evaluation at the volumes' own resolution, per volume),
``overlays.png`` (best, median and worst validation volumes),
``bit_widths.json`` (widths and validation Dice per epoch) and ``run.json`` (settings, command, machine, seconds
per epoch). A (run, seed) whose results exist is not run again, so a sweep can be spread over several sittings;
``--report-only`` rebuilds ``results.md``, ``results.json``, ``pareto.png``, ``curves.png``,
``widths_by_lambda.png`` and ``training_time.json`` in ``--results`` from those files alone.

Small default (``--preset small``: float, fixed 4-bit, learned λ=0.25 from 4 bits; 2 epochs of 320 slices, bit
learning rate 0.05; about 5 minutes on 2 CPU cores; results under ``runs/sweep_small/results``):

    python benchmarks/train_sweep.py

The experiment of the bundle docs (see ``benchmarks/results/sweep/README.md`` for the commands, in order: the
float twin to its plateau first, then the arms from it, then the seeds of the key comparison):

    python benchmarks/train_sweep.py --preset converged

Patient-level cross-validation (``--preset cv``: 5 folds over all 90 patients, fold 0 = the datalist's validation
split, the others a seeded partition of its training split, saved in ``folds.json``). Per fold, in order, every arm
trains on the other folds for a fixed schedule and is validated once, at its last epoch, so no checkpoint is chosen
on the patients that score it; the float twin first (from random weights), then the quantized arms from it. Each
held-out patient is scored at its own resolution on its original volume and on a skull-stripped copy
(``monai_quantunet.data.make_skull_stripped_dataset``, made once under ``--out``), with and without flip
test-time augmentation and at every logit threshold of ``THRESHOLDS`` (the threshold calibrated on the other folds'
patients is applied to each fold). ``<results>/<run>/fold<k>/`` keeps ``cases.json`` (voxel counts per patient),
``bit_widths.json`` and ``run.json``; ``results.json``, ``results.md`` and ``cv.png`` hold the out-of-fold table
(mean ± s.e. over patients, paired differences to fixed 4-bit), refreshed after every fold. ``--baselines``
evaluates existing checkpoints (the shipped models) on fold 0 beside the new models of fold 0:

    python benchmarks/train_sweep.py --preset cv --baselines "shipped learned=learned@0.25:init4=<bundle>/models/model.pt"

``--only-folds 0 --float-init <bundle>/models/float_model.pt`` trains fold 0 alone (the validation split) with a
float twin fine-tuned from the shipped one, which trained on that fold's training patients only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from machine import machine_info
from results_table import load, paired_difference, pareto_png, table

from paths import REPO, SHARED_LGG_FLAIR
from paths import SEG_BUNDLE as BUNDLE

from monai_quantunet.data import load_datalist, make_skull_stripped_dataset

CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = CONFIGS / "train.json"
RESULTS = REPO / "benchmarks" / "results" / "sweep"
PRESETS = {
    # minutes on 2 CPU cores; bit learning rate raised so that widths visibly move in 40 steps
    "small": {"runs": ["float", "fixed4", "learned@0.25:init4"], "epochs": 2, "samples_per_epoch": 320,
              "bit_learning_rate": 0.05, "out": "runs/sweep_small", "results": "runs/sweep_small/results"},
    # the bundle docs' experiment: every quantized arm fine-tunes the converged float twin for the same budget
    "converged": {"runs": ["fixed4", "learned@0.25:init4", "learned@1.0:init4", "fixed3", "learned@0.25", "learned@1.0",
                           "learned@0.1", "learned@1.0:bops", "fixed8", "fixed2"],
                  "epochs": 30, "samples_per_epoch": 640, "bit_learning_rate": None, "out": "runs/sweep",
                  "results": str(RESULTS)},
    # patient-level 5-fold cross-validation: per fold the float twin from random weights, then fixed 4-bit and
    # learned widths (capped at 4) from it; short fixed schedules (about 2 h on one shared CPU core); the bundle's
    # bit learning rate (0.03 sent the widths to 2.4 / 2.0 bits in 60 steps); no distillation (at this budget the
    # float twin scores below fixed 4-bit: a weak teacher; fold-0 runs in ``sweep_cv_fold0_variants``)
    "cv": {"runs": ["float", "fixed4", "learned@0.125:init4"], "folds": 5, "float_epochs": 16, "epochs": 8,
           "samples_per_epoch": 320, "bit_learning_rate": None, "out": "runs/sweep_cv",
           "results": str(RESULTS.with_name("sweep_cv"))},
}
NETWORK_KEYS = ("quantization", "bit_width", "min_bit_width", "max_bit_width", "channels", "spatial_size", "context_slices")  # network_def arguments first
DISTILL_WEIGHT = 1.0  # ":kd" runs: BCE against the float twin's probabilities, weighted as the BCE against the label
KEPT_FILES = ("eval/summary.json", "eval/overlays.png", "bit_widths.json")  # from a run's folder; run.json is written
CONTINUATION_LEARNING_RATE = 5e-4  # ":then<N>" runs
_RUN_RE = re.compile(r"^(?P<kind>float|fixed(?P<bits>[2-8])|learned@(?P<lam>[0-9.]+)(?::(?P<red>mean|size_weighted|bops))?(?::init(?P<init>[2-8]))?)(?P<kd>:kd)?(?::ctx(?P<ctx>[0-9]+))?(?::then(?P<then>[0-9]+))?$")


def run_overrides(name: str) -> dict:
    """Bundle overrides for a run name (see module docstring)."""
    m = _RUN_RE.match(name)
    if not m:
        raise ValueError(f"bad run name {name!r}: use float, fixed<N> or learned@<lambda>[:mean|:size_weighted|:bops][:init<N>], "
                         "then optionally :kd, :ctx<k> and :then<N>, in this order")
    context = {"context_slices": int(m["ctx"])} if m["ctx"] else {}
    if m["kind"] == "float":
        if m["kd"] or m["then"]:
            raise ValueError(f"bad run name {name!r}: the float twin is the teacher (not distilled) and has no :then stage")
        return {"quantization": "float", **context}
    context |= {"distill_weight": DISTILL_WEIGHT} if m["kd"] else {}
    if m["bits"]:
        return {"quantization": "fixed", "bit_width": int(m["bits"]), **context}
    init = int(m["init"] or 8)
    return {
        "quantization": "learned",
        "lambda_bits": float(m["lam"]),
        "bit_reduction": m["red"] or "mean",
        "bit_width": init,
        "max_bit_width": init,
        **context,
    }


def continuation_overrides(name: str, checkpoint: Path) -> dict:
    """Bundle overrides of a ``:then<N>`` run's second stage, from ``checkpoint`` (the first stage's last
    weights); ``{}`` for runs without one."""
    epochs = int(_RUN_RE.match(name)["then"] or 0)
    if not epochs:
        return {}
    return {"max_epochs": epochs, "val_interval": epochs, "learning_rate": CONTINUATION_LEARNING_RATE,
            "init_checkpoint": str(checkpoint), "freeze_bit_widths": run_overrides(name)["quantization"] == "learned"}


def run_dir(out: str | Path, name: str, seed: int | None = None) -> Path:
    """Folder of one run: the name with '@' and ':' replaced by '_', then ``seed<k>`` when a seed is given."""
    folder = Path(out) / re.sub(r"[@:]", "_", name)
    return folder if seed is None else folder / f"seed{seed}"


def _overrides(name: str, seed: int, args: argparse.Namespace, out: Path, **extra) -> dict:
    """Bundle overrides of one run; ``extra`` replaces any of them. A distilled run's teacher is the checkpoint it
    starts from (the float twin)."""
    overrides = {
        **run_overrides(name),
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "max_epochs": args.epochs,
        "output_dir": str(out),
        "ckpt_dir": str(out),
        "checkpoint_name": "model.pt",
        "val_interval": args.val_interval,
        "batch_size": args.batch_size,
        "samples_per_epoch": args.samples_per_epoch,
        "num_workers": args.num_workers,
        "seed": seed,
        "init_checkpoint": str(Path(args.init_checkpoint).resolve()) if args.init_checkpoint else "",
    }
    if args.bit_learning_rate is not None:
        overrides["bit_learning_rate"] = args.bit_learning_rate
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    overrides.update(extra)
    if overrides.get("distill_weight"):
        overrides["teacher_checkpoint"] = overrides["init_checkpoint"]
    return overrides


def _command(run_id: str | None, config_file: str, overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else []) + ["--config_file", config_file]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return cmd


def _run_logged(cmd: list[str], log: Path, threads: int) -> None:
    """Run ``cmd`` with ``threads`` OpenMP threads (oversubscribed threads slow CPU training ~10x); raise with
    the log's tail if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as stream:
        code = subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if code:
        raise RuntimeError(f"{log} (exit {code}):\n" + "".join(log.read_text().splitlines(True)[-20:]))


def train_and_evaluate(name: str, seed: int, args: argparse.Namespace, threads: int) -> None:
    """Train one (run, seed), evaluate its best checkpoint on the validation split, keep the results."""
    out = run_dir(args.out, name, seed).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = _overrides(name, seed, args, out)
    print(f"start {name} seed {seed}", flush=True)
    start = time.time()
    _run_logged(_command("training", str(TRAIN_CONFIG), overrides), out / "train.log", threads)
    wall = time.time() - start
    evaluate(name, seed, args, threads)
    kept = run_dir(args.results, name, seed)
    kept.mkdir(parents=True, exist_ok=True)
    for file in KEPT_FILES:
        shutil.copyfile(out / file, kept / Path(file).name)
    record = {
        "run": name, "seed": seed, "overrides": overrides | {"dataset_dir": Path(args.dataset_dir).name,
                                                              "output_dir": "", "ckpt_dir": "",
                                                              "init_checkpoint": Path(args.init_checkpoint).name},
        "command": " ".join(["python", "benchmarks/train_sweep.py", *sys.argv[1:]]),
        "threads": threads, "jobs": args.jobs, "wall_seconds": wall,
        "epoch_seconds": epoch_seconds(out / "train.log"), "machine": machine_info(),
    }
    (kept / "run.json").write_text(json.dumps(record, indent=1))
    dice = json.loads((kept / "summary.json").read_text())["summary"]["dice"]["mean"]
    print(f"done  {name} seed {seed}: {wall / 60:.1f} min, validation Dice {dice:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=str(SHARED_LGG_FLAIR), help="folder with dataset.json (lgg_flair layout)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="defaults for --runs, --epochs, --samples-per-epoch, --bit-learning-rate, --out, --results")
    parser.add_argument("--runs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="each run is trained once per seed")
    parser.add_argument("--bit-learning-rate", type=float, help="bundle's bit_learning_rate (default: the bundle's)")
    parser.add_argument("--init-checkpoint", default=str(BUNDLE / "models" / "float_model.pt"),
                        help='state_dict every run starts from ("" for random initialisation)')
    parser.add_argument("--epochs", type=int, help="epochs per run")
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples-per-epoch", type=int)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (cores split between them)")
    parser.add_argument("--threads", type=int, help="threads per run (default: the cores split between --jobs runs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="extra bundle overrides")
    parser.add_argument("--out", help="checkpoints, logs, TensorBoard (not kept)")
    parser.add_argument("--results", help="kept results (summary.json, bit_widths.json, run.json per run and seed)")
    parser.add_argument("--force", action="store_true", help="run again (run, seed) pairs that have results")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from --results")
    parser.add_argument("--folds", type=int,
                        help="patient-level K-fold cross-validation over every case of the datalist (0: its split)")
    parser.add_argument("--float-epochs", type=int, help="with --folds: epochs of the float twin")
    parser.add_argument("--only-folds", nargs="+", type=int, metavar="K",
                        help="with --folds: train and evaluate these folds only (default: all)")
    parser.add_argument("--float-init", default="",
                        help="with --folds: checkpoint the float twin fine-tunes from (default: random weights); it must "
                             "not have seen the held-out patients, so it is refused for folds other than 0 (the shipped "
                             "float twin trained on the datalist's training split, i.e. on folds 1..K-1)")
    parser.add_argument("--baselines", nargs="*", default=[], metavar="LABEL=RUN=CHECKPOINT",
                        help="with --folds: checkpoints evaluated on fold 0 (the validation split) beside the new models")
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.folds = args.folds or 0
    for name in args.runs:
        run_overrides(name)  # validate names before starting anything
    if args.report_only:
        (cv_report if args.folds else report)(Path(args.results))
        return
    if args.folds:
        if args.only_folds is not None and not set(args.only_folds) <= set(range(args.folds)):
            parser.error(f"--only-folds {args.only_folds}: folds are 0..{args.folds - 1}")
        if args.float_init and set(args.only_folds or range(args.folds)) != {0}:
            parser.error("--float-init is for fold 0 only (--only-folds 0): the other folds' patients trained it")
        torch.set_num_threads(args.threads or 1)
        cross_validate(args)
        return
    if not (Path(args.dataset_dir) / "dataset.json").is_file():
        parser.error(f"{args.dataset_dir}: no dataset.json (give --dataset-dir; see `python -m monai_quantunet prepare-lgg`)")
    if args.epochs % args.val_interval:
        parser.error(f"--epochs {args.epochs} is not a multiple of --val-interval {args.val_interval}: the last epoch "
                     "would not be validated")
    todo = [(name, seed) for seed in args.seeds for name in args.runs
            if args.force or not (run_dir(args.results, name, seed) / "run.json").is_file()]
    print(f"{len(todo)} run(s) to train, {args.jobs} at a time: " + ", ".join(f"{n} seed {s}" for n, s in todo), flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // min(args.jobs, max(1, len(todo))))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(train_and_evaluate, name, seed, args, threads) for name, seed in todo]:
            future.result()
    report(Path(args.results))


def evaluate(name: str, seed: int, args: argparse.Namespace, threads: int) -> None:
    """Bundle evaluation of one run's best checkpoint on the validation split, at full resolution."""
    out = run_dir(args.out, name, seed).resolve()
    overrides = {k: v for k, v in _overrides(name, seed, args, out).items() if k in NETWORK_KEYS}
    overrides.update(checkpoint=str(out / "model.pt"), output_dir=str(out / "eval"),
                     dataset_dir=str(Path(args.dataset_dir).resolve() / "dataset.json"))
    configs = f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'evaluate.json'}']"
    _run_logged(_command(None, configs, overrides), out / "eval.log", threads)


_EPOCH_RE = re.compile(r"(SupervisedTrainer|SupervisedEvaluator) - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")


def epoch_seconds(log: Path) -> list[float]:
    """Training seconds of each epoch from an ignite log (the trainer's epoch time minus its validation's)."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for m in _EPOCH_RE.finditer(log.read_text(errors="replace")):
        seconds = int(m[3]) * 3600 + int(m[4]) * 60 + float(m[5])
        (train if m[1] == "SupervisedTrainer" else val)[int(m[2])] = seconds
    return [t - val.get(epoch, 0.0) for epoch, t in sorted(train.items())]


def plot_widths_by_lambda(histories: dict[str, list[dict]], path: Path) -> None:
    """Heatmap of the final width of every quantizer (rows) for each learned run (columns), as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    import numpy as np

    names = list(histories)
    layers = [(r["name"], r["kind"]) for r in histories[names[0]][-1]["layers"] if r["kind"] != "input"]
    bits = np.array([[next(r["bits"] for r in histories[n][-1]["layers"] if r["name"] == layer) for n in names]
                     for layer, _ in layers])
    fig = Figure(figsize=(1.2 * len(names) + 3, 0.28 * len(layers) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(bits, cmap="viridis", aspect="auto", vmin=bits.min(), vmax=bits.max())
    for (i, j), b in np.ndenumerate(bits):
        ax.text(j, i, f"{b:g}", ha="center", va="center", fontsize=7, color="w" if b < bits.mean() else "k")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [f"{'w' if k == 'weight' else 'a'}: {n}" for n, k in layers], fontsize=7)
    ax.set_title("final bit width per quantizer (w: weights, a: activations)", fontsize=9)
    fig.colorbar(im, ax=ax, label="bits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def training_time_table(median_epoch_seconds: dict[str, float]) -> str:
    """Markdown table of median training seconds per epoch, as a ratio to the ``float`` run when present."""
    base = median_epoch_seconds.get("float")
    lines = ["| run | median training s / epoch | x float |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {t:.0f} | {t / base:.2f} |" if base else f"| {name} | {t:.0f} | n/a |"
              for name, t in median_epoch_seconds.items()]
    return "\n".join(lines)


def _run_order(name: str) -> tuple:
    """Table order: float, fixed from wide to narrow, then learned runs by λ."""
    o = run_overrides(name)
    return ({"float": 0, "fixed": 1, "learned": 2}[o["quantization"]], -o.get("bit_width", 0) if o["quantization"] == "fixed"
            else o.get("lambda_bits", 0), o.get("bit_reduction", ""), -o.get("bit_width", 0))


def collect(results: Path) -> dict[str, dict[int, dict]]:
    """Kept results by run name and seed: ``{"summary", "history", "run"}`` each, runs in table order."""
    found: dict[str, dict[int, dict]] = {}
    for record in sorted(results.glob("*/seed*/run.json")):
        run = json.loads(record.read_text())
        found.setdefault(run["run"], {})[run["seed"]] = {
            "summary": load(f"{run['run']}={record.parent / 'summary.json'}")[1],
            "history": json.loads((record.parent / "bit_widths.json").read_text()),
            "run": run,
        }
    return {name: dict(sorted(found[name].items())) for name in sorted(found, key=_run_order)}


def plateau(history: list[dict]) -> dict:
    """Validation Dice over the epochs, in Dice points: the best epoch (which selects the kept checkpoint), the
    last epoch (chosen by nothing: free of that selection), and the range and least-squares slope over the last
    quarter."""
    points = [(h["epoch"], 100 * h["val_dice"]) for h in history if "val_dice" in h]
    if not points:
        return {"epochs": 0, "best_epoch": 0, "best_dice": float("nan"), "final_dice": float("nan"),
                "last_quarter_range": float("nan"), "last_quarter_slope": float("nan")}
    best_epoch, best_dice = max(points, key=lambda p: p[1])
    summary = {"epochs": points[-1][0], "best_epoch": best_epoch, "best_dice": best_dice, "final_dice": points[-1][1],
               "last_quarter_range": float("nan"), "last_quarter_slope": float("nan")}
    last = [(e, d) for e, d in points if e > 0.75 * points[-1][0]]
    if len(last) >= 2:
        mean_e, mean_d = statistics.fmean(e for e, _ in last), statistics.fmean(d for _, d in last)
        summary["last_quarter_slope"] = (sum((e - mean_e) * (d - mean_d) for e, d in last)
                                         / sum((e - mean_e) ** 2 for e, _ in last))
        summary["last_quarter_range"] = max(d for _, d in last) - min(d for _, d in last)
    return summary


def plateau_table(plateaus: dict[str, dict]) -> str:
    """Markdown table of :func:`plateau` by run."""
    return "\n".join([
        "| run | epochs | best epoch: Dice | last epoch: Dice | range over the last quarter, points | slope, points / epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |"] + [
        f"| {n} | {p['epochs']} | {p['best_epoch']}: {p['best_dice']:.2f} | {p['final_dice']:.2f} | "
        f"{p['last_quarter_range']:.2f} | {p['last_quarter_slope']:+.3f} |"
        for n, p in plateaus.items()])


def seed_table(found: dict[str, dict[int, dict]]) -> tuple[str, dict]:
    """Runs trained with several seeds: Dice mean ± s.d. over seeds and widths; then every learned run against
    every fixed run, paired per volume on the seed-averaged Dice (mean ± s.e. over volumes, points)."""
    multi = {name: seeds for name, seeds in found.items() if len(seeds) > 1}
    if not multi:
        return "", {}
    lines = ["| run | seeds | Dice mean ± s.d. over seeds | weight bits (simple / size-weighted) | activation bits | weights |",
             "| --- | --- | --- | --- | --- | --- |"]
    stats, averaged = {}, {}
    for name, seeds in multi.items():
        dices = [r["summary"]["dice"]["mean"] for r in seeds.values()]
        bits = [r["summary"]["bits"] for r in seeds.values()]
        stats[name] = {"seeds": list(seeds), "dice": dices, "dice_mean": statistics.fmean(dices), "dice_sd": statistics.stdev(dices),
                       **{k: statistics.fmean(b[k] for b in bits) for k in
                          ("mean_weight_bits", "size_weighted_weight_bits", "mean_activation_bits", "weight_memory_bytes")}}
        st = stats[name]
        lines.append(f"| {name} | {', '.join(map(str, seeds))} | {st['dice_mean']:.4f} ± {st['dice_sd']:.4f} | "
                     f"{st['mean_weight_bits']:.2f} / {st['size_weighted_weight_bits']:.2f} | {st['mean_activation_bits']:.2f} | "
                     f"{st['weight_memory_bytes'] / 1024:.1f} KiB |")
        cases = [{c["case"]: c["dice"] for c in r["summary"]["cases"]} for r in seeds.values()]
        averaged[name] = {"cases": [{"case": k, "dice": statistics.fmean(c[k] for c in cases)} for k in cases[0]]}
    pairs = [(a, b) for a in multi for b in multi
             if run_overrides(a)["quantization"] == "learned" and run_overrides(b)["quantization"] == "fixed"]
    if pairs:
        lines += ["", "| comparison (seed-averaged, paired per volume) | Δ Dice, points (s.e.) | volumes better / worse |",
                  "| --- | --- | --- |"]
    for a, b in pairs:
        mean, se = paired_difference(averaged[a], averaged[b])
        ref = {c["case"]: c["dice"] for c in averaged[b]["cases"]}
        better = sum(c["dice"] > ref[c["case"]] for c in averaged[a]["cases"])
        worse = sum(c["dice"] < ref[c["case"]] for c in averaged[a]["cases"])
        stats.setdefault("comparisons", {})[f"{a} vs {b}"] = {"mean_points": mean, "se_points": se, "better": better, "worse": worse}
        lines.append(f"| {a} − {b} | {mean:+.2f} ({se:.2f}) | {better} / {worse} |")
    return "\n".join(lines), stats


def plot_curves(found: dict[str, dict[int, dict]], path: Path) -> None:
    """Validation Dice per epoch of each run's first seed (float twin on its own panel: it trains from scratch)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 2)
    for name, seeds in found.items():
        history = next(iter(seeds.values()))["history"]
        points = [(h["epoch"], h["val_dice"]) for h in history if "val_dice" in h]
        ax = axes[0] if run_overrides(name)["quantization"] == "float" else axes[1]
        ax.plot(*zip(*points), marker=".", ms=3, lw=1, label=name)
    for ax, title in zip(axes, ("float twin from random weights", "quantized arms from the float twin")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice (128 x 128 grid)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results: Path) -> None:
    """From the kept results alone: the table of each run's first seed with Pareto plot, the seed table and
    paired comparisons, plateau statistics, learning curves, widths-by-λ heatmap and training time per epoch
    against the float run. Writes results.md, results.json, pareto.png, curves.png, widths_by_lambda.png,
    training_time.json in ``results``."""
    found = collect(results)
    if not found:
        raise SystemExit(f"{results}: no results (run.json files) to report")
    rows = [(name, next(iter(seeds.values()))["summary"]) for name, seeds in found.items()]
    seeds_md, seed_stats = seed_table(found)
    plateaus = {name: plateau(next(iter(seeds.values()))["history"]) for name, seeds in found.items()}
    (results / "results.json").write_text(json.dumps({"first_seed": dict(rows), "seeds": seed_stats, "plateau": plateaus}, indent=1))
    pareto_png(rows, str(results / "pareto.png"))
    plot_curves(found, results / "curves.png")
    times = {name: next(iter(seeds.values()))["run"]["epoch_seconds"] for name, seeds in found.items()}
    median = {name: statistics.median(t) for name, t in times.items() if t}
    (results / "training_time.json").write_text(json.dumps({"median_epoch_seconds": median, "runs": {
        name: {k: next(iter(seeds.values()))["run"][k] for k in ("threads", "jobs", "machine")} for name, seeds in found.items()}},
        indent=1))
    text = "\n\n".join(part for part in (table(rows), seeds_md, plateau_table(plateaus), training_time_table(median)) if part) + "\n"
    (results / "results.md").write_text(text)
    print(text)
    learned = {name: next(iter(seeds.values()))["history"] for name, seeds in found.items()
               if run_overrides(name)["quantization"] == "learned"}
    if learned:
        plot_widths_by_lambda(learned, results / "widths_by_lambda.png")


# ---- patient-level cross-validation (--folds K) ----

THRESHOLDS = [round(-4 + 0.5 * i, 1) for i in range(17)]  # logit thresholds counted per case (calibration)
IMAGE_SETS = ("original", "skull_stripped")


def case_name(entry: dict) -> str:
    """Case of a datalist entry: the image's file name without its extension."""
    return Path(entry["image"]).name.split(".")[0]


def cv_folds(dataset_dir: Path, k: int, seed: int = 0) -> list[list[str]]:
    """Patient-level folds over every case of ``dataset_dir/dataset.json``, deterministic: fold 0 is the
    datalist's validation split (its models are trained on the training split alone, like the shipped models),
    the training cases are shuffled with ``seed`` and dealt round-robin into folds 1..k-1."""
    datalist = json.loads((dataset_dir / "dataset.json").read_text())
    train = sorted(case_name(e) for e in datalist["training"])
    random.Random(seed).shuffle(train)
    return [sorted(case_name(e) for e in datalist["validation"])] + [sorted(train[i::k - 1]) for i in range(k - 1)]


def fold_datalist(dataset_dir: Path, held_out: list[str], path: Path) -> Path:
    """Write a datalist (paths relative to ``dataset_dir``) whose validation key is ``held_out``, training the rest."""
    datalist = json.loads((dataset_dir / "dataset.json").read_text())
    entries = {case_name(e): e for key in ("training", "validation") for e in datalist[key]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": [e for c, e in sorted(entries.items()) if c not in held_out],
                                "validation": [entries[c] for c in held_out]}, indent=1))
    return path


def _dice(pred: float, inter: float, label: float) -> float:
    return 1.0 if pred + label == 0 else 2 * inter / (pred + label)


@torch.no_grad()
def evaluate_cases(overrides: dict, checkpoint: Path, cases: list[str], roots: dict[str, Path], flip: bool = True) -> dict:
    """The bundle's segmentation chain on ``cases`` of each image set (``roots``: set -> dataset folder), at the
    volumes' own resolution: per case and set, label voxels and, for every logit threshold of ``THRESHOLDS``,
    predicted and overlapping voxels, without (``plain``) and, if ``flip``, with flip test-time augmentation
    (``flip``: mean of the logits of the volume and of its left-right mirror). ``overrides``: the run's bundle
    overrides (network and ``spatial_size``; 2D networks only). Returns ``{"cases": [...], "bits": totals}``."""
    from monai.transforms import Compose

    from monai_quantunet.bitwidth import bit_width_report
    from monai_quantunet.bundle import network_from_bundle
    from monai_quantunet.checkpoint import load_checkpoint
    from monai_quantunet.inference import mask_postprocessing, predict_volume
    from monai_quantunet.transforms import DEFAULT_SPATIAL_SIZE, evaluation_transforms

    if overrides.get("context_slices", 1) != 1:
        raise ValueError("cross-validation evaluates 2D networks (context_slices 1)")
    network = network_from_bundle(BUNDLE, **{k: overrides[k] for k in NETWORK_KEYS[:5] if k in overrides})
    load_checkpoint(network, checkpoint).eval()
    spatial_size = overrides.get("spatial_size", DEFAULT_SPATIAL_SIZE)
    preprocessing = evaluation_transforms(spatial_size)
    invert = Compose(mask_postprocessing(preprocessing, "label").transforms[:-1])  # the chain without its threshold
    thresholds = torch.tensor(THRESHOLDS)[:, None]
    out = {c: {"case": c} for c in cases}
    for image_set, root in roots.items():
        entries = {case_name(e): e for e in load_datalist(root / "dataset.json", "training")
                   + load_datalist(root / "dataset.json", "validation")}
        for case in cases:
            d = preprocessing(dict(entries[case]))
            logits = predict_volume(network, d["image"][None], spatial_size)
            predictions = [("plain", logits)]
            if flip:
                mirrored = predict_volume(network, d["image"][None].flip(2), spatial_size).flip(2)
                predictions.append(("flip", (logits + mirrored) / 2))
            record = {}
            for tta, pred in predictions:
                inverted = invert({**d, "pred": pred[0]})
                p, label = inverted["pred"][0].flatten(), inverted["label"][0].flatten() > 0
                above = p[None] > thresholds  # (thresholds, voxels)
                record[tta] = {"pred": above.sum(1).tolist(), "inter": (above & label).sum(1).tolist()}
            out[case][image_set] = {"label": int(label.sum()), **record}
    return {"cases": list(out.values()), "bits": bit_width_report(network).totals()}


def cv_train_and_evaluate(name: str, fold: int, folds: list[list[str]], roots: dict[str, Path],
                          args: argparse.Namespace) -> None:
    """Train one arm on every fold but ``fold`` for a fixed schedule (validated once, at its last epoch: no
    checkpoint is chosen on the held-out patients), then evaluate it on them; quantized arms start from (and
    ``:kd`` arms distil from) the same fold's float twin."""
    out = (run_dir(args.out, name) / f"fold{fold}").resolve()
    kept = run_dir(args.results, name) / f"fold{fold}"
    epochs = args.float_epochs if run_overrides(name)["quantization"] == "float" else args.epochs
    float_twin = run_dir(args.out, "float").resolve() / f"fold{fold}" / "model.pt"
    float_init = str(Path(args.float_init).resolve()) if args.float_init else ""
    datalist = fold_datalist(Path(args.dataset_dir), folds[fold], out / "dataset.json")
    overrides = _overrides(name, args.seeds[0], args, out, datalist=str(datalist), max_epochs=epochs, val_interval=epochs,
                           init_checkpoint=float_init if run_overrides(name)["quantization"] == "float" else str(float_twin))
    continuation = continuation_overrides(name, out / "stage1" / "model.pt")
    stages = [(overrides | {"output_dir": str(out / "stage1"), "ckpt_dir": str(out / "stage1")}, out / "stage1"),
              (overrides | continuation, out)] if continuation else [(overrides, out)]
    print(f"start {name} fold {fold}", flush=True)
    start = time.time()
    for stage_overrides, folder in stages:
        if not (folder / "model.pt").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            _run_logged(_command("training", str(TRAIN_CONFIG), stage_overrides), folder / "train.log", args.threads or 1)
    wall = time.time() - start
    start = time.time()
    evaluation = evaluate_cases(overrides, out / "model.pt", folds[fold], roots)
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "bit_widths.json", kept / "bit_widths.json")
    if continuation:  # the widths' history while they were learned
        shutil.copyfile(out / "stage1" / "bit_widths.json", kept / "bit_widths_stage1.json")
    (kept / "cases.json").write_text(json.dumps(evaluation))
    record = {"run": name, "fold": fold, "overrides": overrides | {
                  "dataset_dir": Path(args.dataset_dir).name, "output_dir": "", "ckpt_dir": "", "datalist": "",
                  "init_checkpoint": Path(float_init).name if overrides["init_checkpoint"] == float_init
                  else "float/fold%d" % fold if overrides["init_checkpoint"] else "",
                  **({"teacher_checkpoint": "float/fold%d" % fold} if "teacher_checkpoint" in overrides else {})},
              **({"continuation": continuation | {"init_checkpoint": "its first stage"}} if continuation else {}),
              "command": " ".join(["python", "benchmarks/train_sweep.py", *sys.argv[1:]]),
              "wall_seconds": wall, "evaluation_seconds": time.time() - start,
              "epoch_seconds": [t for _, folder in stages for t in epoch_seconds(folder / "train.log")],
              "machine": machine_info()}
    (kept / "run.json").write_text(json.dumps(record, indent=1))
    dice = statistics.fmean(_case_metrics(c)["dice"] for c in evaluation["cases"])
    print(f"done  {name} fold {fold}: {wall / 60:.1f} min, out-of-fold Dice {dice:.4f}", flush=True)


def cross_validate(args: argparse.Namespace) -> None:
    """``--folds K``: folds (saved as ``folds.json``), the skull-stripped copies of every volume (under ``--out``),
    then fold by fold every arm of ``--runs`` (in the given order: the float twin first), then the report."""
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    folds = cv_folds(Path(args.dataset_dir), args.folds, args.seeds[0])
    saved = results / "folds.json"
    if saved.is_file() and json.loads(saved.read_text())["folds"] != folds:
        raise SystemExit(f"{saved}: other folds than this datalist and seed give; use another --results")
    saved.write_text(json.dumps({"seed": args.seeds[0], "rule": " ".join(cv_folds.__doc__.split("deterministic: ")[1].split()),
                                 "folds": folds}, indent=1))
    stripped = make_skull_stripped_dataset(args.dataset_dir, Path(args.out) / "skull_stripped").parent
    roots = {"original": Path(args.dataset_dir), "skull_stripped": stripped}
    for fold in args.only_folds if args.only_folds is not None else range(args.folds):
        for name in args.runs:
            if args.force or not (run_dir(results, name) / f"fold{fold}" / "run.json").is_file():
                cv_train_and_evaluate(name, fold, folds, roots, args)
        for spec in args.baselines if fold == 0 else []:  # beside the new fold-0 models, as soon as they exist
            label, name, checkpoint = spec.split("=")
            kept = results / "baselines" / re.sub(r"\W+", "_", label)
            if args.force or not (kept / "cases.json").is_file():
                kept.mkdir(parents=True, exist_ok=True)
                (kept / "cases.json").write_text(json.dumps({
                    "label": label, "run": name, "checkpoint": Path(checkpoint).name,
                    **evaluate_cases(run_overrides(name), Path(checkpoint), folds[0], roots)}))
        cv_report(results)


def _case_metrics(case: dict, image_set: str = "original", tta: str = "plain", threshold: float = 0.0) -> dict:
    """Dice, recall and precision of one evaluated case at a logit threshold of ``THRESHOLDS``."""
    r, i = case[image_set], THRESHOLDS.index(threshold)
    pred, inter, label = r[tta]["pred"][i], r[tta]["inter"][i], r["label"]
    return {"dice": _dice(pred, inter, label), "recall": inter / label if label else float(pred == 0),
            "precision": inter / pred if pred else float(label == 0)}


def _mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def calibrated_threshold(cases_by_fold: dict[int, list[dict]], fold: int) -> float:
    """The logit threshold of ``THRESHOLDS`` with the best mean Dice over the *other* folds' cases."""
    others = [c for f, cases in cases_by_fold.items() if f != fold for c in cases]
    return max(THRESHOLDS, key=lambda t: statistics.fmean(_case_metrics(c, threshold=t)["dice"] for c in others))


def cv_summary(cases_by_fold: dict[int, list[dict]]) -> dict[str, dict[str, float]]:
    """Per case (over all folds given): Dice (original, skull-stripped, flip TTA, with the threshold calibrated
    on the other folds), recall and precision of the original."""
    rows = {}
    for fold, cases in cases_by_fold.items():
        t = calibrated_threshold(cases_by_fold, fold) if len(cases_by_fold) > 1 else 0.0
        for c in cases:
            m = _case_metrics(c)
            rows[c["case"]] = {"fold": fold, **m, "dice_skull_stripped": _case_metrics(c, "skull_stripped")["dice"],
                               "dice_flip_tta": _case_metrics(c, tta="flip")["dice"],
                               "dice_skull_stripped_flip_tta": _case_metrics(c, "skull_stripped", "flip")["dice"],
                               "dice_calibrated": _case_metrics(c, threshold=t)["dice"], "calibrated_threshold": t}
    return rows


def total_epochs(run: dict) -> int:
    """Training epochs of one cross-validation run (its ``run.json``), both stages of a ``:then<N>`` run."""
    return run["overrides"]["max_epochs"] + run.get("continuation", {}).get("max_epochs", 0)


def cv_report(results: Path) -> None:
    """From the kept files alone: out-of-fold per-patient metrics of every arm, mean ± s.e. over patients, paired
    differences to the fixed 4-bit arm (``fixed4``, or ``fixed4:then<N>``) on the patients both have, bits
    averaged over folds; the fold-0 (validation split) comparison with the baselines. Writes ``results.json``,
    ``results.md`` and ``cv.png``."""
    arms: dict[str, dict[int, dict]] = {}
    for record in sorted(results.glob("*/fold*/run.json")):
        run = json.loads(record.read_text())
        arms.setdefault(run["run"], {})[run["fold"]] = {**json.loads((record.parent / "cases.json").read_text()), "run": run}
    if not arms:
        raise SystemExit(f"{results}: no fold results to report")
    folds = json.loads((results / "folds.json").read_text())["folds"]
    reference = next((n for n in sorted(arms) if run_overrides(n) == {"quantization": "fixed", "bit_width": 4}), "fixed4")
    keys = ("dice", "dice_skull_stripped", "dice_flip_tta", "dice_skull_stripped_flip_tta", "dice_calibrated",
            "recall", "precision")
    rows = {name: cv_summary({f: r["cases"] for f, r in by_fold.items()}) for name, by_fold in arms.items()}
    summary = {}
    for name, by_fold in sorted(arms.items(), key=lambda item: _run_order(item[0])):
        per_case = rows[name]
        s = {"folds": sorted(by_fold), "patients": len(per_case),
             **{k: _mean_se([r[k] for r in per_case.values()]) for k in keys},
             **{k: statistics.fmean(r["bits"][k] for r in by_fold.values()) for k in
                ("mean_weight_bits", "size_weighted_weight_bits", "mean_activation_bits", "weight_memory_bytes")},
             "median_epoch_seconds": statistics.median(t for r in by_fold.values() for t in r["run"]["epoch_seconds"]),
             "epochs": "/".join(str(e) for e in sorted({total_epochs(r["run"]) for r in by_fold.values()})),
             "calibrated_thresholds": sorted({r["calibrated_threshold"] for r in per_case.values()})}
        for other, k in ((reference, "dice"), (reference, "dice_skull_stripped"), ("float", "dice")):
            common = sorted(set(per_case) & set(rows.get(other, {})))
            if other != name and len(common) > 1:
                s[f"{k} - {other}"] = _mean_se([100 * (per_case[c][k] - rows[other][c][k]) for c in common]) + (len(common),)
        s["dice_skull_stripped - dice"] = _mean_se([100 * (r["dice_skull_stripped"] - r["dice"]) for r in per_case.values()])
        summary[name] = s
    baselines = {}
    for path in sorted(results.glob("baselines/*/cases.json")):
        b = json.loads(path.read_text())
        per_case = cv_summary({0: b["cases"]})
        baselines[b["label"]] = {"run": b["run"], "checkpoint": b["checkpoint"], "bits": b["bits"],
                                 **{k: _mean_se([r[k] for r in per_case.values()]) for k in keys}}
    for name in arms:  # the new models of fold 0, on the same 18 validation patients
        if 0 in arms[name]:
            per_case = {c: r for c, r in rows[name].items() if r["fold"] == 0}
            baselines[f"new: {name} (fold 0)"] = {"run": name, "bits": arms[name][0]["bits"],
                                                  **{k: _mean_se([r[k] for r in per_case.values()]) for k in keys}}
    (results / "results.json").write_text(json.dumps({"folds": folds, "thresholds": THRESHOLDS, "reference": reference, "arms": summary,
                                                      "per_patient": rows, "validation_split": baselines}, indent=1))
    text = cv_markdown(summary, baselines, reference)
    (results / "results.md").write_text(text)
    plot_cv(summary, rows, results / "cv.png")
    print(text)


def _pm(value: tuple | None, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if value is None else f"{scale * value[0]:.{digits}f} ± {scale * value[1]:.{digits}f}"


def cv_markdown(summary: dict, baselines: dict, reference: str) -> str:
    """Markdown: the out-of-fold table (one row per arm) and the validation-split table (fold 0 and baselines)."""
    lines = [f"| arm | folds (patients) | epochs | weight bits (simple / size-weighted) | act bits | Dice ± s.e. | "
             f"Δ vs {reference}, points | Δ vs float, points | recall | precision | skull-stripped Dice | "
             f"Δ skull-stripped − original, points | flip TTA Dice | calibrated-threshold Dice |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {len(s['folds'])} ({s['patients']}) | {s['epochs']} | {s['mean_weight_bits']:.2f} / "
            f"{s['size_weighted_weight_bits']:.2f} | {s['mean_activation_bits']:.2f} | {_pm(s['dice'])} | "
            f"{_pm(s.get(f'dice - {reference}'), 1, 2)} | {_pm(s.get('dice - float'), 1, 2)} | {_pm(s['recall'], 1, 3)} | "
            f"{_pm(s['precision'], 1, 3)} | {_pm(s['dice_skull_stripped'])} | {_pm(s['dice_skull_stripped - dice'], 1, 2)} | "
            f"{_pm(s['dice_flip_tta'])} | {_pm(s['dice_calibrated'])} |")
    lines += ["", "Validation split (fold 0: 18 patients; the new models of fold 0 are trained on the other 72):", "",
              "| model | weight bits (simple / size-weighted) | act bits | Dice ± s.e. | skull-stripped Dice | recall | precision |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, b in baselines.items():
        lines.append(f"| {label} | {b['bits']['mean_weight_bits']:.2f} / {b['bits']['size_weighted_weight_bits']:.2f} | "
                     f"{b['bits']['mean_activation_bits']:.2f} | {_pm(b['dice'])} | {_pm(b['dice_skull_stripped'])} | "
                     f"{_pm(b['recall'], 1, 3)} | {_pm(b['precision'], 1, 3)} |")
    return "\n".join(lines) + "\n"


def plot_cv(summary: dict, rows: dict, path: Path) -> None:
    """Per-patient out-of-fold Dice of each arm (original and skull-stripped), means with ± s.e. bars, as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(1.8 * len(summary) + 3, 4.2))
    ax = fig.subplots()
    for i, name in enumerate(summary):
        for j, (key, colour) in enumerate((("dice", "C0"), ("dice_skull_stripped", "C1"))):
            x = i + (j - 0.5) * 0.35
            values = [r[key] for r in rows[name].values()]
            ax.scatter([x] * len(values), values, s=6, alpha=0.35, color=colour)
            ax.errorbar(x, *summary[name][key], fmt="o", color="k", capsize=4)
    ax.set_xticks(range(len(summary)), [f"{n}\n{summary[n]['mean_weight_bits']:.2f} w bits" if summary[n]['mean_weight_bits'] < 32
                                        else n for n in summary], fontsize=8)
    ax.scatter([], [], color="C0", label="original"), ax.scatter([], [], color="C1", label="skull-stripped (approximation)")
    ax.set_ylabel("out-of-fold Dice per patient")
    ax.set_title("patient-level 5-fold cross-validation (mean ± s.e.)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
