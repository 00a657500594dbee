"""``prepare-lgg`` and ``make-synthetic``: datasets in the bundle's layout (see :mod:`monai_quantunet.data`)."""

from __future__ import annotations

import argparse

from monai_quantunet.data import make_synthetic_dataset, prepare_lgg


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "prepare-lgg":
        parser.add_argument("--src", required=True, help="kaggle_3m folder (one sub-folder per patient)")
        parser.add_argument("--channel", default="flair", choices=["flair", "pre", "post"])
    else:
        parser.add_argument("--num-cases", type=int, default=12)
        parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 16], metavar=("X", "Y", "Z"))
    parser.add_argument("--dst", required=True, help="output folder (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--num-validation", type=float, default=0.2, help="fraction (<1) or count of validation cases")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    if args.command == "prepare-lgg":
        path = prepare_lgg(args.src, args.dst, args.num_validation, args.seed, args.channel)
    else:
        path = make_synthetic_dataset(args.dst, args.num_cases, args.shape, args.num_validation, args.seed)
    print(f"wrote {path}")
    return 0
