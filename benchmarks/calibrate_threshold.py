"""Logit threshold of a cross-validation run calibrated on its *training* patients, applied to its held-out ones.

The run's model (``<out>/<run>/fold<k>/model.pt``) segments every training case of the fold (every case of the
datalist that the fold does not hold out) at the volumes' own resolution (``train_sweep.evaluate_cases``, original
volumes, no flip); the threshold of ``THRESHOLDS`` with the best mean Dice there is then read off the held-out
patients' counts already kept in ``<results>/<run>/fold<k>/cases.json`` (original and skull-stripped), so the
held-out patients choose nothing. Writes
``<results>/<run>/fold<k>/calibration.json``. A threshold ``t`` is the same as shifting the network's ``head_bias``
by ``-t`` and keeping the chain's threshold 0.

    python benchmarks/calibrate_threshold.py --run learned@0.125:init4 --out runs/fold0_long --results benchmarks/results/fold0_long
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from paths import SHARED_LGG_FLAIR
from train_sweep import THRESHOLDS, _case_metrics, _mean_se, case_name, evaluate_cases, run_dir

from monai_quantunet.data import load_datalist


def calibrate(run: str, fold: int, out: Path, results: Path, dataset_dir: Path) -> dict:
    """Evaluate the run's fold model on its training cases (every case of ``dataset_dir`` that the fold does not
    hold out), pick the threshold, score the held-out cases at it."""
    kept = run_dir(results, run) / f"fold{fold}"
    record = json.loads((kept / "run.json").read_text())
    held_out = json.loads((kept / "cases.json").read_text())["cases"]
    every = load_datalist(dataset_dir / "dataset.json", "training") + load_datalist(dataset_dir / "dataset.json", "validation")
    training = sorted({case_name(e) for e in every} - {c["case"] for c in held_out})
    start = time.time()
    model = run_dir(out, run).resolve() / f"fold{fold}" / "model.pt"
    evaluation = evaluate_cases(record["overrides"], model, training, {"original": dataset_dir}, flip=False)
    by_threshold = {t: statistics.fmean(_case_metrics(c, threshold=t)["dice"] for c in evaluation["cases"]) for t in THRESHOLDS}
    best = max(THRESHOLDS, key=by_threshold.get)
    scores = {}
    for image_set in ("original", "skull_stripped"):
        at = {t: [_case_metrics(c, image_set, threshold=t)["dice"] for c in held_out] for t in (0.0, best)}
        scores[image_set] = {"dice_at_0": _mean_se(at[0.0]), "dice_calibrated": _mean_se(at[best]),
                             "calibrated - 0, points": _mean_se([100 * (a - b) for a, b in zip(at[best], at[0.0])])}
    result = {"run": run, "fold": fold, "threshold": best, "training_cases": len(training),
              "training_dice_by_threshold": by_threshold, "held_out": scores, "seconds": time.time() - start,
              "command": " ".join(["python", "benchmarks/calibrate_threshold.py", *sys.argv[1:]])}
    (kept / "calibration.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", required=True, help="run names of the cross-validation")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", required=True, help="the cross-validation's --out (models, fold datalists)")
    parser.add_argument("--results", required=True, help="the cross-validation's --results")
    parser.add_argument("--dataset-dir", default=str(SHARED_LGG_FLAIR), help="the cross-validation's --dataset-dir")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.run:
        r = calibrate(run, args.fold, Path(args.out), Path(args.results), Path(args.dataset_dir))
        print(f"{run}: threshold {r['threshold']:+.1f} (training Dice {r['training_dice_by_threshold'][r['threshold']]:.4f}"
              f" vs {r['training_dice_by_threshold'][0.0]:.4f} at 0); held out: " + "; ".join(
                  f"{k} {v['dice_at_0'][0]:.4f} -> {v['dice_calibrated'][0]:.4f}" for k, v in r["held_out"].items()), flush=True)


if __name__ == "__main__":
    main()
