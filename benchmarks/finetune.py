"""Does fine-tuning on a few user labels make the served model worse on the volumes nobody labeled?

Runs the MONAI Label app's own segmentation trainer (``slicer_app/lib/trainers``: held-out validation, publish
rule, fine-tuning defaults) in this process, on k labeled volumes of the lgg_flair validation split, and reports
the mean Dice of the *served* model (published checkpoint, else the shipped one) on the validation volumes that
no run labeled, before and after. Also reports the run's own final weights ("candidate", what a publish
without the rule would serve) and the same for other settings (``--settings``: ``previous`` = lr 1e-3, bit widths
and BatchNorm learning, the app's settings before issue 12), all under the same publish rule.

The k volumes are copied into a temporary studies folder (outside the repository); nothing is written under the
data folder. Writes JSON (default ``benchmarks/results/finetune.json``) and prints a Markdown table.

    python benchmarks/finetune.py --dataset-dir ../shared/data/lgg_flair --ks 1 3 5 10 --epochs 10 \
        --settings default previous lr1e-4 bn_learning
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_app"))  # the app's `lib` package (configs, trainers, datastore)

from monai.data import DataLoader, Dataset  # noqa: E402

from monai_quantunet.data import load_datalist  # noqa: E402
from paths import SEG_BUNDLE, SHARED_LGG_FLAIR  # noqa: E402
from monai_quantunet.checkpoint import load_checkpoint  # noqa: E402
from monai_quantunet.inference import slice_inferer  # noqa: E402
from monai_quantunet.bundle import bundle_settings, network_from_bundle  # noqa: E402
from monai_quantunet.metrics import volume_dices  # noqa: E402
from monai_quantunet.transforms import val_transforms  # noqa: E402

SETTINGS = {
    "default": {},  # the app's fine-tuning defaults (lib/configs/common.py)
    "previous": {"learning_rate": "0.001", "freeze_bit_widths": "false", "freeze_batch_norm": "false"},  # before issue 12
    "lr1e-4": {"learning_rate": "0.0001"},
    "bn_learning": {"freeze_batch_norm": "false"},
}


def per_volume_dice(checkpoint: Path, items: list[dict], spatial_size) -> list[float]:
    net = load_checkpoint(network_from_bundle(), checkpoint)
    loader = DataLoader(Dataset(items, val_transforms(spatial_size)), batch_size=1, num_workers=0)
    return volume_dices(net, loader, slice_inferer(spatial_size))


def finetune(labeled: list[dict], setting: dict, workdir: Path, epochs: int) -> dict:
    from lib.configs.segmentation import Segmentation
    from lib.datastore import StudiesDatastore

    studies = workdir / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for i, item in enumerate(labeled):
        shutil.copyfile(item["image"], studies / f"case{i}.nii.gz")
        shutil.copyfile(item["label"], studies / "labels" / "final" / f"case{i}.nii.gz")
    model_dir = workdir / "model"
    config = Segmentation()
    config.init("segmentation", str(model_dir), dict(setting), None)
    task = config.trainer()
    datastore = StudiesDatastore(str(studies), auto_reload=False)
    start = time.time()
    task({"max_epochs": epochs, "dataset": "Dataset", "device": "cpu", "multi_gpu": False, "name": "train_01"}, datastore)
    stats = json.loads((model_dir / "segmentation" / "train_stats.json").read_text())
    finals = sorted((model_dir / "segmentation" / "train_01").glob("*final*.pt"))
    return {
        "seconds": round(time.time() - start, 1),
        "published": bool(stats["published"]),
        "publish_reason": stats["publish_reason"],
        "holdout_volumes": stats["holdout_volumes"],
        "baseline_val_dice": stats["baseline_val_dice"],
        "best_val_dice": stats.get("best_metric"),
        "published_path": str(model_dir / "segmentation.pt"),
        "final_path": str(finals[-1]) if finals else None,
        "learning_rate": task._config["learning_rate"],
        "freeze_bit_widths": task._config["freeze_bit_widths"],
        "freeze_batch_norm": task._config["freeze_batch_norm"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=str(SHARED_LGG_FLAIR))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=["default", "previous"], choices=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)

    dataset = Path(args.dataset_dir)
    validation = load_datalist(dataset / "dataset.json", key="validation")
    order = list(range(len(validation)))
    random.Random(args.seed).shuffle(order)
    k_max = max(args.ks)
    labeled_pool = [validation[i] for i in order[:k_max]]
    unlabeled = [validation[i] for i in order[k_max:]]  # the same evaluation volumes for every k
    spatial_size = tuple(int(s) for s in bundle_settings()["spatial_size"])
    shipped = SEG_BUNDLE / "models" / "model.pt"

    t0 = time.time()
    before = per_volume_dice(shipped, unlabeled, spatial_size)
    print(f"shipped model: mean Dice {np.mean(before):.4f} on {len(unlabeled)} unlabeled validation volumes ({time.time() - t0:.0f} s)")
    runs = []
    for k in args.ks:
        for name in args.settings:
            with tempfile.TemporaryDirectory(prefix="quantunet_finetune_") as tmp:
                run = finetune(labeled_pool[:k], SETTINGS[name], Path(tmp), args.epochs)
                served = Path(run["published_path"]) if run["published"] else shipped
                after = per_volume_dice(served, unlabeled, spatial_size) if run["published"] else list(before)
                candidate = per_volume_dice(Path(run["final_path"]), unlabeled, spatial_size) if run["final_path"] else None
            diffs = np.array(after) - np.array(before)
            row = {
                "k": k,
                "setting": name,
                **{key: run[key] for key in ("learning_rate", "freeze_bit_widths", "freeze_batch_norm", "holdout_volumes", "baseline_val_dice",
                                             "best_val_dice", "published", "publish_reason", "seconds")},
                "served_dice_before": float(np.mean(before)),
                "served_dice_after": float(np.mean(after)),
                "served_worst_volume_change": float(diffs.min()),
                "candidate_dice": float(np.mean(candidate)) if candidate else None,
                "candidate_worst_volume_change": float((np.array(candidate) - np.array(before)).min()) if candidate else None,
                "labeled": [Path(x["image"]).name for x in labeled_pool[:k]],
            }
            runs.append(row)
            print(json.dumps({k_: v for k_, v in row.items() if k_ != "labeled"}))

    result = {
        "dataset": str(dataset.name),
        "epochs": args.epochs,
        "seed": args.seed,
        "evaluated_on": [Path(x["image"]).name for x in unlabeled],
        "shipped_dice_per_volume": before,
        "runs": runs,
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {out}")


def table(result: dict) -> str:
    lines = [
        "| k labeled | fine-tuning settings | held out | held-out Dice served → best | published | "
        "served Dice before → after | candidate Dice (final weights) |",
        "| ---: | --- | ---: | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        settings = (f"lr {r['learning_rate']:g}, bits {'frozen' if r['freeze_bit_widths'] else 'learning'}, "
                    f"BN {'frozen' if r['freeze_batch_norm'] else 'learning'}")
        cand = f"{r['candidate_dice']:.3f} (worst volume {r['candidate_worst_volume_change']:+.3f})" if r["candidate_dice"] is not None else "-"
        held = (f"{r['baseline_val_dice']:.3f} → {r['best_val_dice']:.3f}" if r["baseline_val_dice"] is not None
                and r["best_val_dice"] is not None else "-")
        lines.append(
            f"| {r['k']} | {settings} | {r['holdout_volumes']} | {held} | {'yes' if r['published'] else 'no'} | "
            f"{r['served_dice_before']:.3f} → {r['served_dice_after']:.3f} | {cand} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
