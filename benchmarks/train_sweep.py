"""Quality vs bits: train bundle configurations side by side (same data, seed, epochs, slice sampler and
initialisation), evaluate each on the validation split, and tabulate and plot the results.

Each run is the bundle's ``training`` workflow with overrides, one process per run, all in parallel (the cores
split between them). Every run starts from ``--init-checkpoint`` (default: the bundle's float twin, i.e. QAT from
float as in the paper; ``""`` trains from scratch) and gets ``--epochs`` epochs (or as many as fit
``--budget-minutes``, sized from a probe).

Run names:
    float                       the float twin
    fixed<N>                    uniform N-bit weights and activations (N in 2..8)
    learned@<lambda>[:<reduction>][:init<N>]   learned widths, loss weight lambda, bit term reduction
                                             "mean" (paper) or "size_weighted", initial width N (default 8),
                                             clamped to the bundle's [min_bit_width, max_bit_width]

Small default (``--preset small``: float, fixed 4-bit, learned λ=0.25; 2 epochs of 320 slices, bit learning rate
0.05; about 5 minutes on 2 CPU cores):

    python benchmarks/train_sweep.py

The full experiment of the bundle docs (``--preset full``: float, fixed 8/4/3/2 bits, learned λ in
{0, 0.05, 0.1, 0.25, 0.5, 1}; 6 epochs of 640 slices; about an hour on 2 CPU cores):

    python benchmarks/train_sweep.py --preset full --out runs/sweep_full

Writes ``<out>/<run>/`` (``@`` and ``:`` become ``_``: checkpoint with the best validation Dice, bit-width
JSON/PNGs, TensorBoard, train.log), evaluates every checkpoint on the datalist's validation split at the volumes'
own resolution (``<out>/<run>/eval/``: per-volume CSV, summary JSON), then writes ``<out>/results.md`` (quality
table and training seconds per epoch vs the float run), ``results.json``, ``pareto.png`` (Dice vs weight memory
and vs BOPs, with the paper's point), ``widths_by_lambda.png`` (final width per layer of each learned run),
``training_time.json`` and ``sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_info
from results_table import load, pareto_png, table

from paths import SHARED_LGG_FLAIR

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "quantunet_brain_tumor_seg"
CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = CONFIGS / "train.json"
PRESETS = {
    # minutes on 2 CPU cores; bit learning rate raised so that widths visibly move in 40 steps
    "small": {"runs": ["float", "fixed4", "learned@0.25:init4"], "epochs": 2, "samples_per_epoch": 320,
              "bit_learning_rate": 0.05},
    # the experiment of the bundle docs: about an hour on 2 CPU cores
    "full": {"runs": ["float", "fixed8", "fixed4", "fixed3", "fixed2", "learned@0:init4", "learned@0.05:init4",
                      "learned@0.1:init4", "learned@0.25:init4", "learned@0.5:init4", "learned@1.0:init4"],
             "epochs": 6, "samples_per_epoch": 640, "bit_learning_rate": None},
}
NETWORK_KEYS = ("quantization", "bit_width", "min_bit_width", "max_bit_width", "channels", "spatial_size")
_RUN_RE = re.compile(r"^(float|fixed(?P<bits>[2-8])|learned@(?P<lam>[0-9.]+)(?::(?P<red>mean|size_weighted))?(?::init(?P<init>[2-8]))?)$")


def run_overrides(name: str) -> dict:
    """Bundle overrides for a run name (see module docstring)."""
    m = _RUN_RE.match(name)
    if not m:
        raise ValueError(f"bad run name {name!r}: use float, fixed<N> or learned@<lambda>[:mean|:size_weighted][:init<N>]")
    if name == "float":
        return {"quantization": "float"}
    if m["bits"]:
        return {"quantization": "fixed", "bit_width": int(m["bits"])}
    return {
        "quantization": "learned",
        "lambda_bits": float(m["lam"]),
        "bit_reduction": m["red"] or "mean",
        "bit_width": int(m["init"] or 8),
    }


def run_dir(out: str | Path, name: str) -> Path:
    """Folder of one run: the name with '@' and ':' replaced by '_'."""
    return Path(out) / re.sub(r"[@:]", "_", name)


def _overrides(name: str, args: argparse.Namespace, epochs: int, out: Path) -> dict:
    overrides = {
        **run_overrides(name),
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "max_epochs": epochs,
        "output_dir": str(out),
        "ckpt_dir": str(out),
        "checkpoint_name": "model.pt",
        "val_interval": args.val_interval,
        "batch_size": args.batch_size,
        "samples_per_epoch": args.samples_per_epoch,
        "num_workers": args.num_workers,
        "seed": args.seed,
        "init_checkpoint": str(Path(args.init_checkpoint).resolve()) if args.init_checkpoint else "",
    }
    if args.bit_learning_rate is not None:
        overrides["bit_learning_rate"] = args.bit_learning_rate
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    return overrides


def _command(run_id: str | None, config_file: str, overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else []) + ["--config_file", config_file]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return cmd


def _launch(name: str, args: argparse.Namespace, epochs: int, log: Path) -> subprocess.Popen:
    out = log.parent
    out.mkdir(parents=True, exist_ok=True)
    cmd = _command("training", str(TRAIN_CONFIG), _overrides(name, args, epochs, out))
    # one process per run: split the cores between them (oversubscribed OpenMP threads slow CPU training ~10x)
    threads = str(max(1, (os.cpu_count() or 1) // len(args.runs)))
    env = {"OMP_NUM_THREADS": threads, **os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as stream:
        return subprocess.Popen(cmd, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _run_all(args: argparse.Namespace, epochs: int, log_name: str) -> dict[str, float]:
    """Run every configuration in parallel; return each run's wall seconds; raise if one fails."""
    start = time.time()
    logs = {name: run_dir(args.out, name).resolve() / log_name for name in args.runs}
    running = {name: _launch(name, args, epochs, log) for name, log in logs.items()}
    walls = {}
    while running:
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                for other in running.values():
                    other.terminate()
                raise RuntimeError(f"run {name} failed, see {logs[name]}:\n" + "".join(logs[name].read_text().splitlines(True)[-20:]))
            walls[name] = time.time() - start
        time.sleep(1)
    return {name: walls[name] for name in args.runs}


def _epochs_from_probe(args: argparse.Namespace) -> int:
    """Epochs per run so that the slowest run fits ``--budget-minutes``, from a ``--probe-epochs`` probe."""
    probe = _run_all(args, args.probe_epochs, "probe.log")
    slowest = max(probe.values())
    # wall = startup + epochs * per_epoch, startup counted as one epoch (data caching dominates short probes)
    per_epoch = slowest / (args.probe_epochs + 1)
    epochs = max(1, min(args.max_epochs, math.floor((args.budget_minutes * 60 - per_epoch) / per_epoch)))
    epochs = max(args.val_interval, epochs - epochs % args.val_interval)  # the last epoch is validated
    print(f"probe: slowest run {slowest:.0f} s for {args.probe_epochs} epoch(s) -> {epochs} epochs each", flush=True)
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=str(SHARED_LGG_FLAIR), help="folder with dataset.json (lgg_flair layout)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="defaults for --runs, --epochs, --samples-per-epoch, --bit-learning-rate (small: minutes; "
                        "full: the bundle docs' experiment)")
    parser.add_argument("--runs", nargs="+")
    parser.add_argument("--bit-learning-rate", type=float, help="bundle's bit_learning_rate (default: the bundle's)")
    parser.add_argument("--init-checkpoint", default=str(BUNDLE / "models" / "float_model.pt"),
                        help='state_dict every run starts from ("" for random initialisation)')
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="wall time of the main (parallel) runs")
    parser.add_argument("--epochs", type=int, help="epochs per run (0: as many as fit --budget-minutes)")
    parser.add_argument("--probe-epochs", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=1000, help="upper bound on the epochs")
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples-per-epoch", type=int)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="extra bundle overrides")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--evaluate-only", action="store_true", help="skip training; evaluate the runs in --out")
    parser.add_argument("--report-only", action="store_true", help="skip training and evaluation; redo the report")
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in args.runs:
        run_overrides(name)  # validate names before starting anything
    if not (Path(args.dataset_dir) / "dataset.json").is_file():
        parser.error(f"{args.dataset_dir}: no dataset.json (give --dataset-dir; see `python -m monai_quantunet prepare-lgg`)")
    if args.epochs % args.val_interval:
        parser.error(f"--epochs {args.epochs} is not a multiple of --val-interval {args.val_interval}: the last epoch "
                     "would not be validated")
    if args.report_only:
        report(args)
        return
    if args.evaluate_only:
        evaluate(args)
        report(args)
        return

    epochs = args.epochs or _epochs_from_probe(args)
    walls = _run_all(args, epochs, "train.log")

    summary = {
        "command": " ".join(["python", "benchmarks/train_sweep.py", *sys.argv[1:]]),
        "dataset_dir": args.dataset_dir,
        "epochs": epochs,
        "samples_per_epoch": args.samples_per_epoch,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "init_checkpoint": args.init_checkpoint,
        "bit_learning_rate": args.bit_learning_rate,
        "runs": {},
    }
    for name in args.runs:
        hist_path = run_dir(args.out, name) / "bit_widths.json"
        history = json.loads(hist_path.read_text()) if hist_path.exists() else []
        summary["runs"][name] = {
            "overrides": run_overrides(name),
            "wall_seconds": walls[name],
            "best_val_dice": max((h["val_dice"] for h in history if "val_dice" in h), default=float("nan")),
            "final": {k: v for k, v in (history[-1] if history else {}).items() if k != "layers"},
        }
        print(f"{name:<34} epochs {epochs:>4}  wall {walls[name]:6.0f} s  best val Dice "
              f"{summary['runs'][name]['best_val_dice']:.4f}", flush=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps(summary, indent=1))
    evaluate(args)
    report(args)


def evaluate(args: argparse.Namespace) -> None:
    """Bundle evaluation of each run's checkpoint (one at a time) on the validation split, at full resolution."""
    for name in args.runs:
        out = run_dir(args.out, name).resolve()
        train_overrides = _overrides(name, args, 1, out)
        overrides = {k: v for k, v in train_overrides.items() if k in NETWORK_KEYS}
        overrides.update(checkpoint=str(out / "model.pt"), output_dir=str(out / "eval"),
                         dataset_dir=str(Path(args.dataset_dir).resolve() / "dataset.json"))
        configs = f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'evaluate.json'}']"
        with open(out / "eval.log", "w") as log:
            subprocess.run(_command(None, configs, overrides), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=True)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(histories)
    layers = [(r["name"], r["kind"]) for r in histories[names[0]][-1]["layers"] if r["kind"] != "input"]
    bits = np.array([[next(r["bits"] for r in histories[n][-1]["layers"] if r["name"] == layer) for n in names]
                     for layer, _ in layers])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 0.28 * len(layers) + 1.5))
    im = ax.imshow(bits, cmap="viridis", aspect="auto", vmin=bits.min(), vmax=bits.max())
    for (i, j), b in np.ndenumerate(bits):
        ax.text(j, i, f"{b:g}", ha="center", va="center", fontsize=7, color="w" if b < bits.mean() else "k")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [f"{'w' if k == 'weight' else 'a'}: {n}" for n, k in layers], fontsize=7)
    ax.set_title("final bit width per quantizer (w: weights, a: activations)", fontsize=9)
    fig.colorbar(im, ax=ax, label="bits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_time_table(median_epoch_seconds: dict[str, float]) -> str:
    """Markdown table of median training seconds per epoch, as a ratio to the ``float`` run when present."""
    base = median_epoch_seconds.get("float")
    lines = ["| run | median training s / epoch | x float |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {t:.0f} | {t / base:.2f} |" if base else f"| {name} | {t:.0f} | n/a |"
              for name, t in median_epoch_seconds.items()]
    return "\n".join(lines)


def report(args: argparse.Namespace) -> None:
    """From the runs in ``--out``: results table and Pareto plot (``results_table``), training time per epoch
    against the float run, widths-by-λ heatmap; writes results.md, results.json, pareto.png, training_time.json,
    widths_by_lambda.png."""
    out = Path(args.out)
    rows = [load(f"{name}={run_dir(out, name) / 'eval' / 'summary.json'}") for name in args.runs]
    (out / "results.json").write_text(json.dumps(dict(rows), indent=1))
    pareto_png(rows, str(out / "pareto.png"))
    times = {name: epoch_seconds(run_dir(out, name) / "train.log") for name in args.runs}
    median = {name: statistics.median(t) for name, t in times.items() if t}
    (out / "training_time.json").write_text(json.dumps(
        {"machine": machine_info(), "runs_in_parallel": len(args.runs), "epoch_seconds": times, "median_epoch_seconds": median},
        indent=1))
    text = table(rows) + "\n\n" + training_time_table(median) + "\n"
    (out / "results.md").write_text(text)
    print(text)
    learned = {name: json.loads((run_dir(out, name) / "bit_widths.json").read_text())
               for name in args.runs if run_overrides(name)["quantization"] == "learned"}
    if learned:
        plot_widths_by_lambda(learned, out / "widths_by_lambda.png")


if __name__ == "__main__":
    main()
