"""``demo-train``: a short real training of the bundle (learned widths), one summary line per epoch.

Uses ``../shared/data/lgg_flair`` (or ``--dataset-dir``) when present, else generated volumes; it is the
bundle's ``training`` workflow with a smaller network and fewer epochs, so nothing is wired twice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_quantunet.bundle import find_bundle_root

from monai_quantunet.data import SHARED_LGG_FLAIR as DEFAULT_REAL_DATA


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--dataset-dir", default=None, help=f"decathlon-style folder (default {DEFAULT_REAL_DATA} if present)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--channels", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    parser.add_argument("--lambda-bits", type=float, default=0.25)
    parser.add_argument("--bit-width", type=int, default=8, help="initial width of weights and activations")
    parser.add_argument("--max-bit-width", type=int, default=8)
    parser.add_argument("--bit-lr", type=float, default=0.02, help="learning rate of the bit-width parameters")
    parser.add_argument("--output-dir", default="runs/demo", help="bit-width JSON/PNG and TensorBoard logs")


def main(args: argparse.Namespace) -> int:
    from monai.bundle import ConfigWorkflow

    bundle_root = find_bundle_root()
    dataset_dir = args.dataset_dir or (str(DEFAULT_REAL_DATA) if DEFAULT_REAL_DATA.is_dir() else None)
    overrides = {
        "bundle_root": bundle_root,
        "max_epochs": args.epochs,
        "channels": list(args.channels),
        "lambda_bits": args.lambda_bits,
        "bit_width": args.bit_width,
        "max_bit_width": args.max_bit_width,
        "bit_learning_rate": args.bit_lr,
        "output_dir": str(Path(args.output_dir).resolve()),
        "ckpt_dir": str(Path(args.output_dir).resolve()),
    }
    if dataset_dir:
        overrides["dataset_dir"] = str(Path(dataset_dir).resolve())
    print(f"demo-train on {overrides.get('dataset_dir', 'generated volumes')}, {args.epochs} epochs")
    workflow = ConfigWorkflow(
        config_file=str(Path(bundle_root) / "configs" / "train.json"), workflow_type="train", run_id="run", **overrides
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return 0
