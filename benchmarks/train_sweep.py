"""Train several bundle configurations side by side under one wall-clock budget (same data, seed, schedule).

Each run is the bundle's ``training`` workflow with overrides; runs go in parallel (one process each) and get
the same number of epochs, sized from a one-epoch probe so the slowest run fits ``--budget-minutes``.

Run names:
    float                       the float twin
    fixed<N>                    uniform N-bit weights and activations (N in 2..8)
    learned@<lambda>[:<reduction>][:init<N>]   learned widths, loss weight lambda, bit term reduction
                                             "mean" (paper) or "size_weighted", initial width N (default 8)

    python benchmarks/train_sweep.py --dataset-dir ../shared/data/lgg_flair --runs float fixed4 learned@0.25 \\
        --budget-minutes 10 --out runs/sweep

Writes ``<out>/<run>/`` (``@`` and ``:`` in names become ``_``) (checkpoint, bit-width JSON/PNG, TensorBoard, train.log),
then evaluates every run's best checkpoint on the datalist's validation split at the volumes' own resolution
(``<out>/<run>/eval/``: per-volume CSV, summary JSON) and writes ``<out>/results.md``, ``<out>/results.json``,
``<out>/pareto.png`` (Dice vs weight memory) and ``<out>/sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "quantunet_brain_tumor_seg" / "configs"
TRAIN_CONFIG = CONFIGS / "train.json"
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
    }
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    return overrides


def _command(run_id: str | None, config_file: str, overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else []) + ["--config_file", config_file]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return cmd


def _launch(name: str, args: argparse.Namespace, epochs: int, log_name: str) -> tuple[subprocess.Popen, Path]:
    out = run_dir(args.out, name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = _command("training", str(TRAIN_CONFIG), _overrides(name, args, epochs, out))
    log = out / log_name
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return proc, log


def _run_all(args: argparse.Namespace, epochs: int, log_name: str) -> dict[str, float]:
    """Run every configuration in parallel; return wall seconds per run; raise if one fails."""
    start = time.time()
    procs = {name: _launch(name, args, epochs, log_name) for name in args.runs}
    walls = {}
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"run {name} failed, see {log}:\n" + "".join(open(log).readlines()[-20:]))
        walls[name] = time.time() - start
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--runs", nargs="+", default=["float", "fixed4", "learned@0.25"])
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="wall time of the main (parallel) runs")
    parser.add_argument("--probe-epochs", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=1000, help="upper bound on the epochs")
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples-per-epoch", type=int, default=640)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="extra bundle overrides")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--evaluate-only", action="store_true", help="skip training; evaluate the runs in --out")
    args = parser.parse_args()
    for name in args.runs:
        run_overrides(name)  # validate names before starting anything
    if args.evaluate_only:
        evaluate(args)
        return

    probe = _run_all(args, args.probe_epochs, "probe.log")
    slowest = max(probe.values())
    # wall = startup + epochs * per_epoch; startup taken as the probe's wall minus its epochs at the same rate,
    # bounded below by half the probe (data caching dominates short probes)
    per_epoch = slowest / (args.probe_epochs + 1)
    epochs = max(1, min(args.max_epochs, math.floor((args.budget_minutes * 60 - per_epoch) / per_epoch)))
    epochs = max(args.val_interval, epochs - epochs % args.val_interval)  # the last epoch is validated
    print(f"probe: slowest run {slowest:.0f} s for {args.probe_epochs} epoch(s) -> {epochs} epochs each", flush=True)
    walls = _run_all(args, epochs, "train.log")

    summary = {"dataset_dir": args.dataset_dir, "epochs": epochs, "runs": {}}
    for name in args.runs:
        hist_path = run_dir(args.out, name) / "bit_widths.json"
        history = json.loads(hist_path.read_text()) if hist_path.exists() else []
        summary["runs"][name] = {
            "overrides": run_overrides(name),
            "wall_seconds": walls[name],
            "best_val_dice": max((h.get("val_dice", float("nan")) for h in history), default=float("nan")),
            "final": {k: v for k, v in (history[-1] if history else {}).items() if k != "layers"},
        }
        print(f"{name:<34} epochs {epochs:>4}  wall {walls[name]:6.0f} s  best val Dice "
              f"{summary['runs'][name]['best_val_dice']:.4f}", flush=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps(summary, indent=1))
    evaluate(args)


def evaluate(args: argparse.Namespace) -> None:
    """Bundle evaluation of each run's checkpoint (one at a time), then the results table and Pareto plot."""
    specs = []
    for name in args.runs:
        out = run_dir(args.out, name).resolve()
        train_overrides = _overrides(name, args, 1, out)
        overrides = {k: v for k, v in train_overrides.items() if k in NETWORK_KEYS}
        overrides.update(checkpoint=str(out / "model.pt"), output_dir=str(out / "eval"),
                         dataset_dir=str(Path(args.dataset_dir).resolve() / "dataset.json"))
        configs = f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'evaluate.json'}']"
        with open(out / "eval.log", "w") as log:
            subprocess.run(_command(None, configs, overrides), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=True)
        specs.append(f"{name}={out / 'eval' / 'summary.json'}")
    table = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "results_table.py"), *specs, "--out", str(Path(args.out) / "results.json"),
         "--png", str(Path(args.out) / "pareto.png")], capture_output=True, text=True, check=True,
    ).stdout
    (Path(args.out) / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
