"""``train-deepedit``: train the interactive (click-guided) QuantU-Net on a decathlon-style dataset.

Example (real data, used by path only)::

    python -m monai_quantunet train-deepedit --dataset-dir ../shared/data/lgg_flair --epochs 20 \
        --output-dir runs/deepedit

then serve it: ``monailabel start_server --app slicer_app ... --conf deepedit_checkpoint runs/deepedit/deepedit_model.pt``
(or copy it to ``bundles/quantunet_brain_tumor_seg/models/deepedit_model.pt``, the app's default).
Network settings (channels, quantization, bit widths, spatial size) come from the bundle's ``train.json``;
only ``in_channels`` is 3 (image + foreground clicks + background clicks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_quantunet.data import SHARED_LGG_FLAIR as DEFAULT_REAL_DATA


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--dataset-dir", default=str(DEFAULT_REAL_DATA), help="folder with dataset.json (decathlon layout)")
    parser.add_argument("--output-dir", default="runs/deepedit", help="checkpoint, bit-width JSON/PNG")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples-per-epoch", type=int, default=640, help="2D slices drawn per epoch")
    parser.add_argument("--channels", type=int, nargs=5, default=None, help="override the bundle's channels")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N training cases (0 = all)")
    parser.add_argument("--init", default=None, help="start from this interactive checkpoint (fine-tuning)")
    parser.add_argument(
        "--init-from-segmentation",
        default=None,
        help="start from a segmentation checkpoint (e.g. the bundle's models/model.pt); click channels start at zero",
    )
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--lr", type=float, default=None, help="default: the bundle's learning_rate")


def main(args: argparse.Namespace) -> int:
    import torch

    from monai_quantunet.data import load_datalist
    from monai_quantunet.interactive import train_interactive
    from monai_quantunet.bundle import bundle_settings, network_from_bundle
    from monai_quantunet.checkpoint import load_checkpoint, load_state_dict

    datalist = Path(args.dataset_dir) / "dataset.json"
    train = load_datalist(datalist, "training")
    val = load_datalist(datalist, "validation")
    if args.max_cases:
        train, val = train[: args.max_cases], val[: max(1, args.max_cases // 4)]
    s = bundle_settings()
    overrides = {"in_channels": 3}
    if args.channels:
        overrides["channels"] = list(args.channels)
    net = network_from_bundle(**overrides)
    if args.init:
        load_checkpoint(net, args.init)
    if args.init_from_segmentation:
        from monai_quantunet.interactive import expand_input_channels

        net.load_state_dict(expand_input_channels(load_state_dict(args.init_from_segmentation), 3))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"train-deepedit: {len(train)} training / {len(val)} validation volumes, {args.epochs} epochs on {device}")
    res = train_interactive(
        train, val, args.output_dir, net, max_epochs=args.epochs, spatial_size=s["spatial_size"],
        samples_per_epoch=args.samples_per_epoch, batch_size=args.batch_size,
        learning_rate=args.lr if args.lr is not None else float(s["learning_rate"]),
        bit_learning_rate=float(s["bit_learning_rate"]), lambda_bits=float(s["lambda_bits"]), device=device,
    )
    print(f"best validation Dice (one click per volume) {res['best_val_dice']:.4f} at epoch {res['best_epoch']}: {res['checkpoint']}")
    return 0
