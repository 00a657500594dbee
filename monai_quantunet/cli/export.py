"""``python -m monai_quantunet export``: a checkpoint -> QONNX, FINN build folder, QCDQ ONNX, cost report;
``python -m monai_quantunet finn-build``: run a FINN build folder with a FINN toolchain.

The network comes from a bundle config's ``network_def`` (default: ``configs/inference.json`` of ``--bundle-root``,
else of the bundle found from the working directory),
the example slices from the dataset's validation split (``--dataset-dir``, else the config's
``dataset_dir``), or synthetic volumes when no datalist is found; with the config's ``context_slices`` (2.5D)
neighbouring slices as channels. With a FINN toolchain (``--finn`` or
``$FINN_TOOLCHAIN``) the export also runs FINN's flow and verifies the folded hardware graph.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_quantunet.bundle import network_from_config
from monai_quantunet.export.finn import DEFAULT_BOARD, DEFAULT_CLK_NS, DEFAULT_TARGET_FPS
from monai_quantunet.export.finn_build import BOARD_PARTS
from monai_quantunet.export.finn_toolchain import TOOLCHAIN_ENV, FinnToolchain

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    finn_help = f"FINN toolchain folder made by scripts/install_finn.sh (default: ${TOOLCHAIN_ENV})"
    if command == "finn-build":
        parser.add_argument("folder", help="FINN build folder (an export's finn/)")
        parser.add_argument("--steps-until", default="step_hw_codegen",
                            help="last step (default %(default)s, the last without Vivado; 'all' for every step)")
        parser.add_argument("--finn", default=None, help=finn_help)
        return
    parser.add_argument("--checkpoint", required=True, help="state_dict checkpoint (.pt) of the network")
    parser.add_argument("--out", required=True, help="export folder to create")
    parser.add_argument("--bundle-root", "--bundle_root", dest="bundle_root", default=None,
                        help="the bundle folder, as the bundle commands take it (default: found from the working directory)")
    parser.add_argument("--config-file", "--config_file", dest="config_file", default=None,
                        help="bundle config holding network_def (default: <bundle>/configs/inference.json)")
    parser.add_argument("--dataset-dir", default=None, help="dataset folder with dataset.json for example slices")
    parser.add_argument("--num-slices", type=int, default=4, help="example slices used for verification")
    parser.add_argument("--whole-volume", action="store_true",
                        help="verify on every slice of the first validation volume instead of --num-slices")
    parser.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARD_PARTS),
                        help="FINN board (default %(default)s)")
    parser.add_argument("--fpga-part", default=None, help="FINN fpga_part instead of a board")
    parser.add_argument("--clk-ns", type=float, default=DEFAULT_CLK_NS,
                        help="FINN synthesis clock period in ns (default %(default)s)")
    parser.add_argument("--target-fps", type=float, default=DEFAULT_TARGET_FPS,
                        help="slices per second the FINN folding aims at (default %(default)s)")
    parser.add_argument("--finn", default=None, help=finn_help + "; without one, FINN's flow is not run")
    parser.add_argument("--no-qonnx-cost", action="store_true",
                        help="skip qonnx's own inference_cost in cost.json (slow on large nets)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")


def main(args: argparse.Namespace) -> int:
    if args.command == "finn-build":
        toolchain = FinnToolchain.find(args.finn)
        if toolchain is None:
            raise FileNotFoundError(f"no FINN toolchain: pass --finn DIR or set ${TOOLCHAIN_ENV} "
                                    "(make one with `bash scripts/install_finn.sh`)")
        status = toolchain.run_build(args.folder, None if args.steps_until == "all" else args.steps_until)
        print(f"FINN build of {args.folder}: {status['status']}, {len(status['steps'])} steps")
        return 0
    return export(args)


def export(args: argparse.Namespace) -> int:
    from monai_quantunet.bundle import find_bundle_root
    from monai_quantunet.checkpoint import load_checkpoint
    from monai_quantunet.export.core import example_slices, export_model

    config_file = args.config_file or str(Path(args.bundle_root or find_bundle_root()) / "configs" / "inference.json")
    network, parser = network_from_config(config_file)
    load_checkpoint(network, args.checkpoint)  # fail fast, before reading volumes
    spatial_size = parser.get_parsed_content("spatial_size") if "spatial_size" in parser.get() else (128, 128)
    context_slices = parser.get_parsed_content("context_slices") if "context_slices" in parser.get() else 1
    dataset_dir = args.dataset_dir
    if dataset_dir is None and "dataset_dir" in parser.get():
        dataset_dir = parser.get_parsed_content("dataset_dir")
    slices, source = example_slices(dataset_dir, spatial_size, args.num_slices, whole_volume=args.whole_volume,
                                    context_slices=context_slices)
    if "example_inputs" in parser.get():  # a network with inputs besides the image (the interactive bundle's)
        slices = parser.get_parsed_content("example_inputs")(slices)
    print(f"network from {config_file}, checkpoint {args.checkpoint}, example slices: {source}")
    export_model(network, args.out, slices, overwrite=args.overwrite,
                 board=None if args.fpga_part else args.board, fpga_part=args.fpga_part, clk_period_ns=args.clk_ns,
                 target_fps=args.target_fps, finn=FinnToolchain.find(args.finn),
                 qonnx_inference_cost=not args.no_qonnx_cost)
    return 0
