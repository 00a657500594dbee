"""``demo-train``: a short run of the bundle's training workflow, one summary line per epoch.

Exactly the bundle's ``configs/train.json`` (same network, widths, loss and learning rates), with fewer epochs
and its outputs under ``--output-dir``; on ``--dataset-dir`` (a folder with ``dataset.json``) or, without
one, on generated volumes, which have no skull to strip: there the site augmentation (simulated skull-stripping
and zoom-out) is off, as in the README's main job (with it a few epochs stay at the all-background answer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_quantunet.bundle import find_bundle_root


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--dataset-dir", default=None, help="dataset folder with dataset.json (default: generated)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--output-dir", default="runs/demo", help="checkpoint, bit-width JSON/PNG, TensorBoard logs")


def main(args: argparse.Namespace) -> int:
    from monai.bundle import ConfigWorkflow

    bundle_root = find_bundle_root()
    output_dir = str(Path(args.output_dir).resolve())
    overrides = {"bundle_root": bundle_root, "max_epochs": args.epochs, "output_dir": output_dir, "ckpt_dir": output_dir}
    if args.dataset_dir:
        if not (Path(args.dataset_dir) / "dataset.json").is_file():
            raise FileNotFoundError(f"--dataset-dir {args.dataset_dir}: no dataset.json there")
        overrides["dataset_dir"] = str(Path(args.dataset_dir).resolve())
    else:
        overrides.update(skull_strip_prob=0.0, zoom_out_prob=0.0)
    print(f"demo-train on {overrides.get('dataset_dir', 'generated volumes')}, {args.epochs} epochs -> {output_dir}")
    workflow = ConfigWorkflow(config_file=str(Path(bundle_root) / "configs" / "train.json"), workflow_type="train",
                              **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return 0
