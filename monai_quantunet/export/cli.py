"""``python -m monai_quantunet export``: a checkpoint -> QONNX, FINN build folder, QCDQ ONNX, cost report.

The network comes from a bundle config's ``network_def`` (default: the bundle's ``configs/train.json``),
the example slices from the dataset's validation split (``--dataset-dir``, else the config's
``dataset_dir``), or synthetic volumes when no datalist is found.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_quantunet.export.finn import DEFAULT_BOARD

__all__ = ["add_arguments", "main", "network_from_config"]


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="state_dict checkpoint (.pt) of the network")
    parser.add_argument("--out", required=True, help="export folder to create")
    parser.add_argument("--config_file", default=None,
                        help="bundle config holding network_def (default: the bundle's configs/train.json)")
    parser.add_argument("--dataset-dir", default=None, help="dataset folder with dataset.json for example slices")
    parser.add_argument("--num-slices", type=int, default=4, help="example slices used for verification")
    parser.add_argument("--board", default=DEFAULT_BOARD, help="FINN board (default %(default)s)")
    parser.add_argument("--fpga-part", default=None, help="FINN fpga_part instead of a board")
    parser.add_argument("--clk-ns", type=float, default=10.0, help="FINN synthesis clock period in ns")
    parser.add_argument("--no-qonnx-cost", action="store_true",
                        help="skip qonnx's own inference_cost in cost.json (slow on large nets)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")


def network_from_config(config_file: str | Path) -> tuple[object, dict]:
    """``(network, parser)`` from a bundle config's ``network_def``, ``bundle_root`` = the config's bundle."""
    from monai.bundle import ConfigParser

    config_file = Path(config_file)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} not found")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(config_file.resolve().parent.parent)
    if "network_def" not in parser.get():
        raise ValueError(f"{config_file}: no 'network_def' key")
    return parser.get_parsed_content("network_def"), parser


def main(args: argparse.Namespace) -> int:
    from monai_quantunet.bundle import find_bundle_root
    from monai_quantunet.export.core import example_slices, export_model, load_checkpoint

    config_file = args.config_file or str(Path(find_bundle_root()) / "configs" / "train.json")
    network, parser = network_from_config(config_file)
    load_checkpoint(network, args.checkpoint)  # fail fast, before reading volumes
    spatial_size = parser.get_parsed_content("spatial_size") if "spatial_size" in parser.get() else (128, 128)
    dataset_dir = args.dataset_dir
    if dataset_dir is None and "dataset_dir" in parser.get():
        dataset_dir = parser.get_parsed_content("dataset_dir")
    slices, source = example_slices(dataset_dir, spatial_size, args.num_slices)
    print(f"network from {config_file}, checkpoint {args.checkpoint}, example slices: {source}")
    export_model(network, args.out, slices, overwrite=args.overwrite,
                 board=None if args.fpga_part else args.board, fpga_part=args.fpga_part, clk_period_ns=args.clk_ns,
                 qonnx_inference_cost=not args.no_qonnx_cost)
    return 0
